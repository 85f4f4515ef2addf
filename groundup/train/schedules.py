"""Learning-rate schedules as pure functions of the step.

A schedule keeps no state: `factor(step)` is the multiplier of each group's base LR after
`step` optimizer steps, so a resumed run that knows its step gets exactly the same LR (no
scheduler state to save, unlike torch's LRScheduler). Call `schedule.apply(optimizer, step)`
before `optimizer.step()`, with step = number of steps already taken (0 for the first).

Warmup convention: factor(step) = (step + 1) / (warmup_steps + 1) for step < warmup_steps.
The first step trains with a small but non-zero LR (a step at LR 0 is wasted), and factor is
exactly 1.0 at step == warmup_steps. Decays then run over [warmup_steps, total_steps] and reach
min_lr_ratio at step == total_steps (one past the last step: the last step still learns), and
stay there after.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from groundup.errors import ConfigError
from groundup.registry import construct, lookup

__all__ = [
    "SCHEDULES",
    "ConstantSchedule",
    "CosineSchedule",
    "LinearSchedule",
    "Schedule",
    "StepSchedule",
    "WSDSchedule",
    "build_schedule",
]


def _int(sched: str, key: str, value: Any, minimum: int) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():  # YAML `1000.0`, `1e3` after parsing
        value, ok = int(value), True
    if not ok or value < minimum:
        raise ConfigError(
            f"schedule '{sched}': {key} must be an integer >= {minimum}, got {value!r}; fix {key}"
        )
    return value


def _ratio(sched: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"schedule '{sched}': {key} must be in [0, 1], got {value!r}; fix {key}")
    return float(value)


@dataclass
class Schedule:
    """Base class: subclasses define `factor(step)`, the multiplier of the base LR."""

    name: ClassVar[str] = ""

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        # Lets a schedule drop into torch.optim.lr_scheduler.LambdaLR as lr_lambda.
        return self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr to initial_lr * factor(step); returns the factor.

        The base LR is kept in group["initial_lr"] (the key torch's schedulers use), written the
        first time from the group's current lr, so a model's groups may have different LRs.
        """
        f = self.factor(step)
        for group in optimizer.param_groups:
            lr = group["lr"]
            if "initial_lr" not in group:
                group["initial_lr"] = float(lr)
            if isinstance(lr, torch.Tensor):
                lr.fill_(group["initial_lr"] * f)  # tensor LR (capturable/fused): keep the tensor
            else:
                group["lr"] = group["initial_lr"] * f
        return f

    def to_dict(self) -> dict[str, Any]:
        """{"name": ..., **settings}: what a config stores to rebuild the same schedule."""
        return {"name": self.name, **dataclasses.asdict(self)}


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / (warmup_steps + 1)


def _needs_total(sched: Schedule) -> int:
    total = sched.total_steps  # type: ignore[attr-defined]
    if total is None:
        raise ConfigError(
            f"schedule '{sched.name}' needs total_steps: set epochs or max_steps "
            "(or total_steps in the schedule config)"
        )
    return total


def _check_warmup_total(sched: str, warmup_steps: int, total_steps: int | None) -> None:
    if total_steps is not None and warmup_steps >= total_steps:
        raise ConfigError(
            f"schedule '{sched}': warmup_steps ({warmup_steps}) must be < total_steps "
            f"({total_steps}); lower warmup_steps or train for more steps"
        )


@dataclass
class ConstantSchedule(Schedule):
    """The base LR throughout, after an optional linear warmup."""

    name: ClassVar[str] = "constant"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        self.warmup_steps = _int(self.name, "warmup_steps", self.warmup_steps, 0)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(max(step, 0), self.warmup_steps)
        return 1.0


