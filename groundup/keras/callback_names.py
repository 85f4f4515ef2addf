"""What `gu.callbacks` holds: the engine's callbacks (`groundup.train.callbacks`, hooks that
take the trainer first) with `ModelCheckpoint` taking Keras's `filepath` signature as well as
the engine's `dirpath` one, and Keras's callback base as `KerasCallback`.

`gu.callbacks.Callback` stays the engine's base. A Keras guide's subclass of it, written with
Keras's hooks (`on_epoch_end(self, epoch, logs=None)`), still runs in `model.fit`: the Keras
facade reads the hooks' signatures and calls them as Keras does (groundup.keras.callbacks).
"""

from __future__ import annotations

from typing import Any

from groundup.errors import ConfigError
from groundup.keras.callbacks import Callback as KerasCallback
from groundup.keras.checkpoint_callback import KerasModelCheckpoint, ModelCheckpoint
from groundup.train import callbacks as _engine
from groundup.train.callbacks import (
    BackupAndRestore,
    Callback,
    CallbackList,
    CSVLogger,
    LambdaCallback,
    LearningRateMonitor,
    LearningRateScheduler,
    ProgressBar,
    ReduceLROnPlateau,
    TerminateOnNaN,
)

__all__ = [
    "BackupAndRestore",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "KerasCallback",
    "KerasModelCheckpoint",
    "LambdaCallback",
    "LearningRateMonitor",
    "LearningRateScheduler",
    "ModelCheckpoint",
    "ProgressBar",
    "ReduceLROnPlateau",
    "TerminateOnNaN",
]


class EarlyStopping(_engine.EarlyStopping):
    """Stop when `monitor` has not improved by `min_delta` for `patience` evaluations, with
    Keras's signature: `verbose=1` prints the epoch it stopped at. `baseline` is not
    supported. (groundup.train.callbacks.EarlyStopping is the same without verbose.)"""

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        if baseline is not None:
            raise ConfigError(
                "EarlyStopping(baseline=...) is not supported; drop it (patience counts from "
                "the first evaluation)"
            )
        super().__init__(
            monitor=monitor,
            mode=mode,
            patience=patience,
            min_delta=min_delta,
            restore_best_weights=restore_best_weights,
            start_from_epoch=start_from_epoch,
        )
        self.verbose = verbose

    def on_train_end(self, trainer: Any) -> None:
        super().on_train_end(trainer)
        if self.verbose and self.stopped_epoch is not None:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping", flush=True)


def __getattr__(name: str) -> Any:
    """Everything else the engine's module has (TensorBoard and the loggers, looked up on
    first use there)."""
    return getattr(_engine, name)
