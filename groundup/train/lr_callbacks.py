"""Callbacks that change the learning rate while training: Keras's `ReduceLROnPlateau` and
`LearningRateScheduler`.

They compose with the Trainer's own schedule (`schedule=` / `optim.schedule`), which sets
each param group's lr to `initial_lr * factor(step)` at every step: a callback changes the
base (`initial_lr`), so the schedule's shape goes on from the new base and the change is not
undone at the next step. With the default constant schedule the base is the lr itself. Both
bases and lrs are optimizer hyper-parameters, saved in every checkpoint, so a resumed run goes
on with the reduced rate; the callbacks' own counters are in their `state_dict`.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from groundup.errors import ConfigError
from groundup.train.callbacks import Callback, _Monitor

if TYPE_CHECKING:
    from groundup.train.trainer import Trainer


def base_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each param group's base learning rate (what the Trainer's schedule multiplies)."""
    return [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]


def set_base_lrs(trainer: Trainer, bases: list[float]) -> None:
    """Give each param group a new base lr; its lr becomes base * the schedule's factor at
    the trainer's step, the value the schedule itself would set next."""
    schedule = trainer.schedule
    factor = schedule.factor(trainer.step) if schedule is not None else 1.0
    for group, base in zip(trainer.optimizer.param_groups, bases):
        if "initial_lr" in group:  # the schedule runs: it keeps the base here
            group["initial_lr"] = base
            value = base * factor
        else:  # a constant schedule never touches the optimizer: the lr is the base
            value = base
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)  # a tensor lr (capturable/fused): keep the tensor
        else:
            group["lr"] = value


