"""What every metric is built on: the `Metric` contract and the functions that read a batch.

`Metric` is the base class (`reset`, `update`, `compute`, and `state`/`load_state`/`merge` for
combining the parts seen by several ranks). The functions turn one batch of outputs and
targets into what the metrics count: flat class-id pairs (argmax or threshold), the check that
class targets are labels, (N, D) regression pairs, and `confusion_matrix`. They read no device
value except `_check_class_targets`, which the metrics call on the first batch only. The
metrics themselves and their registry are in `groundup.train.metrics`, which imports this
module (never the other way round).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from groundup.errors import DataError, ShapeError


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def _acc_dtype(device: torch.device) -> torch.dtype:
    """float64 accumulators, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _as_tensor(value: Tensor | float) -> Tensor:
    """A state value as a tensor; Python numbers become float64 (as_tensor would pick float32)."""
    if isinstance(value, Tensor):
        return value.detach()
    return torch.tensor(float(value), dtype=torch.float64)


def _sum_parts(parts: Sequence[Tensor]) -> Tensor:
    total = parts[0]
    for part in parts[1:]:
        total = total + part.to(total.device)
    return total


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> Tensor:
    """(C, C) int64 counts, rows = true class, columns = predicted class (sklearn's layout).

    Pairs with a label outside [0, num_classes) (e.g. ignore_index -100) are skipped by a
    zero weight rather than by boolean indexing, which would sync with the device.
    """
    y_true = torch.as_tensor(y_true).reshape(-1).long()
    y_pred = torch.as_tensor(y_pred, device=y_true.device).reshape(-1).long()
    if y_true.numel() != y_pred.numel():
        raise ShapeError(
            f"confusion_matrix: y_true has {y_true.numel()} labels and y_pred "
            f"{y_pred.numel()}; pass one prediction per label"
        )
    c = int(num_classes)
    valid = (y_true >= 0) & (y_true < c) & (y_pred >= 0) & (y_pred < c)
    index = torch.where(valid, y_true * c + y_pred, 0)
    counts = torch.zeros(c * c, dtype=torch.long, device=y_true.device)
    counts.scatter_add_(0, index, valid.long())
    return counts.view(c, c)


def _class_pairs(
    outputs: Tensor, targets: Tensor, threshold: float, name: str
) -> tuple[Tensor, Tensor, int, bool]:
    """Flat predicted and true class ids (N,), the number of classes, and whether the true
    ids came from integer targets (only those can hold ignore_index).

    1-D or single-column outputs are binary probabilities (threshold); otherwise argmax over
    the last axis, against integer targets (..., ) or one-hot targets of the outputs' shape.
    """
    if outputs.dim() == 0:
        raise ShapeError(f"{name}: outputs must have a batch axis, got shape ()")
    integer = not targets.is_floating_point()
    if outputs.dim() == 1 or outputs.shape[-1] == 1:
        if targets.numel() != outputs.numel():
            raise ShapeError(
                f"{name}: binary outputs {_shape(outputs)} and targets {_shape(targets)} do "
                "not have the same number of values; give one 0/1 target per sample"
            )
        pred = (outputs.reshape(-1) > threshold).long()
        true = targets.reshape(-1)
        true = true.long() if integer else (true > 0.5).long()
        return pred, true, 2, integer
    c = outputs.shape[-1]
    pred = outputs.argmax(-1).reshape(-1)
    if targets.shape == outputs.shape:  # one-hot or probabilities
        return pred, targets.argmax(-1).reshape(-1), c, False
    lead = outputs.shape[:-1]
    if targets.shape == lead or (targets.shape[:-1] == lead and targets.shape[-1] == 1):
        return pred, targets.reshape(-1).long(), c, True
    raise ShapeError(
        f"{name}: outputs {_shape(outputs)} and targets {_shape(targets)} do not fit; targets "
        f"must be class indices of shape {tuple(lead)} or one-hot of shape {_shape(outputs)}"
    )


def _check_class_targets(name: str, outputs: Tensor, targets: Tensor) -> None:
    """Refuse float targets with fractions where class labels are expected: regression
    values would be thresholded or truncated into classes and score nonsense (1.0 often).

    One-hot or soft targets of the outputs' shape with a class axis are distributions, fine.
    Reads one value from the device: call it on the first batch only.
    """
    if not targets.is_floating_point():
        return
    if targets.shape == outputs.shape and outputs.dim() > 1 and outputs.shape[-1] > 1:
        return
    t = targets.detach()
    fractional = t != t.round()
    if bool(fractional.any()):
        example = float(t[fractional].reshape(-1)[0])
        raise DataError(
            f"metric '{name}' needs class labels but the targets hold fractions (e.g. "
            f"{example:g}), i.e. regression values; use metrics mse, mae or r2 for regression "
            "targets"
        )


def _regression_pair(name: str, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Outputs and targets as (N, D) in the accumulator dtype; (B, 1) vs (B,) is fine."""
    outputs = outputs.detach()
    if outputs.dim() == 0 or targets.dim() == 0 or outputs.shape[0] != targets.shape[0]:
        raise ShapeError(
            f"{name}: outputs {_shape(outputs)} and targets {_shape(targets)} have different "
            "batch sizes; pass one target per sample"
        )
    if targets.shape != outputs.shape and targets.numel() != outputs.numel():
        raise ShapeError(
            f"{name}: outputs {_shape(outputs)} and targets {_shape(targets)} do not have the "
            "same number of values; give one target per output value"
        )
    d = outputs.shape[-1] if outputs.dim() > 1 else 1
    dtype = _acc_dtype(outputs.device)
    return outputs.reshape(-1, d).to(dtype), targets.reshape(-1, d).to(dtype)  # (N, D)


class Metric:
    """Base class: `reset`, `update(outputs, targets)` per batch, `compute() -> float`."""

    name: str = "metric"

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated (start of an epoch or evaluation)."""
        raise NotImplementedError

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        """Add one batch. Must not sync with the device (no .item())."""
        raise NotImplementedError

    def compute(self) -> float:
        """The metric over everything since `reset` (NaN when nothing was seen)."""
        raise NotImplementedError

    def state(self) -> list[Tensor] | None:
        """What `update` accumulated, as tensors, so parts of the data seen apart (one per
        rank) can be combined by `merge`; an empty list when nothing was seen. None (this
        default): the metric cannot be combined, and under several ranks the Trainer logs
        rank 0's value. Reads no device value: cheap, but called only at log time."""
        return None

    def load_state(self, state: Sequence[Tensor]) -> None:
        """Replace the accumulated state by `state`, in `state()`'s layout."""
        raise NotImplementedError(f"{type(self).__name__} has no load_state")

    def merge(self, states: Sequence[Sequence[Tensor]]) -> None:
        """Become the metric over all the data that `states` (one `state()` per part, this
        metric's own among them) saw. The default sums the parts element-wise: right for
        states made of counts and sums. Parts that saw nothing (empty lists) are skipped."""
        parts = [list(p) for p in states if len(p)]
        if not parts:
            self.reset()
            return
        self.load_state([_sum_parts([p[i] for p in parts]) for i in range(len(parts[0]))])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
