"""Keras's callback contract on the engine's hooks, and two Keras callbacks built on it.

The Trainer's hooks take the trainer first (`on_epoch_end(trainer, epoch, logs)`); Keras's
take the epoch and a logs dict (`on_epoch_end(epoch, logs)`) and have more of them. `KerasHooks`
is the one translation, shared by `LambdaCallback` and the adapter of Keras-style callback
classes (groundup.keras.callbacks):

- `on_train_batch_begin(batch)` has no engine hook: it is called for batch 0 at the epoch's
  start and for batch k + 1 right after `on_train_batch_end(k)` when another step of the epoch
  follows. Nothing runs in between but fetching the batch, so a callback sees the same state
  Keras would show it. (On data without a length, the last batch_begin of the data has no
  batch_end.)
- `on_train_batch_end(batch, logs)`: logs hold the running mean of the epoch's loss over its
  samples and the training metrics so far, as Keras 3 gives them; they are computed only for a
  callback that defines the hook (reading the loss syncs the device). After a resume inside an
  epoch the mean starts again at the resumed step.
- `on_test_begin` / `on_test_end(logs)` come together after each validation pass of `fit`
  (logs without the `val_` prefix, as Keras's evaluate gives them); the test batch hooks are
  not called inside `fit`.
- `on_epoch_end(epoch, logs)` gets the epoch's logs dict itself (`loss`, metrics, `val_*`): keys
  a callback adds land in the History and metrics.jsonl, as in Keras.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from groundup.errors import ConfigError
from groundup.train.callbacks import Callback

if TYPE_CHECKING:
    from groundup.train.trainer import Trainer

# Keras's hooks that the translation calls during fit, with their argument lists
FIT_HOOKS = (
    "on_train_begin",  # (logs)
    "on_train_end",  # (logs)
    "on_epoch_begin",  # (epoch, logs)
    "on_epoch_end",  # (epoch, logs)
    "on_train_batch_begin",  # (batch, logs)
    "on_train_batch_end",  # (batch, logs)
    "on_test_begin",  # (logs)
    "on_test_end",  # (logs)
)


def keras_params(trainer: Trainer) -> dict[str, Any]:
    """Keras's `callback.params`: epochs of this fit, steps per epoch, verbosity."""
    return {"epochs": trainer.epochs, "steps": trainer.steps_per_epoch, "verbose": trainer.verbose}


class KerasHooks(Callback):
    """An engine callback that calls Keras-signature hooks; a subclass says which hooks it
    has (`keras_wants`) and calls them (`keras_call`)."""

    def __init__(self) -> None:
        self._loss_sum = 0.0  # the epoch's loss times samples, for the batch logs
        self._loss_samples = 0
        self._samples_seen = 0  # the trainer's counters at the last step: what this step added
        self._skipped = 0
        self._epoch_logs: dict[str, float] = {}

    def keras_wants(self, hook: str) -> bool:
        """Whether the Keras side defines `hook` (the batch hooks cost a loss read)."""
        return True

    def keras_call(self, trainer: Trainer, hook: str, *args: Any) -> None:
        raise NotImplementedError

    def _call(self, trainer: Trainer, hook: str, *args: Any) -> None:
        if self.keras_wants(hook):
            self.keras_call(trainer, hook, *args)

    # ---------------------------------------------------------------- engine hooks
    def on_train_begin(self, trainer: Trainer) -> None:
        trainer.history.set_params(keras_params(trainer))
        self._epoch_logs = {}
        self._call(trainer, "on_train_begin", {})

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self._loss_sum, self._loss_samples = 0.0, 0
        self._samples_seen, self._skipped = trainer.samples_seen, trainer.skipped_steps
        self._call(trainer, "on_epoch_begin", epoch, {})
        if _next_step_follows(trainer):
            self._call(trainer, "on_train_batch_begin", trainer.step_in_epoch, {})

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        batch = trainer.step_in_epoch - 1
        if self.keras_wants("on_train_batch_end"):
            self.keras_call(trainer, "on_train_batch_end", batch, self._batch_logs(trainer))
        if _next_step_follows(trainer):
            self._call(trainer, "on_train_batch_begin", batch + 1, {})

    def on_eval_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.keras_wants("on_test_begin") or self.keras_wants("on_test_end"):
            test_logs = {k.removeprefix("val_"): v for k, v in logs.items() if k.startswith("val_")}
            self._call(trainer, "on_test_begin", {})
            self._call(trainer, "on_test_end", test_logs)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        self._epoch_logs = logs
        self._call(trainer, "on_epoch_end", epoch, logs)

    def on_train_end(self, trainer: Trainer) -> None:
        self._call(trainer, "on_train_end", dict(self._epoch_logs))

    def _batch_logs(self, trainer: Trainer) -> dict[str, float]:
        """The epoch so far: its mean loss over samples (a dropped non-finite step left out)
        and the training metrics, as Keras 3's batch logs."""
        samples = trainer.samples_seen - self._samples_seen
        skipped = trainer.skipped_steps != self._skipped
        self._samples_seen, self._skipped = trainer.samples_seen, trainer.skipped_steps
        if not skipped:
            self._loss_sum += float(trainer.last_loss) * samples
            self._loss_samples += samples
        logs: dict[str, float] = {}
        if self._loss_samples:
            logs["loss"] = self._loss_sum / self._loss_samples
        for metric in trainer.metrics:
            logs[metric.name] = float(metric.compute())
        return logs


