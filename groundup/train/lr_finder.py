"""The learning-rate range test: a short run whose LR grows exponentially, one optimizer step
at each, while the smoothed loss is watched; the suggestion is the LR where the loss falls
fastest, before its minimum and the divergence after it.

Two smoothings, for two jobs. While the test runs, an exponential moving average (`smooth`)
decides when the loss has blown up. It lags: at 0.98 it averages the last ~50 steps, half of a
100-step test, so its steepest point sits decades of LR after the loss's own. The suggestion is
read, once the curve is complete, off a centred moving average of the raw losses, which has
no lag (a window of `CENTRED_SHARE` of the steps on each side).

It runs on the Trainer's own step (`train_step`: its grad_accum, precision, clipping, device
and ranks), so what it measures is what `fit` will do. Everything it changes comes back
afterwards: the weights, the optimizer state and LRs, the torch/numpy/Python RNG, the data
position and the trainer's counters, so `fit` after `lr_find` trains exactly as without it.

Several ranks: `train_step` returns the step loss all-reduced over the ranks, so every rank
sees the same curve, stops at the same step and suggests the same LR (no extra collective).

    result = lr_find(trainer, train_batches)
    result.suggestion          # e.g. 3.2e-03; None when the curve never fell
    result.plot("lr_find.png"); result.to_json()
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from signal import SIGTERM
from typing import Any

import numpy as np
import torch

from groundup.checkpoint.rng import restore_rng, rng_tensors
from groundup.errors import ConfigError, DataError, TrainingInterrupted

# the first points are mostly the smoother's start-up: the steepest slope is looked for after
SKIP_START_SHARE = 0.1
# the centred average behind the suggestion: this share of the steps on each side of a point
CENTRED_SHARE = 0.05


@dataclass
class LRFindResult:
    """The curve of a range test and its suggestion."""

    lrs: list[float]  # the LR of each step taken
    losses: list[float]  # each step's loss (the global one under several ranks)
    smoothed: list[float]  # the bias-corrected exponential moving average of the losses
    suggestion: float | None  # the steepest descent of the centred losses; None: no descent
    diverged: bool  # the sweep stopped early: the loss blew up or became non-finite
    min_lr: float
    max_lr: float
    num_steps: int

    @property
    def suggestion_index(self) -> int | None:
        return None if self.suggestion is None else self.lrs.index(self.suggestion)

    def override(self) -> str | None:
        """The dotted override that uses the suggestion (`optim.lr=3.2e-03`)."""
        return None if self.suggestion is None else f"optim.lr={self.suggestion:.1e}"

    def to_json(self) -> dict[str, Any]:
        """Plain numbers (non-finite losses as None, which JSON has)."""

        def finite(values: list[float]) -> list[float | None]:
            return [v if math.isfinite(v) else None for v in values]

        return {
            "suggestion": self.suggestion,
            "override": self.override(),
            "diverged": self.diverged,
            "min_lr": self.min_lr,
            "max_lr": self.max_lr,
            "num_steps": self.num_steps,
            "steps_taken": len(self.lrs),
            "lrs": self.lrs,
            "losses": finite(self.losses),
            "smoothed": finite(self.smoothed),
        }

    @property
    def centred(self) -> list[float]:
        """The losses under the lag-free centred average the suggestion is read from."""
        return centred_mean(self.losses, max(1, round(CENTRED_SHARE * self.num_steps)))

    def plot(self, path: str | Path) -> Path:
        """The loss (raw, and under the centred average the suggestion is read from) against
        the LR on a log axis, the suggestion marked. A bare Figure: no pyplot, so the user's
        matplotlib backend and state are left alone."""
        from matplotlib.figure import Figure

        path = Path(path)
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.subplots()
        centred = self.centred
        ax.plot(self.lrs, self.losses, color="0.75", linewidth=1, label="loss")
        ax.plot(self.lrs, centred, color="C0", linewidth=2, label="centred average")
        if self.suggestion is not None:
            i = self.suggestion_index
            ax.plot([self.suggestion], [centred[i]], "o", color="C3")
            label = f"suggestion {self.suggestion:.2e}"
            ax.axvline(self.suggestion, color="C3", linestyle="--", linewidth=1, label=label)
        finite = [v for v in centred if math.isfinite(v)]
        if finite:  # keep the blow-up from squashing the useful part of the curve
            low, high = min(finite), finite[0]
            ax.set_ylim(low - 0.1 * abs(high - low) - 1e-12, max(high, low) * 1.2 + 1e-12)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title("LR range test")
        ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        return path


def check_range(
    min_lr: float, max_lr: float, num_steps: int, smooth: float, diverge_factor: float
) -> None:
    """ConfigError for settings that cannot make a range test (before any work)."""
    if not (isinstance(min_lr, (int, float)) and math.isfinite(min_lr) and min_lr > 0):
        raise ConfigError(f"min_lr must be a number > 0, got {min_lr!r}")
    if not (isinstance(max_lr, (int, float)) and math.isfinite(max_lr) and max_lr > min_lr):
        raise ConfigError(f"max_lr must be a number above min_lr {min_lr:g}, got {max_lr!r}")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 5:
        raise ConfigError(f"the range test needs num_steps >= 5 (e.g. 100), got {num_steps!r}")
    if not (isinstance(smooth, (int, float)) and 0.0 <= smooth < 1.0):
        raise ConfigError(f"smooth must be in [0, 1) (e.g. 0.98), got {smooth!r}")
    if not (isinstance(diverge_factor, (int, float)) and diverge_factor > 1.0):
        raise ConfigError(f"diverge_factor must be > 1 (e.g. 4.0), got {diverge_factor!r}")


def lr_find(
    trainer: Any,
    train: Iterable,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    smooth: float = 0.98,
    diverge_factor: float = 4.0,
) -> LRFindResult:
    """Run the range test on `trainer` with batches from `train` (see the module doc).

    Step i uses LR min_lr * (max_lr / min_lr) ** (i / (num_steps - 1)) in the first parameter
    group (other groups keep their ratio to it). The sweep stops early when the loss is not
    finite or the smoothed loss exceeds `diverge_factor` times its best. A signal (Ctrl-C)
    stops it, restores everything and raises `TrainingInterrupted`."""
    check_range(min_lr, max_lr, num_steps, smooth, diverge_factor)
    optimizer = trainer.build_optimizer()
    saved = _Snapshot(trainer, train)
    lrs: list[float] = []
    losses: list[float] = []
    signal = None
    diverged = False
    try:
        trainer.metrics = []  # training metrics are not the test's business (and stay as were)
        trainer.nan_policy = "skip"  # a blow-up ends the sweep; it must not save or raise
        trainer.model.train()
        base = [_lr_of(g) for g in optimizer.param_groups]
        ratio = [b / base[0] if base[0] else 1.0 for b in base]
        smoothed: list[float] = []
        batches = _batches(train)
        avg, best = 0.0, math.inf
        for i in range(num_steps):
            lr = min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))
            micro = _next_micro_batches(batches, trainer.grad_accum, trainer)
            if micro is None:
                break
            for group, r in zip(optimizer.param_groups, ratio):
                _set_lr(group, lr * r)
            loss = float(trainer.train_step(micro))  # all ranks: the same all-reduced loss
            lrs.append(lr)
            losses.append(loss)
            if not math.isfinite(loss):
                smoothed.append(math.nan)
                diverged = True
                break
            avg = smooth * avg + (1.0 - smooth) * loss
            value = avg / (1.0 - smooth ** (i + 1))
            smoothed.append(value)
            best = min(best, value)
            if _interrupted(trainer):
                # another rank's signal reached this one through the all-reduced flag
                signal = getattr(trainer, "_signal", None) or int(SIGTERM)
                break
            if i > 0 and best > 0 and value > diverge_factor * best:
                diverged = True
                break
        if not lrs:
            raise DataError("the range test got no batch from the training data; check it")
    finally:
        saved.restore(trainer, train)
    if signal is not None:
        trainer._signal = signal
        raise TrainingInterrupted(trainer.step, None, signal)
    return LRFindResult(
        lrs=lrs,
        losses=losses,
        smoothed=smoothed,
        suggestion=suggest(lrs, centred_mean(losses, max(1, round(CENTRED_SHARE * num_steps)))),
        diverged=diverged,
        min_lr=float(min_lr),
        max_lr=float(max_lr),
        num_steps=num_steps,
    )


def centred_mean(values: list[float], half: int) -> list[float]:
    """The mean of each point's window of `half` points each side (shrunk symmetrically at the
    ends, so the first and last points stay themselves): a smoothing without lag. A non-finite
    value stays non-finite and is left out of its neighbours' windows."""
    out = []
    for i, v in enumerate(values):
        if not math.isfinite(v):
            out.append(v)
            continue
        h = min(half, i, len(values) - 1 - i)
        window = [w for w in values[i - h : i + h + 1] if math.isfinite(w)]
        out.append(sum(window) / len(window))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The LR of the steepest descent of the smoothed loss (per log-LR), looked for after the
    smoother's start-up and up to the curve's minimum; None when there is no descent there."""
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    if len(finite) < 3:
        return None
    values = np.asarray([smoothed[i] for i in finite], dtype=np.float64)
    logs = np.log10(np.asarray([lrs[i] for i in finite], dtype=np.float64))
    end = int(np.argmin(values))  # past the minimum the loss only climbs
    start = max(1, int(len(values) * SKIP_START_SHARE))
    if end - start < 1:
        start = 0
    if end - start < 1:
        return None
    slopes = np.gradient(values, logs)
    best = start + int(np.argmin(slopes[start : end + 1]))
    if slopes[best] >= 0:
        return None
    return lrs[finite[best]]


# ---------------------------------------------------------------- helpers
def _lr_of(group: dict[str, Any]) -> float:
    lr = group["lr"]
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)


def _set_lr(group: dict[str, Any], value: float) -> None:
    if isinstance(group["lr"], torch.Tensor):  # fused/capturable optimizers keep a tensor LR
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def _batches(train: Iterable) -> Iterator:
    """Batches for as long as asked: a new pass over `train` each time one ends (a one-shot
    iterator simply ends)."""
    while True:
        got = False
        for batch in train:
            got = True
            yield batch
        if not got or iter(train) is train:
            return


def _next_micro_batches(batches: Iterator, accum: int, trainer: Any) -> list | None:
    micro = []
    for batch in batches:
        micro.append(trainer._to_device(batch))
        if len(micro) == accum:
            return micro
    return None


def _interrupted(trainer: Any) -> bool:
    """A SIGINT/SIGTERM arrived. Several ranks: the flag all-reduced in train_step, so every
    rank stops at the same step."""
    if trainer.world_size > 1:
        flag = getattr(trainer, "_stop_flag", None)
        return flag is not None and float(flag) > 0
    return getattr(trainer, "_signal", None) is not None


class _Snapshot:
    """What the range test changes, taken before it and put back after it."""

    def __init__(self, trainer: Any, train: Iterable) -> None:
        model = trainer.model
        self.training = model.training
        # every parameter and buffer by position: works for plain, DDP and FSDP2 (DTensor
        # shards are cloned and copied back locally) modules alike
        self.tensors = [t.detach().clone() for t in _tensors(model)]
        self.optimizer = copy.deepcopy(trainer.optimizer.state_dict())
        self.lrs = [group["lr"] for group in trainer.optimizer.param_groups]
        self.lrs = [lr.clone() if isinstance(lr, torch.Tensor) else lr for lr in self.lrs]
        self.rng = rng_tensors()
        state = getattr(train, "state_dict", None)
        self.data = copy.deepcopy(state()) if callable(state) else None
        # the trainer's own attributes (counters, flags, the last grad norm, the NaN policy,
        # the metrics list): a shallow copy, put back whole
        self.attributes = dict(vars(trainer))

    def restore(self, trainer: Any, train: Iterable) -> None:
        with torch.no_grad():
            for tensor, saved in zip(_tensors(trainer.model), self.tensors):
                tensor.copy_(saved)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.optimizer.load_state_dict(self.optimizer)
        for group, lr in zip(trainer.optimizer.param_groups, self.lrs):
            if isinstance(group["lr"], torch.Tensor) and isinstance(lr, torch.Tensor):
                group["lr"].copy_(lr)
            else:
                group["lr"] = lr
        tensors, meta = self.rng
        restore_rng(tensors, meta)
        if self.data is not None:
            train.load_state_dict(self.data)
        vars(trainer).clear()
        vars(trainer).update(self.attributes)
        trainer.model.train(self.training)


def _tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]
