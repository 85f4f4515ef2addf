"""Callbacks: observe the training loop without copying it.

Write your own by subclassing `Callback` and overriding only the hooks you need; every hook
is a no-op by default. Hooks receive the `Trainer`, so a callback can read `trainer.step`,
`trainer.epoch`, `trainer.model`, `trainer.optimizer`, and stop training with
`trainer.stop_training = True`::

    class PrintEvery100(gu.callbacks.Callback):
        def on_step_end(self, trainer, step):
            if step % 100 == 0:
                print(step, trainer.last_loss.item())

`on_step_end` runs on every optimizer step: keep it cheap (`trainer.last_loss` is a tensor;
calling `.item()` on it forces a device sync).
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from groundup.errors import ConfigError, GroundupError
from groundup.files import write_text_atomic
from groundup.train.console import format_figures, format_line

if TYPE_CHECKING:
    from groundup.train.trainer import Trainer


class Callback:
    """Base class with no-op hooks."""

    def on_train_begin(self, trainer: Trainer) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...
    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None: ...
    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None: ...
    def on_step_end(self, trainer: Trainer, step: int) -> None: ...
    def on_eval_end(self, trainer: Trainer, logs: dict[str, float]) -> None: ...
    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None: ...
    def on_save(self, trainer: Trainer, path: Path) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What this callback must remember across a resume (JSON-able); saved in each
        checkpoint's state.json and given back to `load_state_dict` before training goes on."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict` returned (called after `on_train_begin` on resume)."""


_HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_step_end",
    "on_eval_end",
    "on_log",
    "on_save",
)


class CallbackList:
    """Dispatches each hook only to the callbacks that override it (the step hook runs often)."""

    def __init__(self, callbacks: list[Callback]) -> None:
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise ConfigError(
                    f"callbacks must be groundup.callbacks.Callback instances, got {type(cb).__name__}"
                )
        self.callbacks = list(callbacks)
        self._by_hook = {
            hook: [
                getattr(cb, hook)
                for cb in self.callbacks
                if getattr(type(cb), hook) is not getattr(Callback, hook)
            ]
            for hook in _HOOKS
        }

    def call(self, hook: str, *args: Any) -> None:
        for fn in self._by_hook[hook]:
            fn(*args)

    def has(self, hook: str) -> bool:
        return bool(self._by_hook[hook])


