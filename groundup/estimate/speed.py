"""The wall time of a run, predicted from a few real steps of the real model on this device.

    timing = time_steps(trainer_fit(trainer, batches), device, steps=3)  # 1 warm-up, 3 timed
    seconds = predict_seconds(timing, total_steps, eval_batches=..., eval_seconds=...)

The steps go through `Trainer.fit`, so they are the run's steps exactly: micro-batches and
gradient accumulation, autocast, clipping, the optimizer, activation checkpointing. The first
step is left out: it allocates the optimizer state and picks kernels. While the timed steps
run, the memory they reach is measured too (CUDA: max_memory_allocated; CPU: the growth of
the peak resident set), the figure the estimate is compared with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from groundup.train.callbacks import Callback


@dataclass
class StepTiming:
    """Seconds per optimizer step over `steps` timed steps, and the memory they reached."""

    seconds_per_step: float
    steps: int
    warmup: int
    first_step_seconds: float = 0.0  # the warm-up step: optimizer state, kernel choice
    peak_bytes: int | None = None  # CUDA: everything allocated; CPU: growth over the weights
    peak_source: str = ""
    peak_includes_weights: bool = False  # CUDA's figure does; the CPU's growth does not

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _StepClock(Callback):
    """The clock at the end of every step (after the device has finished it); stops the fit
    once `steps` steps after the warm-up have run and `min_seconds` have passed."""

    def __init__(self, device: torch.device, warmup: int, steps: int, min_seconds: float) -> None:
        self.device, self.warmup, self.steps, self.min_seconds = device, warmup, steps, min_seconds
        self.times: list[float] = []

    def on_train_begin(self, trainer: Any) -> None:
        self.times = [time.perf_counter()]

    def on_step_end(self, trainer: Any, step: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.times.append(now)
        timed = len(self.times) - 1 - self.warmup
        if timed >= self.steps and now - self.times[self.warmup] >= self.min_seconds:
            trainer.stop_training = True


# fit(callbacks, max_steps): trains that many optimizer steps with those callbacks
Fit = Callable[[list[Callback], int], Any]


def trainer_fit(trainer: Any, batches: Iterable) -> Fit:
    """The `Fit` of a Trainer on `batches` (enough micro-batches for the steps asked)."""

    def fit(callbacks: list[Callback], max_steps: int) -> Any:
        trainer.user_callbacks = [*trainer.user_callbacks, *callbacks]
        return trainer.fit(batches, max_steps=max_steps)

    return fit


def time_steps(
    fit: Fit,
    device: torch.device,
    steps: int = 3,
    warmup: int = 1,
    min_seconds: float = 1.0,
    max_steps: int = 200,
) -> StepTiming:
    """Train through `fit` and return the mean seconds of the steps after `warmup`: at least
    `steps` of them, more while they add up to less than `min_seconds` (tiny models: a
    steadier mean), at most `max_steps` in all. The model is trained: give it one you do not
    need afterwards."""
    clock = _StepClock(device, warmup, steps, min_seconds)
    before = _peak_start(device)
    fit([clock], max(max_steps, warmup + steps))
    peak, source = _peak_end(device, before)
    times = clock.times
    timed = times[warmup:]
    if len(timed) < 2:  # the data ran out before the timed steps: time what ran
        timed = times
    per_step = (timed[-1] - timed[0]) / max(1, len(timed) - 1)
    first = times[1] - times[0] if len(times) > 1 else per_step
    return StepTiming(per_step, len(timed) - 1, warmup, first, peak, source, device.type == "cuda")


def time_forward(trainer: Any, batches: Iterable, max_batches: int = 2) -> float:
    """Seconds per validation batch (a forward without gradients), after one warm-up batch."""
    batches = list(_take(batches, max_batches + 1))
    if not batches:
        return 0.0
    trainer.evaluate(batches[:1])
    if len(batches) == 1:
        return 0.0
    start = time.perf_counter()
    trainer.evaluate(batches[1:])
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    return (time.perf_counter() - start) / (len(batches) - 1)


def predict_seconds(
    timing: StepTiming, total_steps: int, eval_batches: int = 0, eval_seconds: float = 0.0
) -> float:
    """The run's training time: its first step as the warm-up took, the others at the timed
    speed, plus its evaluations (checkpoint saves are not counted)."""
    if total_steps <= 0:
        return 0.0
    steps = timing.first_step_seconds + (total_steps - 1) * timing.seconds_per_step
    return steps + eval_batches * eval_seconds


def format_seconds(seconds: float) -> str:
    """'45s', '12m05s', '3h20m'."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _take(batches: Iterable, n: int) -> Iterable:
    for i, batch in enumerate(batches):
        if i >= n:
            return
        yield batch


def _peak_start(device: torch.device) -> int | None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    return reset_peak_rss()


def _peak_end(device: torch.device, before: int | None) -> tuple[int | None, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "CUDA max_memory_allocated"
    if before is None:
        return None, ""
    peak = proc_status_bytes("VmHWM")
    return (peak - before if peak is not None else None), "peak RSS growth (VmHWM)"


def proc_status_bytes(field: str) -> int | None:
    """A `/proc/self/status` figure (VmRSS, VmHWM) in bytes; None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None


def reset_peak_rss() -> int | None:
    """Reset the process's peak-RSS mark to the RSS now (Linux) and return that RSS."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return None
    return proc_status_bytes("VmRSS")
