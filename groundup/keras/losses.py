"""`gu.losses`: the engine's losses (`groundup.train.losses`) and Keras's two ways of writing
your own, in Keras's argument order.

- A plain function given to a Keras-API model's `compile(loss=fn)` is called as Keras calls
  it, `fn(y_true, y_pred)`, and returns one value per sample (or per sample and step); the
  values are averaged over the batch, each sample scaled by its `sample_weight`
  ("sum_over_batch_size").
- A subclass of `gu.losses.Loss` that defines `call(self, y_true, y_pred)` (Keras's
  `keras.losses.Loss`) is reduced the same way, in `compile` and in `gu.Trainer` alike.

The engine keeps its own order: a loss object called by hand, and a callable given to
`gu.Trainer`, take `(outputs, targets)`. A torch module (`torch.nn.MSELoss()`) given to
`compile` keeps torch's `(input, target)` order as well.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from groundup.errors import ConfigError, ShapeError
from groundup.train.losses import (
    EPSILON,
    LOSSES,
    BinaryCrossentropy,
    CallableLoss,
    CategoricalCrossentropy,
    Huber,
    KLDivergence,
    MeanAbsoluteError,
    MeanSquaredError,
    SparseCategoricalCrossentropy,
    get_loss,
)
from groundup.train.losses import Loss as EngineLoss

__all__ = [
    "EPSILON",
    "LOSSES",
    "BinaryCrossentropy",
    "CallableLoss",
    "CategoricalCrossentropy",
    "FunctionLoss",
    "Huber",
    "KLDivergence",
    "Loss",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "SparseCategoricalCrossentropy",
    "get_loss",
    "keras_loss",
    "same_rank",
]

_REDUCTIONS = ("sum_over_batch_size", "mean")


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def same_rank(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Keras's rule for y_true against y_pred: when the ranks differ by one and the longer
    has a last axis of 1, expand a rank-1 partner or squeeze that axis, so (B,) against
    (B, 1) compares sample to sample instead of broadcasting to (B, B)."""
    if a.dim() == b.dim() + 1 and a.shape[-1] == 1:
        return (a, b.unsqueeze(-1)) if b.dim() == 1 else (a.squeeze(-1), b)
    if b.dim() == a.dim() + 1 and b.shape[-1] == 1:
        return (a.unsqueeze(-1), b) if a.dim() == 1 else (a, b.squeeze(-1))
    return a, b


def _as_float(x: Any, like: Tensor | None = None) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    if like is not None:
        t = t.to(like.device)
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def weighted_total(name: str, values: Any, batch: int, weight: Tensor | None) -> Tensor:
    """The sum over the batch of each sample's mean value, times its weight: with `batch` as
    the count, Keras's "sum_over_batch_size" (the mean over every value) for a loss that
    returns (B,), (B, T, ...) or one number."""
    if not isinstance(values, Tensor):
        values = torch.as_tensor(values, dtype=torch.float32)
    if values.dim() == 0:
        values = values.expand(batch)
    elif values.shape[0] != batch:
        raise ShapeError(
            f"loss '{name}' returned shape {tuple(values.shape)} for a batch of {batch}; "
            "return one value per sample, shape (batch,) (e.g. ops.mean(..., axis=-1))"
        )
    per_sample = values.reshape(batch, -1).mean(-1)  # (B,)
    if per_sample.dtype not in (torch.float32, torch.float64):
        per_sample = per_sample.float()
    if weight is None:
        return per_sample.sum()
    if weight.dim() != 1 or weight.shape[0] != batch:
        raise ShapeError(
            f"loss '{name}': sample weight {tuple(weight.shape)} does not fit a batch of "
            f"{batch}; pass one weight per sample"
        )
    return (per_sample * weight.to(per_sample)).sum()


class Loss(EngineLoss):
    """Keras's loss base: a subclass defines `call(self, y_true, y_pred)` returning one value
    per sample, and the mean over the batch (with sample weights) is the loss.

    Subclasses written for the engine (defining `sum` and `count`) work as before.
    `reduction` is Keras's argument; groundup averages over the batch
    ("sum_over_batch_size", also spelled "mean"), the one reduction that stays exact under
    gradient accumulation."""

    def __init__(
        self, name: str | None = None, reduction: str = "sum_over_batch_size", dtype: Any = None
    ) -> None:
        if reduction not in _REDUCTIONS:
            raise ConfigError(
                f"{type(self).__name__}: reduction {reduction!r} is not supported; groundup "
                "losses average over the batch (reduction='sum_over_batch_size')"
            )
        self.name = name or _snake(type(self).__name__)
        self.reduction = reduction
        self.dtype = dtype

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """One loss value per sample (B,) or per sample and step (B, T, ...)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define call(self, y_true, y_pred) (Keras) or "
            "sum/count (the engine)"
        )

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        y_pred = _as_float(outputs)
        y_true = _as_float(targets, y_pred)
        return weighted_total(self.name, self.call(y_true, y_pred), targets.shape[0], weight)

    def count(self, targets: Tensor) -> int:
        return targets.shape[0]

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "reduction": self.reduction}


class FunctionLoss(EngineLoss):
    """A plain `fn(y_true, y_pred)` in Keras's order (what compile makes of a function);
    y_true and y_pred are first brought to the same rank as Keras does ((B,) vs (B, 1))."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Any]) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)
        if self.name == "<lambda>":
            self.name = "loss"

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        y_pred = _as_float(outputs)
        y_true, y_pred = same_rank(_as_float(targets, y_pred), y_pred)
        return weighted_total(self.name, self.fn(y_true, y_pred), targets.shape[0], weight)

    def count(self, targets: Tensor) -> int:
        return targets.shape[0]


def is_plain_function(spec: Any) -> bool:
    """A callable that is not a loss object, a class or a torch module: Keras's custom loss
    (or metric) function, called `fn(y_true, y_pred)`."""
    return (
        callable(spec)
        and not isinstance(spec, (EngineLoss, nn.Module, type))
        and not hasattr(spec, "update_state")
    )


def keras_loss(spec: Any) -> EngineLoss:
    """What a Keras-API model's `compile(loss=spec)` trains with: a plain function in Keras's
    order, anything else as `gu.losses.get_loss` reads it (a name, a Loss, a torch module)."""
    if is_plain_function(spec):
        return FunctionLoss(spec)
    return get_loss(spec)