def _next_step_follows(trainer: Trainer) -> bool:
    """Another optimizer step of this epoch comes next (for `on_train_batch_begin`)."""
    if trainer.stop_training:
        return False
    if trainer.total_steps is not None and trainer.step >= trainer.total_steps:
        return False
    per_epoch = trainer.steps_per_epoch
    return per_epoch is None or trainer.step_in_epoch < per_epoch


# ---------------------------------------------------------------- LambdaCallback
_BATCH_ALIASES = {"on_batch_begin": "on_train_batch_begin", "on_batch_end": "on_train_batch_end"}


class LambdaCallback(KerasHooks):
    """Keras's `LambdaCallback`: plain functions as hooks, with Keras's arguments::

        gu.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: print(epoch, logs["loss"]),
            on_train_batch_end=lambda batch, logs: losses.append(logs["loss"]),
        )

    `on_epoch_begin(epoch, logs)`, `on_epoch_end(epoch, logs)`, `on_train_begin(logs)`,
    `on_train_end(logs)`, `on_train_batch_begin(batch, logs)`, `on_train_batch_end(batch, logs)`
    (Keras 2's `on_batch_begin` / `on_batch_end` are the same two), `on_test_begin(logs)`,
    `on_test_end(logs)`. When they are called, and with which logs: groundup.train.callbacks_keras.
    """

    def __init__(self, **hooks: Callable[..., Any] | None) -> None:
        super().__init__()
        self.functions: dict[str, Callable[..., Any]] = {}
        for name, fn in hooks.items():
            hook = _BATCH_ALIASES.get(name, name)
            if hook not in FIT_HOOKS:
                valid = ", ".join([*FIT_HOOKS, *_BATCH_ALIASES])
                raise ConfigError(f"LambdaCallback has no hook {name!r}; valid hooks: {valid}")
            if fn is None:
                continue
            if not callable(fn):
                raise ConfigError(
                    f"LambdaCallback {name} must be a function, got {type(fn).__name__}"
                )
            if hook in self.functions:
                raise ConfigError(f"LambdaCallback got {hook} twice ({name}); give one of them")
            self.functions[hook] = fn

    def keras_wants(self, hook: str) -> bool:
        return hook in self.functions

    def keras_call(self, trainer: Trainer, hook: str, *args: Any) -> None:
        self.functions[hook](*args)


# ---------------------------------------------------------------- TerminateOnNaN
class TerminateOnNaN(Callback):
    """Keras's `TerminateOnNaN`: the first step with a non-finite loss ends `fit`, which
    returns its History as usual (no TrainingError).

    It runs the Trainer with `nan_policy="skip"` while it trains (unless another policy than
    the default "stop" was chosen), so that step's update is dropped: the weights stay those of
    the last finite step, where Keras would keep the NaN update. The loss is checked every step.
    """

    def __init__(self) -> None:
        self._policy: str | None = None  # the trainer's own, put back at the end
        self._skipped = 0
        self.stopped_step: int | None = None

    def on_train_begin(self, trainer: Trainer) -> None:
        self._policy, self.stopped_step = None, None
        if trainer.nan_policy == "stop":
            self._policy, trainer.nan_policy = "stop", "skip"
        self._skipped = trainer.skipped_steps

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        dropped = trainer.skipped_steps != self._skipped
        if dropped or not math.isfinite(float(trainer.last_loss)):
            self.stopped_step = step
            trainer.stop_training = True
            trainer.log_message(f"TerminateOnNaN: step {step} had a non-finite loss; stopping")
        self._skipped = trainer.skipped_steps

    def on_train_end(self, trainer: Trainer) -> None:
        if self._policy is not None:
            trainer.nan_policy, self._policy = self._policy, None