@dataclass
class StepSchedule(Schedule):
    """Multiply the LR by gamma every step_size steps (torch's StepLR, stateless)."""

    name: ClassVar[str] = "step"
    step_size: int = 1000
    gamma: float = 0.1

    def __post_init__(self) -> None:
        self.step_size = _int(self.name, "step_size", self.step_size, 1)
        g = self.gamma
        if isinstance(g, bool) or not isinstance(g, int | float) or not g > 0:
            raise ConfigError(f"schedule 'step': gamma must be > 0, got {g!r}; fix gamma")
        self.gamma = float(g)

    def factor(self, step: int) -> float:
        return self.gamma ** (max(step, 0) // self.step_size)


# Decay curves from 1 at p=0 down to 0 at p=1: cosine/linear schedules and WSD's decay_shape.
_DECAYS: dict[str, Callable[[float], float]] = {
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "sqrt": lambda p: 1.0 - math.sqrt(p),
}


@dataclass
class _WarmupDecay(Schedule):
    """Linear warmup to 1, then `_decay` from 1 to min_lr_ratio over the remaining steps."""

    _shape: ClassVar[str]  # a key of _DECAYS
    warmup_steps: int = 0
    total_steps: int | None = None
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        n = self.name
        self.warmup_steps = _int(n, "warmup_steps", self.warmup_steps, 0)
        if self.total_steps is not None:
            self.total_steps = _int(n, "total_steps", self.total_steps, 1)
        self.min_lr_ratio = _ratio(n, "min_lr_ratio", self.min_lr_ratio)
        _check_warmup_total(n, self.warmup_steps, self.total_steps)

    def factor(self, step: int) -> float:
        total = _needs_total(self)
        if step < self.warmup_steps:
            return _warmup(max(step, 0), self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / (total - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * _DECAYS[self._shape](progress)


@dataclass
class CosineSchedule(_WarmupDecay):
    """Linear warmup to 1, then half a cosine down to min_lr_ratio at total_steps."""

    name: ClassVar[str] = "cosine"
    _shape = "cosine"
    min_lr_ratio: float = 0.1


@dataclass
class LinearSchedule(_WarmupDecay):
    """Linear warmup to 1, then a straight line down to min_lr_ratio (0 by default)."""

    name: ClassVar[str] = "linear"
    _shape = "linear"


_WSD_SHAPES = tuple(_DECAYS)


@dataclass
class WSDSchedule(Schedule):
    """Warmup-stable-decay: warmup, the base LR for most of the run, a short decay at the end.

    The decay covers the last decay_fraction of total_steps. Unlike cosine, the plateau makes
    an intermediate checkpoint a good base to continue from; only the final decay is redone.
    decay_shape: 'linear' (1 - p), 'cosine' (half cosine) or 'sqrt' (1 - sqrt(p)), p in [0, 1].
    """

    name: ClassVar[str] = "wsd"
    warmup_steps: int = 0
    total_steps: int | None = None
    decay_fraction: float = 0.2
    decay_shape: str = "linear"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        n = self.name
        self.warmup_steps = _int(n, "warmup_steps", self.warmup_steps, 0)
        if self.total_steps is not None:
            self.total_steps = _int(n, "total_steps", self.total_steps, 1)
        self.decay_fraction = _ratio(n, "decay_fraction", self.decay_fraction)
        self.min_lr_ratio = _ratio(n, "min_lr_ratio", self.min_lr_ratio)
        if not isinstance(self.decay_shape, str) or self.decay_shape.lower() not in _WSD_SHAPES:
            raise ConfigError(
                f"schedule 'wsd': decay_shape must be one of {', '.join(_WSD_SHAPES)}, "
                f"got {self.decay_shape!r}"
            )
        self.decay_shape = self.decay_shape.lower()
        _check_warmup_total(n, self.warmup_steps, self.total_steps)
        if self.total_steps is not None and self.decay_start < self.warmup_steps:
            raise ConfigError(
                f"schedule 'wsd': warmup ({self.warmup_steps} steps) and decay "
                f"({self.decay_steps} steps) overlap within total_steps={self.total_steps}; "
                "lower warmup_steps or decay_fraction"
            )

    @property
    def decay_steps(self) -> int:
        return round(self.decay_fraction * _needs_total(self))

    @property
    def decay_start(self) -> int:
        return _needs_total(self) - self.decay_steps

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(max(step, 0), self.warmup_steps)
        start, length = self.decay_start, self.decay_steps
        if step < start or length == 0:
            return 1.0
        p = min(1.0, (step - start) / length)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * _DECAYS[self.decay_shape](p)


SCHEDULES: dict[str, type[Schedule]] = {
    "constant": ConstantSchedule,
    "step": StepSchedule,
    "cosine": CosineSchedule,
    "linear": LinearSchedule,
    "wsd": WSDSchedule,
}


def build_schedule(
    spec: str | Mapping[str, Any] | Schedule | None,
    total_steps: int | None = None,
    **kwargs: Any,
) -> Schedule:
    """A schedule from None (constant), a name (+ kwargs), a {"name": ...} dict or a Schedule.

    total_steps (from epochs or max_steps) fills in schedules that decay and were not given
    their own; cosine, linear and wsd cannot run without it.
    """
    if isinstance(spec, Schedule):
        cls, settings = type(spec), {k: v for k, v in spec.to_dict().items() if k != "name"}
    elif spec is None:
        cls, settings = ConstantSchedule, {}
    elif isinstance(spec, Mapping):
        settings = dict(spec)
        if "name" not in settings:
            raise ConfigError(
                f"schedule config needs a 'name' (one of: {', '.join(sorted(SCHEDULES))})"
            )
        cls = lookup(SCHEDULES, settings.pop("name"), "schedule")
    elif isinstance(spec, str):
        cls, settings = lookup(SCHEDULES, spec, "schedule"), {}
    else:
        raise ConfigError(
            "schedule must be None, a name ('cosine'), a dict {'name': ..., ...} or a Schedule; "
            f"got {type(spec).__name__}"
        )
    settings.update(kwargs)
    needs_total = "total_steps" in inspect.signature(cls).parameters
    if needs_total and settings.get("total_steps") is None:
        if total_steps is None:
            raise ConfigError(
                f"schedule '{cls.name}' needs total_steps: set epochs or max_steps "
                "(or total_steps in the schedule config)"
            )
        settings["total_steps"] = total_steps
    if isinstance(spec, Schedule) and settings == dataclasses.asdict(spec):
        return spec
    return construct(cls, settings, f"schedule '{cls.name}'", "option")
