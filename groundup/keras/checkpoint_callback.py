"""Keras's `ModelCheckpoint(filepath, ...)`: the model (or its weights) written to a path
formatted with the epoch and the logs, and `gu.callbacks.ModelCheckpoint`, which takes either
signature.

    gu.callbacks.ModelCheckpoint("ckpt/model_{epoch:02d}_{val_loss:.2f}", save_best_only=True)
    gu.callbacks.ModelCheckpoint(dirpath="runs/x/checkpoints")   # the engine's, complete

What is written, by the file's name:
- a folder (no suffix): `model.save(folder)`, or `folder/weights.safetensors` with
  `save_weights_only=True`;
- `name.safetensors` with `save_weights_only=True`: `model.save_weights(name)`;
- `name.keras` / `name.h5`: a model folder of that name (groundup's format, not a Keras zip),
  `name.weights.h5` with `save_weights_only=True`: a safetensors file of that name (not HDF5);
  each says so in one line when the callback is made.

The engine's `ModelCheckpoint` writes complete checkpoints (optimizer, RNG, data position)
that `fit(resume_from=...)` continues from; this one writes what Keras writes: something to
load (`gu.load_model`, `model.load_weights`).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from groundup.checkpoint import save_weights as save_state_dict
from groundup.checkpoint import unwrap
from groundup.errors import ConfigError
from groundup.train.callbacks import Callback, _mode_for
from groundup.train.callbacks import ModelCheckpoint as EngineModelCheckpoint

if TYPE_CHECKING:
    from groundup.train.trainer import Trainer

__all__ = ["KerasModelCheckpoint", "ModelCheckpoint", "keras_signature"]

WEIGHTS_IN_FOLDER = "weights.safetensors"
_KERAS_ONLY = {
    "filepath", "verbose", "save_best_only", "save_weights_only", "save_freq",
    "initial_value_threshold",
}  # fmt: skip
_KERAS_SUFFIXES = (".keras", ".h5", ".safetensors")


def _target(filepath: str, weights_only: bool) -> str:
    """'model_dir', 'weights_file' or 'weights_dir' for `filepath`; refuses names that are
    neither a folder nor a file of the kind asked for."""
    name = Path(filepath).name
    suffix = Path(name).suffix
    if weights_only:
        if name.endswith((".weights.h5", ".safetensors")) or suffix == ".h5":
            return "weights_file"
        if suffix == ".keras":
            raise ConfigError(
                f"ModelCheckpoint: save_weights_only=True writes a weights file, but "
                f"'{filepath}' names a model; name it '.safetensors' (or a folder)"
            )
        return "weights_dir" if not suffix or "{" in suffix else "weights_file"
    if suffix == ".safetensors" or name.endswith(".weights.h5"):
        raise ConfigError(
            f"ModelCheckpoint: '{filepath}' names a weights file but a whole model is a "
            "folder; set save_weights_only=True or drop the suffix"
        )
    return "model_dir"


def _note(filepath: str, target: str) -> None:
    name = Path(filepath).name
    if target == "model_dir" and name.endswith((".keras", ".h5")):
        warnings.warn(
            f"ModelCheckpoint: '{filepath}' will be a groundup model folder "
            "(architecture.json + model.safetensors), not a Keras file; gu.load_model reads it",
            stacklevel=3,
        )
    elif target == "weights_file" and name.endswith(".h5"):
        warnings.warn(
            f"ModelCheckpoint: '{filepath}' will hold safetensors, not HDF5; "
            "model.load_weights reads it",
            stacklevel=3,
        )


class KerasModelCheckpoint(Callback):
    """Keras's ModelCheckpoint: after each epoch (or every `save_freq` steps) the model, or
    its weights, goes to `filepath.format(epoch=epoch + 1, **logs)`; with `save_best_only`
    only when `monitor` improved on the best so far (or on `initial_value_threshold`)."""

    def __init__(
        self,
        filepath: str | Path,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
    ) -> None:
        self.filepath = str(filepath)
        if not self.filepath:
            raise ConfigError("ModelCheckpoint needs a filepath, e.g. 'model_{epoch:02d}.keras'")
        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
        ):
            raise ConfigError(
                f"ModelCheckpoint: save_freq must be 'epoch' or a positive number of steps, "
                f"got {save_freq!r}"
            )
        self.monitor = monitor
        self.mode = _mode_for(monitor, mode)
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.save_freq = save_freq
        self.target = _target(self.filepath, self.save_weights_only)
        _note(self.filepath, self.target)
        self.initial_value_threshold = initial_value_threshold
        self.best = self._start_best()
        self.saved: list[Path] = []  # every path written, in order
        self._steps_since_save = 0

    def _start_best(self) -> float:
        if self.initial_value_threshold is not None:
            return float(self.initial_value_threshold)
        return math.inf if self.mode == "min" else -math.inf

    def on_train_begin(self, trainer: Trainer) -> None:
        model = trainer.model
        self._steps_since_save = 0
        if self.save_weights_only and not callable(getattr(model, "save_weights", None)):
            return  # a plain module: its state dict is written instead
        if not self.save_weights_only:
            if not callable(getattr(model, "save", None)):
                raise ConfigError(
                    f"ModelCheckpoint('{self.filepath}') saves the whole model, which a "
                    f"{type(model).__name__} cannot do; set save_weights_only=True"
                )
            try:
                model.get_config()  # a subclassed model has no architecture to write
            except ConfigError:
                raise ConfigError(
                    f"ModelCheckpoint('{self.filepath}'): the subclassed model "
                    f"'{model.name}' has no savable architecture; set save_weights_only=True"
                ) from None

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if self.save_freq == "epoch":
            self._save(trainer, epoch, None, logs)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self.save_freq == "epoch":
            return
        self._steps_since_save += 1
        if self._steps_since_save >= self.save_freq:
            self._steps_since_save = 0
            logs = {"loss": float(trainer.last_loss.item())}  # one device read per save
            self._save(trainer, trainer.epoch, trainer.step_in_epoch - 1, logs)

    def _path(self, epoch: int, batch: int | None, logs: dict[str, float]) -> Path:
        fields: dict[str, Any] = {**logs, "epoch": epoch + 1}
        if batch is not None:
            fields["batch"] = batch + 1
        try:
            return Path(self.filepath.format(**fields))
        except KeyError as exc:
            raise ConfigError(
                f"ModelCheckpoint: filepath '{self.filepath}' names {exc.args[0]!r}, which the "
                f"logs do not have; use one of {', '.join(sorted(fields))}"
            ) from None
        except (ValueError, IndexError) as exc:
            raise ConfigError(
                f"ModelCheckpoint: filepath '{self.filepath}' cannot be formatted ({exc}); "
                "write placeholders like {epoch:02d} or {val_loss:.2f}"
            ) from None

    def _improved(self, value: float) -> bool:
        return value < self.best if self.mode == "min" else value > self.best

    def _save(
        self, trainer: Trainer, epoch: int, batch: int | None, logs: dict[str, float]
    ) -> None:
        path = self._path(epoch, batch, logs)
        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                warnings.warn(
                    f"ModelCheckpoint: save_best_only needs '{self.monitor}' in the logs (they "
                    f"hold {', '.join(logs) or 'nothing'}); saving every time",
                    stacklevel=2,
                )
            elif self._improved(float(value)):
                if self.verbose:
                    print(
                        f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                        f"{float(value):.5f}, saving model to {path}",
                        flush=True,
                    )
                self.best = float(value)
            else:
                if self.verbose:
                    print(
                        f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}",
                        flush=True,
                    )
                return
        elif self.verbose:
            print(f"Epoch {epoch + 1}: saving model to {path}", flush=True)
        self._write(trainer.model, path)
        self.saved.append(path)

    def _write(self, model: Any, path: Path) -> None:
        model = unwrap(model)
        if self.target == "model_dir":
            model.save(path)
            return
        file = path / WEIGHTS_IN_FOLDER if self.target == "weights_dir" else path
        if callable(getattr(model, "save_weights", None)):
            model.save_weights(file)
        else:
            file.parent.mkdir(parents=True, exist_ok=True)
            save_state_dict(model, file)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "steps_since_save": self._steps_since_save}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("best") is not None:
            self.best = float(state["best"])
        self._steps_since_save = int(state.get("steps_since_save", 0))


def keras_signature(args: tuple, kwargs: dict[str, Any]) -> bool:
    """Whether ModelCheckpoint's arguments are Keras's (a `filepath`) rather than the
    engine's (`dirpath`): a Keras-only keyword, or a first argument that names a file
    (a `{...}` placeholder, or a .keras/.h5/.safetensors suffix)."""
    if "dirpath" in kwargs:
        return False
    if _KERAS_ONLY & set(kwargs):
        return True
    if args:
        first = str(args[0])
        return "{" in first or first.endswith(_KERAS_SUFFIXES)
    return False


class ModelCheckpoint(EngineModelCheckpoint):
    """`gu.callbacks.ModelCheckpoint`: Keras's `ModelCheckpoint(filepath, monitor="val_loss",
    verbose=0, save_best_only=False, save_weights_only=False, mode="auto", save_freq="epoch")`
    when given a filepath (see `KerasModelCheckpoint`), the engine's complete checkpoints
    `ModelCheckpoint(dirpath=None, monitor="val_loss", mode="auto", save_best=True,
    save_last=True, every_n_steps=None, keep_last=None)` otherwise."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is ModelCheckpoint and keras_signature(args, kwargs):
            return KerasModelCheckpoint(*args, **kwargs)
        return super().__new__(cls)
