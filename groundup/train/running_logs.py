"""What a fit() holds between its records: the step losses of the epoch (for the epoch record),
of the log window (for the next train record) and the training metrics' running state.

It is saved in every checkpoint, so a run killed mid-epoch or mid-window and resumed writes
exactly the records an uninterrupted run writes (the same values from the same numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from groundup.train.metrics import Metric


class RunningLogs:
    """Step losses kept as tensors (no device sync per step) until a record needs them."""

    def __init__(self) -> None:
        self.epoch_losses: list[torch.Tensor] = []
        self.epoch_sizes: list[int] = []
        self.window_losses: list[torch.Tensor] = []
        self.window_items = 0

    def add(self, loss: torch.Tensor, items: int, skipped: bool) -> None:
        """One optimizer step; a skipped (non-finite) step's loss stays out of the means."""
        self.window_items += items
        if not skipped:
            self.epoch_losses.append(loss)
            self.epoch_sizes.append(items)
            self.window_losses.append(loss)

    def new_epoch(self, metrics: Sequence[Metric]) -> None:
        self.epoch_losses, self.epoch_sizes = [], []
        for m in metrics:
            m.reset()

    def take_window(self) -> tuple[list[torch.Tensor], int]:
        """The log window's losses and item count; the next window starts empty."""
        window = (self.window_losses, self.window_items)
        self.window_losses, self.window_items = [], 0
        return window

    def epoch_loss(self) -> float | None:
        """The epoch's mean loss over items (steps weighted by their item counts)."""
        if not self.epoch_losses:
            return None
        weights = torch.tensor(self.epoch_sizes, dtype=torch.float64)
        stacked = torch.stack([loss.double().cpu() for loss in self.epoch_losses])
        return float((stacked * weights).sum() / weights.sum())

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self, metrics: Sequence[Metric]) -> dict[str, Any]:
        """Plain numbers for state.json (float32 and float64 values round-trip exactly)."""
        return {
            "epoch_losses": _floats(self.epoch_losses),
            "epoch_sizes": list(self.epoch_sizes),
            "window_losses": _floats(self.window_losses),
            "window_items": self.window_items,
            "loss_dtype": str(self.epoch_losses[0].dtype if self.epoch_losses else "").removeprefix(
                "torch."
            ),
            "metrics": [_metric_state(m) for m in metrics],
        }

    def load_state_dict(
        self, state: dict[str, Any], metrics: Sequence[Metric], device: torch.device
    ) -> None:
        dtype = getattr(torch, state.get("loss_dtype") or "float32")
        self.epoch_losses = [
            torch.tensor(v, dtype=dtype, device=device) for v in state["epoch_losses"]
        ]
        self.epoch_sizes = [int(n) for n in state["epoch_sizes"]]
        self.window_losses = [
            torch.tensor(v, dtype=dtype, device=device) for v in state["window_losses"]
        ]
        self.window_items = int(state["window_items"])
        saved = state.get("metrics", [])
        for m, metric_state in zip(metrics, saved):
            if metric_state:  # None or [] (nothing seen yet): the fresh state new_epoch left
                m.load_state(
                    [
                        torch.tensor(t["data"], dtype=getattr(torch, t["dtype"]), device=device)
                        for t in metric_state
                    ]
                )


def _floats(losses: list[torch.Tensor]) -> list[float]:
    if not losses:
        return []
    return [float(v) for v in torch.stack([t.detach() for t in losses]).cpu().tolist()]


def _metric_state(metric: Metric) -> list[dict[str, Any]] | None:
    state = metric.state()
    if state is None:
        return None  # a metric that cannot say what it holds starts the epoch afresh
    return [
        {"dtype": str(t.dtype).removeprefix("torch."), "data": t.detach().cpu().tolist()}
        for t in (torch.as_tensor(s) for s in state)
    ]
