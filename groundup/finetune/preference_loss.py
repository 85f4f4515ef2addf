"""The losses of preference tuning, and the figures a run logs about its pairs.

Every loss reads per-pair statistics, the columns of `PreferencePolicy`'s output: the summed
log-probabilities of the chosen and rejected replies under the policy, their token counts,
and the same sums under the reference model (zeros where the loss has none).

- DPO (Rafailov et al. 2023): h = (log pi(c) - log ref(c)) - (log pi(r) - log ref(r));
  sigmoid: -log sigmoid(beta h) (with label smoothing e: -(1 - e) log sigmoid(beta h)
  - e log sigmoid(-beta h)); ipo: (h' - 1 / (2 beta))^2 on the per-token mean log-ratios h';
  hinge: max(0, 1 - beta h). Implicit rewards: beta (log pi - log ref), summed over the reply.
- SimPO (Meng et al. 2024): no reference; the per-token mean log-probabilities a(c), a(r);
  -log sigmoid(beta (a(c) - a(r)) - gamma) (hinge: max(0, 1 - beta (a(c) - a(r) - gamma /
  beta))). Rewards: beta a.
- ORPO (Hong et al. 2024): no reference; -a(c) (the chosen reply's NLL per token) - lambda
  log sigmoid(log odds(c) - log odds(r)), with odds(y) = p / (1 - p) and p = exp(a(y)).
  Rewards: beta a. The NLL is each pair's mean over its reply tokens (the paper's form), so a
  step's loss is a mean over pairs and gradient accumulation stays exact.

The loss is a groundup `Loss` (`sum` over pairs, `count` = pairs); the metrics read the
(chosen, rejected) rewards, what `probabilities()` gives them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from groundup.config import check
from groundup.registry import did_you_mean
from groundup.train.callbacks import Callback
from groundup.train.losses import Loss
from groundup.train.metric_base import Metric

# the columns of the per-pair statistics (B, 6)
LOGP_C, LOGP_R, N_C, N_R, REF_C, REF_R = range(6)
LOSS_TYPES: dict[str, tuple[str, ...]] = {
    "dpo": ("sigmoid", "ipo", "hinge"),
    "simpo": ("sigmoid", "hinge"),
    "orpo": ("sigmoid",),  # ORPO has one form; "sigmoid" is the section's default
}
DEFAULT_BETA = {"dpo": 0.1, "orpo": 0.1, "simpo": 2.0}


@dataclass
class PreferenceConfig:
    """Preference tuning: the loss and its constants."""

    loss: str = "sigmoid"  # dpo: sigmoid (DPO), ipo, hinge; simpo: sigmoid, hinge
    beta: float | None = None  # null: 0.1 (dpo, orpo), 2.0 (simpo); rewards are beta x log-ratio
    label_smoothing: float = 0.0  # sigmoid losses: the assumed share of flipped pairs (cDPO)
    simpo_gamma: float = 0.5  # simpo: the target reward margin
    orpo_lambda: float = 0.1  # orpo: weight of the odds-ratio term beside the chosen NLL

    def __post_init__(self) -> None:
        known = sorted({name for names in LOSS_TYPES.values() for name in names})
        check(
            self.loss in known,
            f"preference.loss {self.loss!r} is not a preference loss"
            f"{did_you_mean(self.loss, known)}; valid: {', '.join(known)}",
        )
        check(self.beta is None or self.beta > 0, f"preference.beta must be > 0, got {self.beta}")
        check(
            0.0 <= self.label_smoothing < 0.5,
            f"preference.label_smoothing must be in [0, 0.5), got {self.label_smoothing}",
        )
        check(self.orpo_lambda >= 0, f"preference.orpo_lambda must be >= 0, got {self.orpo_lambda}")

    def check_task(self, task: str) -> None:
        """The loss must be one that `task` has."""
        valid = LOSS_TYPES[task]
        check(
            self.loss in valid,
            f"preference.loss {self.loss!r} does not apply to task {task}; "
            f"valid for {task}: {', '.join(valid)}",
        )

    def beta_for(self, task: str) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA[task]


# ---- the losses, on tensors (B,) -------------------------------------------------------------
def _sigmoid_loss(z: Tensor, label_smoothing: float) -> Tensor:
    """-log sigmoid(z), or its conservative form when some labels may be flipped."""
    if label_smoothing == 0:
        return -F.logsigmoid(z)
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def dpo_loss(
    policy_c: Tensor,
    policy_r: Tensor,
    ref_c: Tensor,
    ref_r: Tensor,
    beta: float,
    loss: str = "sigmoid",
    label_smoothing: float = 0.0,
    n_c: Tensor | None = None,
    n_r: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(per-pair loss, chosen reward, rejected reward) from summed reply log-probabilities.
    ipo needs the reply token counts n_c, n_r (it compares per-token log-ratios)."""
    ratio_c, ratio_r = policy_c - ref_c, policy_r - ref_r
    if loss == "sigmoid":
        losses = _sigmoid_loss(beta * (ratio_c - ratio_r), label_smoothing)
    elif loss == "hinge":
        losses = torch.relu(1 - beta * (ratio_c - ratio_r))
    elif loss == "ipo":
        if n_c is None or n_r is None:
            raise ValueError("the ipo loss needs the reply token counts n_c and n_r")
        h = ratio_c / n_c.clamp(min=1) - ratio_r / n_r.clamp(min=1)
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss!r}")
    return losses, beta * ratio_c.detach(), beta * ratio_r.detach()