def current_lr(trainer: Trainer) -> float:
    return float(trainer.optimizer.param_groups[0]["lr"])


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by `factor` when `monitor` has not improved by `min_delta`
    for `patience` evaluations (Keras's `ReduceLROnPlateau`).

    After a reduction `cooldown` evaluations pass before the count starts again; no base lr
    goes below `min_lr`. A `val_` quantity is checked after each evaluation (each epoch, or
    every `eval_every` steps), a training one at each epoch's end. Each reduction is logged
    (a message in metrics.jsonl, and on the console when the trainer is verbose); the epoch
    logs, and so the History, get `learning_rate`: the lr the epoch ended with, before any
    reduction it caused, as Keras records it. `verbose` is accepted for Keras's signature.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        if not _number(factor) or not 0.0 < factor < 1.0:
            raise ConfigError(f"ReduceLROnPlateau factor must be in (0, 1), got {factor!r}")
        for name, value in (("patience", patience), ("cooldown", cooldown)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(
                    f"ReduceLROnPlateau {name} must be an integer >= 0, got {value!r}"
                )
        if not _number(min_lr) or min_lr < 0:
            raise ConfigError(f"ReduceLROnPlateau min_lr must be a number >= 0, got {min_lr!r}")
        self.tracker = _Monitor(monitor, mode, min_delta)
        self.factor = float(factor)
        self.patience = patience
        self.verbose = verbose
        self.cooldown = cooldown
        self.min_lr = float(min_lr)
        self.wait = 0
        self.cooldown_counter = 0
        self._checked: tuple[int, float] | None = None  # (step, lr before the check)

    def _reset(self) -> None:
        self.tracker.best = math.inf if self.tracker.mode == "min" else -math.inf
        self.wait, self.cooldown_counter, self._checked = 0, 0, None

    def on_train_begin(self, trainer: Trainer) -> None:
        self._reset()
        if self.tracker.monitor.startswith("val_") and not trainer.has_validation:
            raise ConfigError(
                f"ReduceLROnPlateau monitors '{self.tracker.monitor}' but there is no "
                "validation data; pass validation_split/validation_data or monitor 'loss'"
            )

    def on_eval_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.tracker.monitor.startswith("val_"):
            self._check(trainer, logs)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if not self.tracker.monitor.startswith("val_"):
            self._check(trainer, logs)
        checked = self._checked
        logs["learning_rate"] = (
            checked[1]
            if checked is not None and checked[0] == trainer.step
            else current_lr(trainer)
        )

    def _check(self, trainer: Trainer, logs: dict[str, float]) -> None:
        value = self.tracker.value(logs)
        if value is None:
            raise ConfigError(
                f"ReduceLROnPlateau monitors '{self.tracker.monitor}' but the logs have "
                f"{sorted(logs)}; monitor one of those"
            )
        self._checked = (trainer.step, current_lr(trainer))
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.tracker.improved(value):
            self.tracker.best = value
            self.wait = 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            self._reduce(trainer)
            self.cooldown_counter = self.cooldown
            self.wait = 0

    def _reduce(self, trainer: Trainer) -> None:
        old = base_lrs(trainer.optimizer)
        new = [max(b * self.factor, self.min_lr) if b > self.min_lr else b for b in old]
        if new == old:
            return  # every base is at min_lr already
        set_base_lrs(trainer, new)
        trainer.log_message(
            f"ReduceLROnPlateau: {self.tracker.monitor} did not improve for {self.patience} "
            f"evaluations (best {self.tracker.best:.4g}); learning rate {old[0]:.4g} -> {new[0]:.4g}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.tracker.best, "wait": self.wait, "cooldown": self.cooldown_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.best = float(state["best"])
        self.wait = int(state["wait"])
        self.cooldown_counter = int(state["cooldown"])


class LearningRateScheduler(Callback):
    """Set the learning rate at each epoch's start from `schedule(epoch, lr)` (Keras's
    `LearningRateScheduler`; a `schedule(epoch)` of one argument works too).

    `lr` is the current base lr of the first param group; the returned number becomes its
    base, and the other groups keep their ratio to it. The epoch logs get `learning_rate`.
    A run resumed in the middle of an epoch keeps the lr that epoch was given (the schedule
    is not called twice for one epoch). `verbose=1` logs each new rate.
    """

    def __init__(self, schedule: Callable[..., Any], verbose: int = 0) -> None:
        if not callable(schedule):
            raise ConfigError(
                "LearningRateScheduler needs a function schedule(epoch, lr) -> lr, got "
                f"{type(schedule).__name__}"
            )
        self.schedule = schedule
        self.verbose = verbose
        self._takes_lr = _positional_count(schedule) >= 2
        self.applied_epoch: int | None = None

    def on_train_begin(self, trainer: Trainer) -> None:
        self.applied_epoch = None

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        if epoch == self.applied_epoch:
            return  # resumed inside this epoch: the optimizer already has its lr
        bases = base_lrs(trainer.optimizer)
        first = bases[0]
        new = self.schedule(epoch, first) if self._takes_lr else self.schedule(epoch)
        if not _number(new) or not math.isfinite(float(new)) or float(new) < 0:
            raise ConfigError(
                f"LearningRateScheduler: schedule({epoch}, {first:.4g}) returned {new!r}; "
                "it must return the learning rate as a number >= 0"
            )
        new = float(new)
        set_base_lrs(trainer, [new * (b / first) if first else new for b in bases])
        self.applied_epoch = epoch
        if self.verbose:
            trainer.log_message(f"epoch {epoch + 1}: LearningRateScheduler sets lr to {new:.4g}")

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        logs["learning_rate"] = current_lr(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"applied_epoch": self.applied_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.applied_epoch = state.get("applied_epoch")


def _number(value: Any) -> bool:
    """A real number (a 0-d tensor or NumPy scalar too), not a bool."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.dtype.is_complex and value.dtype != torch.bool
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positional_count(fn: Callable[..., Any]) -> int:
    """How many positional arguments `fn` takes (Keras's schedules take epoch, or epoch and lr)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume (epoch, lr)
        return 2
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in kinds for p in params)
