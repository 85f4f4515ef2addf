"""`gu.Sequential`: the Keras-style facade over `gu.Trainer` (not a second training loop).

    model = gu.Sequential([gu.layers.Dense(64, activation="relu", input_shape=(784,)),
                           gu.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=5, validation_split=0.1)

A softmax (or sigmoid) output trained with a cross-entropy "from probabilities" is trained on
the logits instead (`loss.with_logits()`), so the loss is a stable log-softmax; `predict` and
`model(x)` still return probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from groundup.checkpoint import load_weights, save_weights
from groundup.data.preprocess import check_arrays
from groundup.errors import ConfigError, DataError, MissingFileError, ShapeError
from groundup.keras.activations import get_activation
from groundup.keras.layers import Layer, layer_from_config
from groundup.train.batches import TensorBatches
from groundup.train.callbacks import Callback
from groundup.train.history import History
from groundup.train.losses import SparseCategoricalCrossentropy, get_loss
from groundup.train.optim import OptimizerSpec, optimizer_spec
from groundup.train.trainer import Trainer

ARCHITECTURE_FILE = "architecture.json"
WEIGHTS_FILE = "model.safetensors"


class Sequential(nn.Module):
    """A stack of `gu.layers`, built eagerly from `input_shape` or lazily from the first batch."""

    def __init__(self, layers: Sequence[Layer] | None = None, name: str | None = None) -> None:
        super().__init__()
        self.name = name or "sequential"
        self.layers = nn.ModuleList()
        self.input_shape: tuple[int, ...] | None = None
        self.trainer: Trainer | None = None
        self._compile_args: dict[str, Any] | None = None
        self._regularized: list[Layer] = []  # layers with a weight penalty (found at fit)
        for layer in layers or []:
            self.add(layer)

    # ---------------------------------------------------------------- structure
    def add(self, layer: Layer) -> None:
        if not isinstance(layer, Layer):
            raise ConfigError(
                f"Sequential takes gu.layers objects, got {type(layer).__name__}; "
                "wrap plain torch modules in gu.Trainer instead"
            )
        if len(self.layers) == 0 and getattr(layer, "input_shape", None) is not None:
            self.input_shape = tuple(layer.input_shape)
        self.layers.append(layer)
        if self.input_shape is not None:
            self.build(self.input_shape)

    @property
    def built(self) -> bool:
        return len(self.layers) > 0 and all(layer.built for layer in self.layers)

    def build(self, input_shape: Sequence[int]) -> None:
        """Create every layer's parameters from the per-sample input shape (no batch dim)."""
        shape = tuple(int(s) for s in input_shape)
        self.input_shape = shape
        for layer in self.layers:
            if not layer.built:
                layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The outputs before the last layer's activation (what cross-entropy should see)."""
        layers = self.layers
        for layer in layers[:-1]:
            x = layer(x)
        return layers[-1].forward_logits(x)

    @property
    def output_activation(self) -> str | None:
        return self.layers[-1].output_activation if len(self.layers) else None

    # ---------------------------------------------------------------- compile
    def compile(
        self,
        optimizer: Any = "rmsprop",
        loss: Any = None,
        metrics: Sequence[Any] | None = None,
        *,
        lr: float | None = None,
        schedule: Any = None,
        grad_accum: int = 1,
        clip_grad_norm: float | None = None,
        precision: str = "fp32",
        device: str = "auto",
        jit_compile: bool = False,
        run_dir: str | Path | None = None,
        **trainer_options: Any,
    ) -> None:
        """Choose the loss, optimizer and metrics (Keras spelling); builds the `Trainer`.
        `trainer_options` go to it as they are (log_every, nan_policy, keep_last, ...)."""
        if loss is None:
            raise ConfigError("compile needs a loss, e.g. loss='sparse_categorical_crossentropy'")
        if len(self.layers) == 0:
            raise ConfigError("the model has no layers; add layers before compile")
        loss_fn = get_loss(loss)
        if not isinstance(optimizer, torch.optim.Optimizer):  # a bad name fails here, not at fit
            optimizer = optimizer_spec(optimizer, **({"lr": lr} if lr is not None else {}))
            lr = None
        forward, transform = None, None
        expects = getattr(loss_fn, "expects_activation", None)
        if (
            expects is not None
            and not getattr(loss_fn, "from_logits", True)
            and self.output_activation == expects
        ):
            # Train on logits: log-softmax of logits is stable, log of a softmax is not.
            loss_fn = loss_fn.with_logits()
            forward = self.forward_logits
            transform = get_activation(expects)
        self._compile_args = {
            "optimizer": optimizer.to_dict() if isinstance(optimizer, OptimizerSpec) else None,
            "loss": loss if isinstance(loss, str) else None,
            "metrics": [m for m in (metrics or []) if isinstance(m, str)],
        }
        self.trainer = Trainer(
            self,
            loss=loss_fn,
            optimizer=optimizer,
            lr=lr,
            schedule=schedule,
            metrics=list(metrics or []),
            grad_accum=grad_accum,
            clip_grad_norm=clip_grad_norm,
            precision=precision,
            device=device,
            compile=jit_compile,
            run_dir=run_dir,
            forward=forward,
            output_transform=transform,
            regularizer=self._regularization_loss,
            **trainer_options,
        )

    def _regularization_loss(self) -> torch.Tensor | None:
        total = None
        for layer in self._regularized:
            penalty = layer.regularization_loss()
            if penalty is not None:
                total = penalty if total is None else total + penalty
        return total

    def _require_trainer(self) -> Trainer:
        if self.trainer is None:
            raise ConfigError("call model.compile(optimizer=..., loss=...) before fit/evaluate")
        return self.trainer

    # ---------------------------------------------------------------- data
    def _tensors(self, x: Any, y: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x_t, y_t = check_arrays(x, y)
        if x_t.is_floating_point():
            x_t = x_t.float()
        if self.input_shape is None:
            self.build(tuple(x_t.shape[1:]))
            if self.trainer is not None:  # compiled before it was built: follow its device
                self.to(self.trainer.device)
        elif tuple(x_t.shape[1:]) != self.input_shape:
            raise ShapeError(
                f"the model expects samples of shape {self.input_shape}, got {tuple(x_t.shape[1:])}"
            )
        if y_t is not None:
            y_t = self._prepare_targets(y_t)
        return x_t, y_t

    def _prepare_targets(self, y: torch.Tensor) -> torch.Tensor:
        """Class ids as int64 for sparse cross-entropy (an (N, 1) column is flattened); floats
        for every other loss."""
        if isinstance(self._require_trainer().loss_fn, SparseCategoricalCrossentropy):
            if y.is_floating_point() and not torch.equal(y, y.round()):
                raise DataError(
                    "sparse_categorical_crossentropy needs integer class ids as targets, got "
                    "fractions; use categorical_crossentropy for soft/one-hot targets"
                )
            if y.dim() == 2 and y.shape[1] == 1:
                y = y[:, 0]
            return y.long()
        return y.float()

    # ---------------------------------------------------------------- fit / evaluate / predict
    def fit(
        self,
        x: Any,
        y: Any = None,
        batch_size: int = 32,
        epochs: int = 1,
        verbose: int | str = "auto",
        callbacks: Sequence[Callback] | None = None,
        validation_split: float = 0.0,
        validation_data: tuple[Any, ...] | None = None,
        shuffle: bool = True,
        class_weight: Mapping[int, float] | None = None,
        sample_weight: Any = None,
        max_steps: int | None = None,
        seed: int = 0,
        resume_from: str | Path | None = None,
    ) -> History:
        """Train on arrays `x`, `y` (NumPy, tensors or lists). Returns a `History`.

        `validation_split` holds out the LAST fraction of the samples (before shuffling),
        as Keras does. `resume_from` (a checkpoint) continues a run exactly.
        """
        trainer = self._require_trainer()
        if y is None:
            raise DataError("fit needs targets: call fit(x, y, ...)")
        if not 0.0 <= validation_split < 1.0:
            raise ConfigError(f"validation_split must be in [0, 1), got {validation_split}")
        if validation_split and validation_data is not None:
            raise ConfigError("give validation_split or validation_data, not both")
        x_t, y_t = self._tensors(x, y)
        w_t = None
        if sample_weight is not None:
            w_t = torch.as_tensor(np.asarray(sample_weight), dtype=torch.float32).reshape(-1)
        if class_weight is not None:
            w_t = _class_weights(class_weight, y_t) * (w_t if w_t is not None else 1.0)
        val = None
        if validation_split:
            n_val = int(round(x_t.shape[0] * validation_split))
            if n_val == 0 or n_val == x_t.shape[0]:
                raise DataError(
                    f"validation_split {validation_split} of {x_t.shape[0]} samples leaves an "
                    "empty split; change validation_split"
                )
            cut = x_t.shape[0] - n_val
            val = TensorBatches(x_t[cut:], y_t[cut:], batch_size=batch_size, shuffle=False)
            x_t, y_t = x_t[:cut], y_t[:cut]
            w_t = w_t[:cut] if w_t is not None else None
        elif validation_data is not None:
            if len(validation_data) < 2:
                raise DataError("validation_data must be a tuple (x_val, y_val)")
            xv, yv = self._tensors(validation_data[0], validation_data[1])
            val = TensorBatches(xv, yv, batch_size=batch_size, shuffle=False)
        train = TensorBatches(x_t, y_t, w_t, batch_size=batch_size, shuffle=shuffle, seed=seed)
        self._regularized = [
            layer for layer in self.layers if layer.regularization_loss() is not None
        ]
        trainer.user_callbacks = list(callbacks or [])
        trainer.verbose = 1 if verbose == "auto" else int(verbose)
        trainer.history = History()
        return trainer.fit(train, val, epochs=epochs, max_steps=max_steps, resume_from=resume_from)

    def evaluate(
        self,
        x: Any,
        y: Any = None,
        batch_size: int = 32,
        verbose: int | str = "auto",
        return_dict: bool = False,
    ) -> float | list[float] | dict[str, float]:
        """Loss and metrics on `x`, `y`: a float with no metrics, else `[loss, *metrics]`."""
        trainer = self._require_trainer()
        x_t, y_t = self._tensors(x, y)
        logs = trainer.evaluate(TensorBatches(x_t, y_t, batch_size=batch_size, shuffle=False))
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x: Any, batch_size: int = 32, verbose: int | str = 0) -> np.ndarray:
        """Outputs for `x` as a NumPy array (probabilities for a softmax model)."""
        x_t, _ = self._tensors(x)
        trainer = self.trainer
        if trainer is None:  # an uncompiled model can still predict
            self.eval()
            with torch.no_grad():
                out = torch.cat(
                    [self(x_t[i : i + batch_size]) for i in range(0, len(x_t), batch_size)]
                )
            return out.numpy()
        return trainer.predict(x_t, batch_size=batch_size).numpy()

    # ---------------------------------------------------------------- inspection and files
    def summary(self, print_fn: Any = print) -> str:
        """A table of layers, output shapes and parameter counts (printed and returned)."""
        rows = [("Layer (type)", "Output shape", "Params")]
        shape = self.input_shape
        for layer in self.layers:
            if shape is not None and layer.built:
                shape = tuple(layer.compute_output_shape(shape))
                shown = str((None, *shape))
            else:
                shown = "?"
            params = sum(p.numel() for p in layer.parameters()) if layer.built else 0
            rows.append((f"{layer.name} ({type(layer).__name__})", shown, f"{params:,}"))
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        rule = "-" * sum(widths)
        lines = [f'Model: "{self.name}"', rule]
        for i, row in enumerate(rows):
            lines.append("".join(cell.ljust(w) for cell, w in zip(row, widths)))
            if i == 0:
                lines.append("=" * sum(widths))
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        lines += [
            rule,
            f"Total params: {total:,}",
            f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}",
        ]
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "layers": [
                {"type": type(layer).__name__, **layer.get_config()} for layer in self.layers
            ],
            "compile": self._compile_args,
        }

    def save(self, path: str | Path) -> Path:
        """Write `path/` with `architecture.json` and `model.safetensors` (no pickle)."""
        if not self.built:
            raise ConfigError(
                "the model is not built yet: give input_shape or fit it before saving"
            )
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / ARCHITECTURE_FILE).write_text(
            json.dumps(self.get_config(), indent=2), encoding="utf-8"
        )
        save_weights(self, path / WEIGHTS_FILE, metadata={"format": "groundup.sequential"})
        return path

    @classmethod
    def load(cls, path: str | Path, compile: bool = True) -> Sequential:
        """Rebuild a saved model; re-compiles it when it was saved compiled with named parts."""
        path = Path(path)
        arch_file = path / ARCHITECTURE_FILE
        if not arch_file.is_file():
            raise MissingFileError(
                f"no {ARCHITECTURE_FILE} in {path}; give the folder model.save() wrote"
            )
        try:
            config = json.loads(arch_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{arch_file} is not valid JSON ({exc.msg}); re-save the model"
            ) from None
        model = cls([layer_from_config(dict(c)) for c in config["layers"]], name=config.get("name"))
        if config.get("input_shape"):
            model.build(tuple(config["input_shape"]))
        load_weights(model, path / WEIGHTS_FILE)
        args = config.get("compile") or {}
        if compile and args.get("loss"):
            model.compile(
                optimizer=args.get("optimizer") or "rmsprop",
                loss=args["loss"],
                metrics=args.get("metrics"),
            )
        return model