def simpo_loss(
    mean_c: Tensor,
    mean_r: Tensor,
    beta: float,
    gamma: float,
    loss: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """(per-pair loss, chosen reward, rejected reward) from per-token mean log-probabilities."""
    z = beta * (mean_c - mean_r) - gamma
    losses = _sigmoid_loss(z, label_smoothing) if loss == "sigmoid" else torch.relu(1 - z)
    return losses, beta * mean_c.detach(), beta * mean_r.detach()


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(
    mean_c: Tensor, mean_r: Tensor, lam: float, beta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(per-pair loss, chosen reward, rejected reward): the chosen reply's per-token NLL minus
    lam x log sigmoid of the log odds ratio, from per-token mean log-probabilities."""
    # Trap: a mean log-probability of exactly 0 (p = 1) has infinite odds; keep it below 0.
    mean_c, mean_r = mean_c.clamp(max=-1e-12), mean_r.clamp(max=-1e-12)
    log_odds = (mean_c - mean_r) - (log1mexp(mean_c) - log1mexp(mean_r))
    losses = -mean_c - lam * F.logsigmoid(log_odds)
    return losses, beta * mean_c.detach(), beta * mean_r.detach()


def pair_sum(losses: Tensor, weight: Tensor | None) -> Tensor:
    """The sum of per-pair losses (B,), each scaled by its pair's weight when given."""
    if weight is None:
        return losses.sum()
    return (losses * torch.as_tensor(weight, device=losses.device).to(losses.dtype)).sum()


class PreferenceObjective(Loss):
    """The loss of a preference task over the per-pair statistics (B, 6); targets are (B,)."""

    name = "preference"

    def __init__(self, task: str, config: PreferenceConfig) -> None:
        config.check_task(task)
        self.task, self.config, self.beta = task, config, config.beta_for(task)

    def per_pair(self, stats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, chosen reward, rejected reward), each (B,)."""
        c = self.config
        s = stats.to(torch.promote_types(stats.dtype, torch.float32))
        if self.task == "dpo":
            return dpo_loss(
                s[:, LOGP_C], s[:, LOGP_R], s[:, REF_C], s[:, REF_R], self.beta, c.loss,
                c.label_smoothing, s[:, N_C], s[:, N_R],
            )  # fmt: skip
        mean_c = s[:, LOGP_C] / s[:, N_C].clamp(min=1)
        mean_r = s[:, LOGP_R] / s[:, N_R].clamp(min=1)
        if self.task == "simpo":
            return simpo_loss(mean_c, mean_r, self.beta, c.simpo_gamma, c.loss, c.label_smoothing)
        return orpo_loss(mean_c, mean_r, c.orpo_lambda, self.beta)

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return pair_sum(self.per_pair(outputs)[0], weight)

    def probabilities(self) -> Callable[[Tensor], Tensor]:
        """What the metrics read: the (chosen, rejected) rewards (B, 2)."""
        return lambda stats: torch.stack(self.per_pair(stats)[1:], dim=1)


# ---- the figures ---------------------------------------------------------------------------
def _accuracy(r: Tensor) -> Tensor:
    return (r[:, 0] > r[:, 1]).to(r.dtype)


PAIR_FIGURES: dict[str, Callable[[Tensor], Tensor]] = {
    "pref_accuracy": _accuracy,  # the share of pairs whose chosen reply has the higher reward
    "reward_margin": lambda r: r[:, 0] - r[:, 1],
    "chosen_reward": lambda r: r[:, 0],
    "rejected_reward": lambda r: r[:, 1],
}


class PairMetric(Metric):
    """The mean over pairs of one figure of the (chosen, rejected) rewards (B, 2).

    Besides the epoch's sums it keeps the log window's, which `WindowFigures` takes for each
    train record; both are in `state()`, so a resumed run writes the same records."""

    def __init__(self, name: str, value: Callable[[Tensor], Tensor]) -> None:
        self.value = value
        self._window: Tensor | None = None
        super().__init__(name)

    def reset(self) -> None:  # the epoch's sums; the window runs on until a record takes it
        self._sums: Tensor | None = None

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        v = self.value(outputs.detach()).double()  # (B,)
        add = torch.stack([v.sum(), torch.tensor(float(v.numel()), device=v.device).double()])
        self._sums = add if self._sums is None else self._sums + add
        self._window = add if self._window is None else self._window + add

    def compute(self) -> float:
        return _mean(self._sums)

    def take_window(self) -> Tensor:
        """(sum, count) of the log window; the next window starts empty."""
        window = self._window if self._window is not None else torch.zeros(2, dtype=torch.float64)
        self._window = None
        return window

    def state(self) -> list[Tensor]:
        zero = torch.zeros(2, dtype=torch.float64)
        epoch = self._sums if self._sums is not None else zero
        window = self._window if self._window is not None else zero
        return [epoch.detach(), window.detach()]

    def load_state(self, state: Sequence[Tensor]) -> None:
        self._sums, self._window = state[0].double(), state[1].double()


def _mean(sums: Tensor | None) -> float:
    if sums is None or float(sums[1]) == 0:
        return math.nan
    return float(sums[0] / sums[1])


def pair_metrics() -> list[PairMetric]:
    """pref_accuracy, reward_margin, chosen_reward, rejected_reward."""
    return [PairMetric(name, fn) for name, fn in PAIR_FIGURES.items()]


class WindowFigures(Callback):
    """Adds the pair figures of the log window to each train record (over all ranks)."""

    def on_log(self, trainer: Any, logs: dict[str, float]) -> None:
        from groundup import distributed as du

        metrics = [m for m in trainer.metrics if isinstance(m, PairMetric)]
        if not metrics:
            return
        sums = torch.stack([m.take_window().to(trainer.device) for m in metrics])  # (M, 2)
        du.all_reduce_sum(sums)  # every rank logs at the same steps: one collective
        for m, (total, count) in zip(metrics, sums.tolist()):
            logs[m.name] = total / count if count else math.nan
