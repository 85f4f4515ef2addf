"""The `optim:` section every training command shares: the optimizer and its LR schedule.

Checked in full when the config is loaded (names, ranges, betas), so a mistake is reported
before any data is read or any run folder is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from groundup.config import check


@dataclass
class OptimConfig:
    """The optimizer and its LR schedule. Unset fields keep the optimizer's own default."""

    name: str = "adam"  # sgd, adam, adamw, rmsprop, muon
    lr: float = 1e-3  # peak learning rate (after warmup)
    weight_decay: float | None = None  # decoupled for adamw/muon; biases and norms never decay
    momentum: float | None = None  # sgd, rmsprop, muon
    nesterov: bool | None = None  # sgd, muon
    betas: list[float] | None = None  # adam/adamw: [beta1, beta2], each in [0, 1)
    eps: float | None = None  # adam/adamw/rmsprop denominator term
    # muon: the AdamW half (embeddings, head, norms, biases): its lr, [beta1, beta2] and decay
    adamw_lr: float | None = None
    adamw_betas: list[float] | None = None
    adamw_weight_decay: float | None = None
    schedule: str = "constant"  # constant, step, cosine, linear, wsd
    warmup_steps: int = 0  # linear warmup from 0 to lr
    min_lr_ratio: float | None = None  # cosine/linear/wsd: final lr as a fraction of lr
    step_size: int | None = None  # step schedule: steps between decays
    gamma: float | None = None  # step schedule: decay factor
    decay_fraction: float | None = None  # wsd: fraction of the steps spent decaying

    def __post_init__(self) -> None:
        from groundup.train.optim import optimizer_spec
        from groundup.train.schedules import build_schedule

        check(
            isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
            f"optim.lr must be > 0 and finite, got {self.lr}",
        )
        check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        # the optimizer's and the schedule's own checks (unknown names, betas, ranges), now
        optimizer_spec(self.optimizer_spec())
        build_schedule(self.schedule_spec(), total_steps=max(10**9, self.warmup_steps + 1))

    def optimizer_spec(self) -> dict[str, Any]:
        """The {"name": ..., options} dict `build_optimizer` takes."""
        spec: dict[str, Any] = {"name": self.name, "lr": self.lr}
        for key in (
            "weight_decay",
            "momentum",
            "nesterov",
            "eps",
            "adamw_lr",
            "adamw_weight_decay",
        ):
            if getattr(self, key) is not None:
                spec[key] = getattr(self, key)
        for key in ("betas", "adamw_betas"):
            if getattr(self, key) is not None:
                spec[key] = tuple(getattr(self, key))
        return spec

    def schedule_spec(self) -> dict[str, Any]:
        """The {"name": ..., options} dict `build_schedule` takes."""
        spec: dict[str, Any] = {"name": self.schedule}
        if self.warmup_steps:
            spec["warmup_steps"] = self.warmup_steps
        for key in ("min_lr_ratio", "step_size", "gamma", "decay_fraction"):
            if getattr(self, key) is not None:
                spec[key] = getattr(self, key)
        return spec