def load_model(path: str | Path, allow_pickle: bool = False) -> Any:
    """Load any groundup model folder (or the run folder holding it).

    A `Sequential.save` folder or a `groundup train` run gives the `Sequential` (as Keras's
    `load_model` does); a pretrain or finetune run, its `model/`, or a Hugging Face folder
    gives a `TaskModel` (`.model`, `.tokenizer`, `.task`, `.labels`) in eval mode."""
    from groundup.models.folders import load_model as load_task_model

    path = Path(path)
    for folder in (path, path / "model"):
        if (folder / ARCHITECTURE_FILE).is_file():
            return Sequential.load(folder)
    if (
        (path / "config.json").is_file()
        or (path / "config.yaml").is_file()
        or (path / "model" / "config.json").is_file()
    ):
        return load_task_model(path, allow_pickle=allow_pickle)
    return Sequential.load(path)  # nothing there: its error names what a folder needs


def _class_weights(class_weight: Mapping[int, float], y: torch.Tensor) -> torch.Tensor:
    if y.dim() != 1 or y.is_floating_point():
        labels = y.argmax(-1) if y.dim() == 2 and y.shape[1] > 1 else y.reshape(-1).round().long()
    else:
        labels = y
    n_classes = int(labels.max()) + 1
    table = torch.ones(max(n_classes, max(class_weight) + 1))
    for cls_id, weight in class_weight.items():
        if weight < 0:
            raise ConfigError(f"class_weight for class {cls_id} is negative ({weight})")
        table[int(cls_id)] = float(weight)
    return table[labels]