def _mode_for(monitor: str, mode: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ConfigError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    higher_is_better = ("acc", "accuracy", "f1", "precision", "recall", "r2", "auc")
    return "max" if any(name.startswith(h) or name.endswith(h) for h in higher_is_better) else "min"


class _Monitor:
    """Tracks the best value of a logged quantity."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.mode = _mode_for(monitor, mode)
        self.min_delta = abs(min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def value(self, logs: dict[str, float]) -> float | None:
        if self.monitor not in logs:
            return None
        return float(logs[self.monitor])


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` evaluations.

    With `restore_best_weights=True` the model ends training with the weights of its best
    evaluation (kept as a CPU copy), whether or not it stopped early.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        patience: int = 0,
        min_delta: float = 0.0,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        if patience < 0:
            raise ConfigError(f"EarlyStopping patience must be >= 0, got {patience}")
        self.tracker = _Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.best_step: int | None = None

    def on_train_begin(self, trainer: Trainer) -> None:
        self.tracker.best = math.inf if self.tracker.mode == "min" else -math.inf
        self.wait, self.stopped_epoch, self.best_weights = 0, None, None
        if self.tracker.monitor.startswith("val_") and not trainer.has_validation:
            raise ConfigError(
                f"EarlyStopping monitors '{self.tracker.monitor}' but there is no validation "
                "data; pass validation_split/validation_data or monitor 'loss'"
            )

    def on_eval_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.tracker.monitor.startswith("val_"):
            self._check(trainer, logs)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if not self.tracker.monitor.startswith("val_"):  # a training quantity: once per epoch
            self._check(trainer, logs)

    def _check(self, trainer: Trainer, logs: dict[str, float]) -> None:
        value = self.tracker.value(logs)
        if value is None:
            raise ConfigError(
                f"EarlyStopping monitors '{self.tracker.monitor}' but the logs have "
                f"{sorted(logs)}; give validation data or monitor one of those"
            )
        if trainer.epoch < self.start_from_epoch:
            return
        if self.tracker.improved(value):
            self.tracker.best = value
            self.wait = 0
            self.best_step = trainer.step
            if self.restore_best_weights:
                self.best_weights = {
                    k: v.detach().to("cpu", copy=True)
                    for k, v in trainer.model.state_dict().items()
                }
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = trainer.epoch
            trainer.stop_training = True
            trainer.log_message(
                f"early stopping: {self.tracker.monitor} did not improve for "
                f"{self.wait} evaluations (best {self.tracker.best:.4f})"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.tracker.best,
            "wait": self.wait,
            "best_step": self.best_step,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.best = float(state["best"])
        self.wait = int(state["wait"])
        self.best_step = state.get("best_step")
        self.stopped_epoch = state.get("stopped_epoch")

    def on_train_end(self, trainer: Trainer) -> None:
        if not self.restore_best_weights:
            return
        if self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)
        elif self.best_step is not None:  # resumed after the best evaluation
            self._restore_from_best_checkpoint(trainer)

    def _restore_from_best_checkpoint(self, trainer: Trainer) -> None:
        """The best weights of a resumed run live in `checkpoints/best/` when it was saved at
        the same step (ModelCheckpoint monitoring the same quantity); otherwise say so."""
        from groundup.checkpoint import load_weights, read_state

        best = trainer.run_dir / "checkpoints" / "best" if trainer.run_dir else None
        if best is not None and (best / "model.safetensors").is_file():
            try:
                same = int(read_state(best).get("step", -1)) == self.best_step
            except GroundupError:
                same = False
            if same:
                load_weights(trainer.model, best / "model.safetensors")
                return
        trainer.log_message(
            f"restore_best_weights: the weights of step {self.best_step} were not kept across "
            "the resume (no checkpoints/best of that step); the final weights stay"
        )


class ModelCheckpoint(Callback):
    """Save checkpoints into `dirpath` (default: the run directory's `checkpoints/`).

    A `step-N/` directory is written at every evaluation (and every `every_n_steps` steps when
    set), the `latest` pointer moves to it, and only the newest `keep_last` are kept (default:
    the trainer's `keep_last`); `best/` is rewritten when `monitor` improves. Each is a complete
    checkpoint (weights, optimizer, RNG, counters), written atomically; `find_latest(dirpath)`
    returns the newest complete one.
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        monitor: str | None = "val_loss",
        mode: str = "auto",
        save_best: bool = True,
        save_last: bool = True,
        every_n_steps: int | None = None,
        keep_last: int | None = None,
    ) -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.tracker = _Monitor(monitor, mode) if monitor else None
        self.save_best = save_best and monitor is not None
        self.save_last = save_last
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self.best_path: Path | None = None
        self.last_path: Path | None = None
        self.best_step: int | None = None

    def _dir(self, trainer: Trainer) -> Path:
        if self.dirpath is not None:
            return self.dirpath
        if trainer.run_dir is None:
            raise ConfigError("ModelCheckpoint needs a dirpath or a Trainer run_dir")
        return trainer.run_dir / "checkpoints"

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self.every_n_steps and step % self.every_n_steps == 0:
            trainer.request_save(self._dir(trainer), keep_last=self.keep_last)

    def on_eval_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        # Saved by the trainer at the end of the step, after the step's records are written.
        if self.save_best and self.tracker is not None:
            value = self.tracker.value(logs)
            if value is not None and self.tracker.improved(value):
                self.tracker.best = value
                self.best_step = trainer.step
                trainer.request_save(self._dir(trainer), best=True)
        if self.save_last:
            trainer.request_save(self._dir(trainer), keep_last=self.keep_last)

    def on_save(self, trainer: Trainer, path: Path) -> None:
        if path.parent != self._dir(trainer):
            return
        if path.name == "best":
            self.best_path = path
        else:
            self.last_path = path

    def state_dict(self) -> dict[str, Any]:
        best = self.tracker.best if self.tracker is not None else None
        return {"best": best, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.tracker is not None and state.get("best") is not None:
            self.tracker.best = float(state["best"])
        self.best_step = state.get("best_step")


class LearningRateMonitor(Callback):
    """Adds the learning rate of each param group to the logs (`lr`, `lr_1`, ...)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def _lrs(self, trainer: Trainer) -> dict[str, float]:
        groups = trainer.optimizer.param_groups
        return {("lr" if i == 0 else f"lr_{i}"): g["lr"] for i, g in enumerate(groups)}

    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        logs.update(self._lrs(trainer))

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        lrs = self._lrs(trainer)
        logs.update(lrs)
        self.values.append(lrs["lr"])


class CSVLogger(Callback):
    """One CSV row per epoch (Keras's CSVLogger); `groundup train` writes history.csv with it."""

    def __init__(self, filename: str | Path, separator: str = ",", append: bool = False) -> None:
        self.filename = Path(filename)
        self.separator = separator
        self.append = append
        self._keys: list[str] | None = None

    def on_train_begin(self, trainer: Trainer) -> None:
        self.filename.parent.mkdir(parents=True, exist_ok=True)
        self._keys = None
        if trainer.resumed_from is not None:
            self._rewind(trainer.step)  # the rows the checkpoint had seen, as they were
        elif not self.append and self.filename.exists():
            self.filename.unlink()

    def _rewind(self, step: int) -> None:
        """Drop the rows of steps after `step` (a resumed run writes them again)."""
        if not self.filename.is_file():
            return
        with open(self.filename, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter=self.separator))
        if not rows or "step" not in rows[0]:
            return
        at = rows[0].index("step")
        kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and int(r[at]) <= step]
        text = io.StringIO(newline="")
        csv.writer(text, delimiter=self.separator).writerows(kept)
        write_text_atomic(self.filename, text.getvalue())
        self._keys = rows[0]

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        row = {"epoch": epoch, "step": trainer.step, **logs}
        exists = self.filename.exists() and self.filename.stat().st_size > 0
        if self._keys is None:
            self._keys = list(row)
        with open(self.filename, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(
                fh, fieldnames=self._keys, delimiter=self.separator, extrasaction="ignore"
            )
            if not exists:
                writer.writeheader()
            writer.writerow(row)


class ProgressBar(Callback):
    """A rich progress bar on a terminal; plain log lines when the output is not a terminal.

    The bar shows step/total, the loss, the learning rate, the throughput of the last train
    record (tokens/s or samples/s), the elapsed time and an ETA (rich estimates the speed over
    the last 30 seconds, so a slow step or an evaluation does not swing it). Plain lines round
    each figure (`loss 1.2345 - lr 2.0e-03 - tok/s 6.02k - mfu 24.1%`); metrics.jsonl keeps the
    full values.

    verbose: 1 = bar (or a line every `log_every` steps when not a terminal), 2 = one line
    per epoch. The bar refreshes at most 10 times a second, so the per-step cost is a clock read.
    """

    def __init__(self, verbose: int = 1, stream: Any = None) -> None:
        self.verbose = verbose
        self.stream = stream if stream is not None else sys.stdout
        self._progress: Any = None
        self._task: Any = None
        self._next_refresh = 0.0
        self._rate: dict[str, float] = {}  # the throughput of the last train record

    @property
    def interactive(self) -> bool:
        return self.verbose == 1 and hasattr(self.stream, "isatty") and self.stream.isatty()

    def on_train_begin(self, trainer: Trainer) -> None:
        self._rate = {}
        if self.interactive:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}", markup=False),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(file=self.stream, force_terminal=True),
                transient=False,
            )
            self._progress.start()

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        if self._progress is not None:
            total = trainer.steps_per_epoch or trainer.total_steps
            label = _epoch_label(trainer, epoch) if trainer.epochs else "train"
            if self._task is not None:
                self._progress.remove_task(self._task)
            done = trainer.step_in_epoch if trainer.steps_per_epoch else trainer.step
            self._task = self._progress.add_task(label, total=total, completed=done, info="")

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + 0.1
        self._refresh(trainer)

    def _refresh(self, trainer: Trainer) -> None:
        done = trainer.step_in_epoch if trainer.steps_per_epoch else trainer.step
        figures = {
            "loss": float(trainer.last_loss.item()),  # a device sync, at most 10 times a second
            "lr": float(trainer.optimizer.param_groups[0]["lr"]),
            **self._rate,
        }
        self._progress.update(self._task, completed=done, info=format_figures(figures))

    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        self._rate = {k: logs[k] for k in ("tokens_per_s", "samples_per_s") if k in logs}
        if self._progress is not None:
            self._refresh(trainer)
        # Without a terminal, step-based runs (pretraining) print a line per log interval;
        # epoch-based runs print one line per epoch instead.
        elif self.verbose == 1 and trainer.steps_per_epoch is None:
            print(format_line(_step_label(trainer), logs), file=self.stream, flush=True)

    def on_eval_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if trainer.steps_per_epoch is None and self.verbose:  # step-based run: show evals
            line = format_line(_step_label(trainer), logs)
            if self._progress is not None:
                self._progress.console.print(line, markup=False, highlight=False)
            else:
                print(line, file=self.stream, flush=True)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if not self.verbose or trainer.steps_per_epoch is None:
            return
        label = _epoch_label(trainer, epoch) if trainer.epochs else f"epoch {epoch + 1}"
        line = format_line(label, logs)
        if self._progress is not None:
            self._progress.update(self._task, completed=trainer.steps_per_epoch)
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def on_train_end(self, trainer: Trainer) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None


def _epoch_label(trainer: Trainer, epoch: int) -> str:
    """Keras's numbering: `fit(initial_epoch=2, epochs=5)` shows epochs 3/5, 4/5 and 5/5 (the
    epoch counter already starts at initial_epoch; the total is where this fit ends)."""
    return f"epoch {epoch + 1}/{trainer.start_epoch + trainer.epochs}"


def _step_label(trainer: Trainer) -> str:
    total = f"/{trainer.total_steps}" if trainer.total_steps else ""
    return f"step {trainer.step}{total}"


# defined in groundup.train.loggers and tracker_loggers (which import this module)
_LOGGER_CLASSES = ("TensorBoard", "TensorBoardLogger", "MetricsCSV")
_TRACKER_CLASSES = ("WandbLogger", "MLflowLogger")


def __getattr__(name: str) -> Any:
    """`gu.callbacks.TensorBoard` (and the other loggers) live in groundup.train.loggers, which
    imports this module: they are looked up here on first use."""
    if name in _LOGGER_CLASSES:
        from groundup.train import loggers

        return getattr(loggers, name)
    if name in _TRACKER_CLASSES:
        from groundup.train import tracker_loggers

        return getattr(tracker_loggers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Keras's other callbacks, built on the classes above (their modules import this one)
from groundup.train.backup import BackupAndRestore  # noqa: E402, F401
from groundup.train.callbacks_keras import LambdaCallback, TerminateOnNaN  # noqa: E402, F401
from groundup.train.lr_callbacks import LearningRateScheduler, ReduceLROnPlateau  # noqa: E402, F401
