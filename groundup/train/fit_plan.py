"""How long one `Trainer.fit` call trains: its arguments checked, and turned into optimizer steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from groundup.errors import ConfigError


@dataclass(frozen=True)
class FitPlan:
    steps_per_epoch: int | None  # None: an endless stream (random windows), steps only
    epochs: int | None  # None for an endless stream
    budget: int  # optimizer steps: the first reached of `epochs` passes and `max_steps`


def plan_fit(
    train: Any,
    *,
    epochs: int | None,
    max_steps: int | None,
    eval_every: int | None,
    grad_accum: int,
    world_size: int,
) -> FitPlan:
    """Check `fit`'s arguments against the data and count the optimizer steps they ask for.

    `epochs` and `max_steps` both None means one epoch. Several ranks need data that gives each
    rank its own part (an object whose `world_size` matches).
    """
    if epochs is not None and (not isinstance(epochs, int) or epochs < 0):
        raise ConfigError(f"epochs must be a non-negative integer, got {epochs!r}")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 0):
        raise ConfigError(f"max_steps must be a non-negative integer, got {max_steps!r}")
    if eval_every is not None and eval_every < 1:
        raise ConfigError(f"eval_every must be >= 1 (or null), got {eval_every}")
    try:
        batches_per_epoch = len(train)
    except TypeError:
        batches_per_epoch = None  # an endless stream (random windows): steps only
    if batches_per_epoch is None and max_steps is None:
        raise ConfigError("this data source never ends: set max_steps (optimizer steps)")
    if epochs is None and max_steps is None:
        epochs = 1
    steps_per_epoch = max(1, batches_per_epoch // grad_accum) if batches_per_epoch else None
    if batches_per_epoch is not None and batches_per_epoch < grad_accum:
        raise ConfigError(
            f"grad_accum {grad_accum} needs at least that many batches per epoch, "
            f"the data gives {batches_per_epoch}; lower grad_accum or the batch size"
        )
    budget = []
    if epochs is not None and steps_per_epoch is not None:
        budget.append(epochs * steps_per_epoch)
    if max_steps is not None:
        budget.append(max_steps)
    if world_size > 1 and getattr(train, "world_size", None) != world_size:
        raise ConfigError(
            f"training on {world_size} ranks needs data that gives each rank its own "
            "part (an object with world_size set, e.g. RandomWindows(..., rank=rank, "
            f"world_size={world_size})); {type(train).__name__} would repeat the same "
            "batches on every rank"
        )
    return FitPlan(
        steps_per_epoch=steps_per_epoch,
        epochs=epochs if steps_per_epoch is not None else None,
        budget=min(budget),
    )
