"""Losses with Keras semantics, split into `sum` and `count` so accumulation is exact.

The trainer calls `loss(outputs, targets)` (the mean) on a plain step. With gradient
accumulation or several ranks it adds `loss.sum(...)` over micro-batches and divides by the
sum of `loss.count(...)`: k micro-batches of b then give exactly one batch of k*b, also when
some tokens are masked (docs/architecture.md: the loss is divided by the global item count). Both paths compute the same math.

`weight` is an optional per-sample weight of shape (B,): it scales each sample's loss, and
the mean still divides by the unweighted count (Keras "sum_over_batch_size").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from groundup.errors import ConfigError, ShapeError
from groundup.registry import construct, lookup

# Keras' backend epsilon: probabilities are clamped to [EPSILON, 1 - EPSILON] before a log.
EPSILON = 1e-7


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def _float_dtype(t: Tensor) -> torch.dtype:
    """float32 unless the tensor is already float32/float64: clamping 1 - 1e-7 in bf16 gives 1."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _check_batch(name: str, outputs: Tensor, targets: Tensor) -> None:
    if outputs.dim() == 0 or targets.dim() == 0 or outputs.shape[0] != targets.shape[0]:
        raise ShapeError(
            f"{name}: outputs {_shape(outputs)} and targets {_shape(targets)} have different "
            "batch sizes; pass one target per sample"
        )


def _aligned(name: str, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise losses: targets reshaped like outputs, both in a float dtype.

    A (B, 1) output against (B,) targets would silently broadcast to (B, B) in torch: the
    classic regression bug. Same element count means the same values, so reshape instead.
    """
    _check_batch(name, outputs, targets)
    if targets.shape != outputs.shape:
        if targets.numel() != outputs.numel():
            raise ShapeError(
                f"{name}: outputs {_shape(outputs)} and targets {_shape(targets)} do not have "
                "the same number of values; give one target per output value"
            )
        targets = targets.reshape(outputs.shape)
    dtype = _float_dtype(outputs)
    return outputs.to(dtype), targets.to(dtype)


def _weighted_sum(name: str, per_item: Tensor, weight: Tensor | None) -> Tensor:
    """Sum of per-item losses (B, ...), each sample's items scaled by weight[b]."""
    if weight is None:
        return per_item.sum()
    if not isinstance(weight, Tensor):
        weight = torch.as_tensor(weight, device=per_item.device)
    if weight.dim() != 1 or weight.shape[0] != per_item.shape[0]:
        raise ShapeError(
            f"{name}: sample weight {_shape(weight)} does not fit a batch of "
            f"{per_item.shape[0]}; pass one weight per sample, shape ({per_item.shape[0]},)"
        )
    w = weight.to(per_item.dtype).view(-1, *([1] * (per_item.dim() - 1)))  # (B, 1, ...)
    return (per_item * w).sum()


def _probs_to_log(outputs: Tensor) -> Tensor:
    """Keras from-probabilities: renormalize over the last axis, clamp, then log."""
    p = outputs.to(_float_dtype(outputs))
    p = p / p.sum(-1, keepdim=True)
    return p.clamp(EPSILON, 1.0 - EPSILON).log()


def _check_smoothing(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{name}: label_smoothing must be a number in [0, 1], got {value!r}")
    return float(value)


class Loss:
    """Base class. Subclasses implement `sum` and `count`; `__call__` is their ratio.

    Override `__call__` with a fused torch call where that is faster, keeping the same math.
    """

    name: str = "loss"
    from_logits: bool = False
    # The output activation this loss can absorb: Sequential trains on the logits with
    # `loss.with_logits()` when the last layer is this activation (stable log-softmax).
    expects_activation: str | None = None

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        """Sum of the (weighted) losses over exactly the items `count` counts (0-dim)."""
        raise NotImplementedError

    def count(self, targets: Tensor) -> int | Tensor:
        """Number of items the mean divides by (a tensor when it depends on values)."""
        return targets.shape[0]

    def __call__(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return self.sum(outputs, targets, weight) / self.count(targets)

    def probabilities(self) -> Callable[[Tensor], Tensor] | None:
        """What turns the outputs this loss reads into what metrics read (None: as they are;
        a class's argmax is the same on logits). A binary CE on logits: the sigmoid, so a
        threshold of 0.5 means what it says."""
        return None

    def with_logits(self) -> Loss:
        """A copy that takes logits instead of probabilities (for a fused, stable CE)."""
        if self.expects_activation is None:
            raise ConfigError(
                f"loss '{self.name}' has no from-logits form; only cross-entropies do"
            )
        new = copy.copy(self)
        new.from_logits = True
        return new

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class MeanSquaredError(Loss):
    """Mean of (outputs - targets)**2 over all elements."""

    name = "mean_squared_error"

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        outputs, targets = _aligned(self.name, outputs, targets)
        if weight is None:
            return F.mse_loss(outputs, targets, reduction="sum")
        return _weighted_sum(self.name, F.mse_loss(outputs, targets, reduction="none"), weight)

    def count(self, targets: Tensor) -> int:
        return targets.numel()

    def __call__(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is not None:
            return super().__call__(outputs, targets, weight)
        return F.mse_loss(*_aligned(self.name, outputs, targets))


class MeanAbsoluteError(Loss):
    """Mean of |outputs - targets| over all elements."""

    name = "mean_absolute_error"

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        outputs, targets = _aligned(self.name, outputs, targets)
        if weight is None:
            return F.l1_loss(outputs, targets, reduction="sum")
        return _weighted_sum(self.name, F.l1_loss(outputs, targets, reduction="none"), weight)

    def count(self, targets: Tensor) -> int:
        return targets.numel()

    def __call__(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is not None:
            return super().__call__(outputs, targets, weight)
        return F.l1_loss(*_aligned(self.name, outputs, targets))


class Huber(Loss):
    """0.5*x**2 where |x| <= delta, else delta*(|x| - 0.5*delta); mean over all elements."""

    name = "huber"

    def __init__(self, delta: float = 1.0) -> None:
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta > 0:
            raise ConfigError(f"huber: delta must be a positive number, got {delta!r}")
        self.delta = float(delta)

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        outputs, targets = _aligned(self.name, outputs, targets)
        if weight is None:
            return F.huber_loss(outputs, targets, reduction="sum", delta=self.delta)
        per_item = F.huber_loss(outputs, targets, reduction="none", delta=self.delta)
        return _weighted_sum(self.name, per_item, weight)

    def count(self, targets: Tensor) -> int:
        return targets.numel()

    def __call__(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is not None:
            return super().__call__(outputs, targets, weight)
        return F.huber_loss(*_aligned(self.name, outputs, targets), delta=self.delta)


class BinaryCrossentropy(Loss):
    """Binary (or multi-label) CE; outputs (B,), (B, 1) or (B, L), targets 0/1 of the same size.

    Label smoothing moves targets toward 0.5: t * (1 - s) + 0.5 * s (Keras).
    """

    name = "binary_crossentropy"
    expects_activation = "sigmoid"

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0) -> None:
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_smoothing(self.name, label_smoothing)

    def probabilities(self) -> Callable[[Tensor], Tensor] | None:
        return torch.sigmoid if self.from_logits else None

    def _prepare(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        outputs, targets = _aligned(self.name, outputs, targets)
        s = self.label_smoothing
        if s:
            targets = targets * (1.0 - s) + 0.5 * s
        return outputs, targets

    def _per_item(self, outputs: Tensor, targets: Tensor) -> Tensor:
        outputs, targets = self._prepare(outputs, targets)
        if self.from_logits:
            return F.binary_cross_entropy_with_logits(outputs, targets, reduction="none")
        # By hand: F.binary_cross_entropy is refused under CUDA autocast.
        p = outputs.clamp(EPSILON, 1.0 - EPSILON)
        return -(targets * p.log() + (1.0 - targets) * torch.log1p(-p))

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is None and self.from_logits:
            o, t = self._prepare(outputs, targets)
            return F.binary_cross_entropy_with_logits(o, t, reduction="sum")
        return _weighted_sum(self.name, self._per_item(outputs, targets), weight)

    def count(self, targets: Tensor) -> int:
        return targets.numel()

    def __call__(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is None and self.from_logits:
            return F.binary_cross_entropy_with_logits(*self._prepare(outputs, targets))
        return super().__call__(outputs, targets, weight)


class CategoricalCrossentropy(Loss):
    """CE against one-hot or probability targets of the same shape as outputs (..., C).

    The mean is over samples (every position but the class axis). Label smoothing mixes the
    targets with the uniform distribution: t * (1 - s) + s / C (Keras, and torch's too).
    """

    name = "categorical_crossentropy"
    expects_activation = "softmax"

    def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0) -> None:
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_smoothing(self.name, label_smoothing)

    def _flat(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if targets.shape != outputs.shape:
            hint = (
                "integer class targets need sparse_categorical_crossentropy"
                if targets.shape == outputs.shape[:-1]
                else "targets must be one-hot or probabilities of the same shape as outputs"
            )
            raise ShapeError(
                f"{self.name}: outputs {_shape(outputs)} and targets {_shape(targets)} differ; "
                f"{hint}"
            )
        c = outputs.shape[-1]
        return outputs.reshape(-1, c), targets.reshape(-1, c)  # (N, C), (N, C)

    def _per_item(self, outputs: Tensor, targets: Tensor) -> Tensor:
        lead = targets.shape[:-1]
        outputs, targets = self._flat(outputs, targets)
        s = self.label_smoothing
        if self.from_logits:
            targets = targets.to(outputs.dtype)
            per = F.cross_entropy(outputs, targets, reduction="none", label_smoothing=s)
        else:
            log_p = _probs_to_log(outputs)
            targets = targets.to(log_p.dtype)
            if s:
                targets = targets * (1.0 - s) + s / outputs.shape[-1]
            per = -(targets * log_p).sum(-1)
        return per.view(lead)  # (B, ...)

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is None and self.from_logits:
            o, t = self._flat(outputs, targets)
            t = t.to(o.dtype)
            return F.cross_entropy(o, t, reduction="sum", label_smoothing=self.label_smoothing)
        return _weighted_sum(self.name, self._per_item(outputs, targets), weight)

    def count(self, targets: Tensor) -> int:
        return math.prod(targets.shape[:-1])

    def __call__(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is None and self.from_logits:
            o, t = self._flat(outputs, targets)
            return F.cross_entropy(o, t.to(o.dtype), label_smoothing=self.label_smoothing)
        return super().__call__(outputs, targets, weight)


class SparseCategoricalCrossentropy(Loss):
    """CE against integer class targets: outputs (B, C) with targets (B,), or (B, T, C) with
    (B, T) for language models. Targets equal to `ignore_index` add nothing and are not
    counted, so the mean is over valid tokens.

    Trap: with ignore_index=None, targets of -100 are still skipped by torch's kernel (its
    default) but counted; -100 is not a valid class anyway.
    """

    name = "sparse_categorical_crossentropy"
    expects_activation = "softmax"

    def __init__(
        self,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        ignore_index: int | None = -100,
    ) -> None:
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_smoothing(self.name, label_smoothing)
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
        ):
            raise ConfigError(f"{self.name}: ignore_index must be an int or None")
        self.ignore_index = ignore_index

    def _flat(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if (
            outputs.dim() == 2
            and targets.dim() == 1
            and targets.dtype == torch.long
            and outputs.shape[0] == targets.shape[0]
        ):
            return outputs, targets  # the common case, already flat
        if targets.dim() == outputs.dim() and targets.shape[-1] == 1 and outputs.shape[-1] != 1:
            targets = targets.squeeze(-1)  # Keras accepts (B, 1) class targets
        if outputs.dim() < 2 or targets.shape != outputs.shape[:-1]:
            hint = (
                "one-hot targets need categorical_crossentropy"
                if targets.shape == outputs.shape
                else f"targets must be class indices of shape {tuple(outputs.shape[:-1])}"
            )
            raise ShapeError(
                f"{self.name}: outputs {_shape(outputs)} and targets {_shape(targets)} do not "
                f"fit; {hint}"
            )
        if targets.dtype != torch.long:
            targets = targets.long()
        return outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1)  # (N, C), (N,)

    def _ignore(self) -> int:
        return -100 if self.ignore_index is None else self.ignore_index

    def _per_item(self, outputs: Tensor, targets: Tensor) -> Tensor:
        o, t = self._flat(outputs, targets)
        s, ignore = self.label_smoothing, self._ignore()
        if self.from_logits:
            per = F.cross_entropy(o, t, ignore_index=ignore, reduction="none", label_smoothing=s)
        else:
            log_p = _probs_to_log(o)
            per = F.nll_loss(log_p, t, ignore_index=ignore, reduction="none")
            if s:
                # -sum((1-s)*onehot + s/C) * log p) = (1-s)*nll - s*mean(log p)
                smooth = -log_p.mean(-1)
                if self.ignore_index is not None:
                    smooth = smooth * (t != ignore)
                per = (1.0 - s) * per + s * smooth
        return per.view(outputs.shape[:-1])  # (B,) or (B, T)

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is None and self.from_logits:
            o, t = self._flat(outputs, targets)
            return F.cross_entropy(
                o,
                t,
                ignore_index=self._ignore(),
                reduction="sum",
                label_smoothing=self.label_smoothing,
            )
        return _weighted_sum(self.name, self._per_item(outputs, targets), weight)

    def count(self, targets: Tensor) -> int | Tensor:
        if self.ignore_index is None:
            return targets.numel()
        return (targets != self.ignore_index).sum()  # a tensor: no host sync

    def __call__(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        if weight is None and self.from_logits:
            o, t = self._flat(outputs, targets)
            return F.cross_entropy(
                o, t, ignore_index=self._ignore(), label_smoothing=self.label_smoothing
            )
        return super().__call__(outputs, targets, weight)


class KLDivergence(Loss):
    """KL(targets || outputs) for distributions over the last axis, mean over samples (Keras):
    sum(t * log(t / p)) with t and p clamped to [EPSILON, 1] so that log 0 never happens."""

    name = "kl_divergence"

    def _per_item(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if targets.shape != outputs.shape:
            raise ShapeError(
                f"{self.name}: outputs {_shape(outputs)} and targets {_shape(targets)} differ; "
                "both must be distributions of the same shape"
            )
        dtype = _float_dtype(outputs)
        p = outputs.to(dtype).clamp(EPSILON, 1.0)
        t = targets.to(dtype).clamp(EPSILON, 1.0)
        return (t * (t.log() - p.log())).sum(-1)  # (B, ...)

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        per = self._per_item(outputs, targets)
        if per.dim() == 0:  # 1-D inputs are one distribution
            per = per.unsqueeze(0)
        return _weighted_sum(self.name, per, weight)

    def count(self, targets: Tensor) -> int:
        return math.prod(targets.shape[:-1])


class CallableLoss(Loss):
    """Wraps a plain `f(outputs, targets) -> mean` (a lambda, `torch.nn.CrossEntropyLoss()`).

    Its count is the batch size, so accumulation treats every sample alike; a callable that
    masks tokens should be replaced by a Loss with a real `count`.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def _mean(self, outputs: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
        if weight is not None:
            raise ConfigError(
                f"loss '{self.name}' is a plain callable that returns a mean, so it cannot "
                "apply sample weights; use a named loss such as 'mse'"
            )
        value = self.fn(outputs, targets)
        if not isinstance(value, Tensor) or value.dim() != 0:
            raise ShapeError(
                f"loss '{self.name}' must return a 0-dim tensor (the batch mean), got "
                f"{_shape(value) if isinstance(value, Tensor) else type(value).__name__}"
            )
        return value

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return self._mean(outputs, targets, weight) * targets.shape[0]

    def __call__(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return self._mean(outputs, targets, weight)


LOSSES: dict[str, type[Loss]] = {
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError,
    "mae": MeanAbsoluteError,
    "huber": Huber,
    "binary_crossentropy": BinaryCrossentropy,
    "bce": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "kl_divergence": KLDivergence,
    "kld": KLDivergence,
    "kullback_leibler_divergence": KLDivergence,
}


def get_loss(
    spec: str | Loss | type[Loss] | Callable[[Tensor, Tensor], Tensor],
    *,
    model: Any = None,
    **kwargs: Any,
) -> Loss:
    """A Loss from a name ('mse', 'sparse_categorical_crossentropy', ...), a Loss, a Loss class
    or a plain callable `f(outputs, targets) -> mean tensor`. kwargs go to the named class.

    `model`: the module the loss will train (the Trainer passes it). A cross-entropy given by
    name then takes logits, as `nn.CrossEntropyLoss` does, unless the module's output layer
    applies softmax or sigmoid itself (a `gu.Sequential`: its outputs are probabilities).
    Without a model, names keep Keras' default (probabilities). `from_logits=` in kwargs, a
    Loss instance and a Loss class always keep what they say.
    """
    if isinstance(spec, Loss):
        if kwargs:
            raise ConfigError(
                f"loss arguments {', '.join(sorted(kwargs))} apply to a loss name only; "
                f"set them on the {type(spec).__name__} you passed"
            )
        return spec
    if isinstance(spec, str):
        cls = lookup(LOSSES, spec, "loss")
        if model is not None and cls.expects_activation is not None:
            # a plain module returns logits (PyTorch); a softmax/sigmoid output layer means
            # probabilities (Keras): guessing wrong trains silently on the wrong loss
            output_activation = getattr(model, "output_activation", None)
            kwargs.setdefault("from_logits", output_activation not in ("softmax", "sigmoid"))
        return construct(cls, kwargs, f"loss '{spec}'")
    if isinstance(spec, type):
        if issubclass(spec, Loss):
            return construct(spec, kwargs, f"loss {spec.__name__}")
        raise ConfigError(
            f"loss {spec.__name__} is a class; pass an instance, e.g. {spec.__name__}()"
        )
    if callable(spec):
        if kwargs:
            raise ConfigError(
                f"loss arguments {', '.join(sorted(kwargs))} apply to a loss name only"
            )
        return CallableLoss(spec)
    raise ConfigError(
        "loss must be a name (e.g. 'mse'), a groundup Loss or a callable f(outputs, targets), "
        f"got {type(spec).__name__}"
    )
