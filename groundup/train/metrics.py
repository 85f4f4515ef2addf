"""Streaming metrics: `update` per batch (a few tensor ops, no host sync), `compute` at the end.

Outputs given to metrics are the model outputs after its output activation (probabilities
for classifiers, raw values for regression); perplexity takes logits. Integer targets equal
to `ignore_index` (-100: padding, prompt tokens) are skipped, so (B, T, C) LM outputs work.

State lives in tensors on the outputs' device and is read once, in `compute`. Counts known
on the host stay Python ints: building a device tensor from a Python number would sync.

Several ranks: `state()` hands out what `update` accumulated as tensors and `merge(states)`
combines the parts seen by each rank (sums for counts, sums and confusion matrices; R2
re-centres its shifted sums), so the Trainer logs training metrics over all the data with one
collective at epoch end. A metric whose `state()` is None keeps its own rank's value.

The `Metric` base class and the batch-reading functions (`confusion_matrix` among them) are
in `groundup.train.metric_base`; `from groundup.train.metrics import Metric` still works.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from groundup.errors import ConfigError, ShapeError
from groundup.registry import construct, did_you_mean, lookup
from groundup.train import losses  # a module: it has classes named like these (MeanSquaredError)
from groundup.train.metric_base import (
    Metric,
    _acc_dtype,
    _as_tensor,
    _check_class_targets,
    _class_pairs,
    _regression_pair,
    _shape,
    confusion_matrix,
)


class Accuracy(Metric):
    """Share of correct class predictions: argmax for (..., C) outputs, threshold for binary."""

    name = "accuracy"

    def __init__(
        self, threshold: float = 0.5, ignore_index: int | None = -100, name: str | None = None
    ) -> None:
        self.threshold = threshold
        self.ignore_index = ignore_index
        super().__init__(name)

    def reset(self) -> None:
        self._correct: Tensor | int = 0
        self._total: Tensor | int = 0
        self._targets_checked = False

    def _hits(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | int]:
        pred, true, _, integer = _class_pairs(outputs.detach(), targets, self.threshold, self.name)
        hit = pred == true
        if integer and self.ignore_index is not None:
            valid = true != self.ignore_index
            return (hit & valid).sum(), valid.sum()
        return hit.sum(), true.numel()

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        if not self._targets_checked:  # the first batch only: the check reads the device
            _check_class_targets(self.name, outputs, targets)
            self._targets_checked = True
        correct, total = self._hits(outputs, targets)
        self._correct = self._correct + correct
        self._total = self._total + total

    def compute(self) -> float:
        total = float(self._total)
        return float(self._correct) / total if total else math.nan

    def state(self) -> list[Tensor]:
        return [_as_tensor(self._correct), _as_tensor(self._total)]

    def load_state(self, state: Sequence[Tensor]) -> None:
        self._correct, self._total = state[0], state[1]


class TopKAccuracy(Accuracy):
    """Share of samples whose true class is among the k highest outputs."""

    name = "top_k_accuracy"

    def __init__(
        self, k: int = 5, ignore_index: int | None = -100, name: str | None = None
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"top_k_accuracy: k must be a positive int, got {k!r}")
        self.k = k
        super().__init__(ignore_index=ignore_index, name=name)

    def _hits(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | int]:
        outputs = outputs.detach()
        if outputs.dim() < 2 or outputs.shape[-1] < 2:
            raise ShapeError(
                f"{self.name}: outputs {_shape(outputs)} need a class axis (..., C) with C > 1"
            )
        _, true, c, integer = _class_pairs(outputs, targets, self.threshold, self.name)
        k = min(self.k, c)  # torch.topk refuses k > C; every class is then "in the top k"
        top = outputs.topk(k, dim=-1).indices.reshape(-1, k)  # (N, k)
        hit = (top == true.unsqueeze(-1)).any(-1)
        if integer and self.ignore_index is not None:
            valid = true != self.ignore_index
            return (hit & valid).sum(), valid.sum()
        return hit.sum(), true.numel()


_AVERAGES = ("macro", "weighted", "micro", "binary")


class _ConfusionMetric(Metric):
    """Precision, recall or F1 from an accumulated confusion matrix.

    average: 'macro' (unweighted mean over the classes seen in targets or predictions, like
    sklearn with labels=None), 'weighted' (by support), 'micro', or 'binary' (class 1 of two).
    Classes with no predictions or no support score 0 (sklearn's zero_division=0).
    """

    def __init__(
        self,
        average: str = "macro",
        num_classes: int | None = None,
        threshold: float = 0.5,
        name: str | None = None,
    ) -> None:
        if average not in _AVERAGES:
            raise ConfigError(
                f"{self.name}: unknown average '{average}'{did_you_mean(average, _AVERAGES)}; "
                f"valid: {', '.join(_AVERAGES)}"
            )
        self.average = average
        self.num_classes = num_classes
        self.threshold = threshold
        super().__init__(name)

    def reset(self) -> None:
        self._cm: Tensor | None = None

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        if self._cm is None:  # the first batch only: the check reads the device
            _check_class_targets(self.name, outputs, targets)
        pred, true, c, _ = _class_pairs(outputs.detach(), targets, self.threshold, self.name)
        c = self.num_classes or c
        # Labels outside [0, c), ignore_index among them, are skipped by confusion_matrix.
        cm = confusion_matrix(true, pred, c)
        if self._cm is None:
            self._cm = cm
        elif self._cm.shape != cm.shape:
            raise ShapeError(
                f"{self.name}: this batch has {c} classes but earlier ones had "
                f"{self._cm.shape[0]}; outputs must keep the same class axis"
            )
        else:
            self._cm = self._cm + cm

    def state(self) -> list[Tensor]:
        return [] if self._cm is None else [self._cm]

    def load_state(self, state: Sequence[Tensor]) -> None:
        # counts may come back as float64 from a collective: exact below 2**53
        self._cm = state[0].round().long() if len(state) else None

    def _score(self, tp: Tensor, predicted: Tensor, support: Tensor) -> Tensor:
        raise NotImplementedError

    def compute(self) -> float:
        if self._cm is None:
            return math.nan
        cm = self._cm.double().cpu()
        tp, predicted, support = cm.diagonal(), cm.sum(0), cm.sum(1)
        if self.average == "micro":  # single-label: P = R = F1 = accuracy
            total = cm.sum()
            return float(tp.sum() / total) if total else math.nan
        scores = self._score(tp, predicted, support)
        if self.average == "binary":
            if cm.shape[0] != 2:
                raise ConfigError(
                    f"{self.name}: average='binary' needs 2 classes, got {cm.shape[0]}; "
                    "use average='macro'"
                )
            return float(scores[1])
        if self.average == "weighted":
            total = support.sum()
            return float((scores * support).sum() / total) if total else 0.0
        present = (predicted + support) > 0
        return float(scores[present].mean()) if present.any() else 0.0


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


class Precision(_ConfusionMetric):
    """tp / (tp + fp) per class, then averaged (macro by default)."""

    name = "precision"

    def _score(self, tp: Tensor, predicted: Tensor, support: Tensor) -> Tensor:
        return _safe_div(tp, predicted)


class Recall(_ConfusionMetric):
    """tp / (tp + fn) per class, then averaged (macro by default)."""

    name = "recall"

    def _score(self, tp: Tensor, predicted: Tensor, support: Tensor) -> Tensor:
        return _safe_div(tp, support)


class F1(_ConfusionMetric):
    """Per-class F1 = 2tp / (2tp + fp + fn), then averaged (macro by default)."""

    name = "f1"

    def _score(self, tp: Tensor, predicted: Tensor, support: Tensor) -> Tensor:
        return _safe_div(2 * tp, predicted + support)


class MeanSquaredError(Metric):
    """Mean of squared errors over all values (sklearn's uniform average over outputs)."""

    name = "mse"

    def reset(self) -> None:
        self._sum: Tensor | float = 0.0
        self._count = 0

    def _errors(self, outputs: Tensor, targets: Tensor) -> Tensor:
        o, t = _regression_pair(self.name, outputs, targets)
        return (o - t).square()

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        errors = self._errors(outputs, targets)
        self._sum = self._sum + errors.sum()
        self._count += errors.numel()

    def compute(self) -> float:
        return float(self._sum) / self._count if self._count else math.nan

    def state(self) -> list[Tensor]:
        return [_as_tensor(self._sum), _as_tensor(self._count)]

    def load_state(self, state: Sequence[Tensor]) -> None:
        self._sum, self._count = state[0], int(round(float(state[1])))


class MeanAbsoluteError(MeanSquaredError):
    """Mean of absolute errors over all values."""

    name = "mae"

    def _errors(self, outputs: Tensor, targets: Tensor) -> Tensor:
        o, t = _regression_pair(self.name, outputs, targets)
        return (o - t).abs()


class R2Score(Metric):
    """Coefficient of determination per output, averaged uniformly (sklearn's default).

    Sums are of targets shifted by the first batch's first row: the variance then comes from
    small numbers (no cancellation for targets far from 0), and constant targets give exactly
    0 total variance, scored like sklearn (1 if predicted exactly, else 0).
    """

    name = "r2"

    def reset(self) -> None:
        self._shift: Tensor | None = None
        self._n = 0
        self._sum = self._sum_sq = self._sse = None

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        o, t = _regression_pair(self.name, outputs, targets)
        if self._shift is not None and self._shift.shape[-1] != t.shape[-1]:
            raise ShapeError(
                f"{self.name}: this batch has {t.shape[-1]} outputs but earlier ones had "
                f"{self._shift.shape[-1]}"
            )
        if self._shift is None:
            self._shift = t[0].clone()  # (D,)
            self._sum = self._sum_sq = self._sse = 0.0
        shifted = t - self._shift
        self._n += t.shape[0]
        self._sum = self._sum + shifted.sum(0)
        self._sum_sq = self._sum_sq + shifted.square().sum(0)
        self._sse = self._sse + (t - o).square().sum(0)

    def compute(self) -> float:
        if self._n < 2:
            return math.nan
        total = (self._sum_sq - self._sum.square() / self._n).double().cpu().clamp(min=0)
        sse = self._sse.double().cpu()
        r2 = torch.where(total > 0, 1 - sse / total.clamp(min=1e-300), (sse == 0).double())
        return float(r2.mean())

    def state(self) -> list[Tensor]:
        if self._shift is None:
            return []
        n = _as_tensor(self._n)
        return [self._shift, n, self._sum, self._sum_sq, self._sse]

    def load_state(self, state: Sequence[Tensor]) -> None:
        if not len(state):
            self.reset()
            return
        shift, n, self._sum, self._sum_sq, self._sse = state
        self._shift, self._n = shift, int(round(float(n)))

    def merge(self, states: Sequence[Sequence[Tensor]]) -> None:
        """Not a plain sum: each part's sums are of targets minus its own shift (its first
        target). They are moved to the first part's shift c before adding, with d = s - c:
        sum(t - c) = S1 + n d and sum((t - c)^2) = S2 + 2 d S1 + n d^2. d is a difference of
        two targets of the same data, so nothing large cancels."""
        parts = [list(p) for p in states if len(p)]
        if not parts:
            self.reset()
            return
        shift = parts[0][0]
        n, s1, s2, sse = 0, 0.0, 0.0, 0.0
        for p_shift, p_n, p_sum, p_sum_sq, p_sse in parts:
            d = p_shift.to(shift) - shift  # (D,)
            k = float(p_n)
            p_sum = p_sum.to(shift)
            s1 = s1 + p_sum + k * d
            s2 = s2 + p_sum_sq.to(shift) + 2 * d * p_sum + k * d.square()
            sse = sse + p_sse.to(shift)
            n += int(round(k))
        self.load_state([shift, torch.tensor(float(n), dtype=torch.float64), s1, s2, sse])


class Perplexity(Metric):
    """exp(mean token cross-entropy) from logits (B, T, V) or (B, V) and integer targets."""

    name = "perplexity"

    def __init__(self, ignore_index: int | None = -100, name: str | None = None) -> None:
        self.ignore_index = ignore_index
        super().__init__(name)

    def reset(self) -> None:
        self._nll: Tensor | float = 0.0
        self._count: Tensor | int = 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        outputs = outputs.detach()
        if outputs.dim() < 2 or targets.shape != outputs.shape[:-1]:
            raise ShapeError(
                f"{self.name}: logits {_shape(outputs)} and targets {_shape(targets)} do not "
                f"fit; targets must be token ids of shape {tuple(outputs.shape[:-1])}"
            )
        v = outputs.shape[-1]
        flat_t = targets.reshape(-1).long()
        ignore = -100 if self.ignore_index is None else self.ignore_index
        nll = F.cross_entropy(outputs.reshape(-1, v), flat_t, ignore_index=ignore, reduction="sum")
        self._nll = self._nll + nll.to(_acc_dtype(outputs.device))
        if self.ignore_index is None:
            self._count = self._count + flat_t.numel()
        else:
            self._count = self._count + (flat_t != ignore).sum()

    def compute(self) -> float:
        count = float(self._count)
        if not count:
            return math.nan
        try:
            return math.exp(float(self._nll) / count)
        except OverflowError:
            return math.inf

    def state(self) -> list[Tensor]:
        return [_as_tensor(self._nll), _as_tensor(self._count)]

    def load_state(self, state: Sequence[Tensor]) -> None:
        self._nll, self._count = state[0], state[1]


class FunctionMetric(Metric):
    """A plain `f(outputs, targets) -> tensor` averaged over samples (per-batch value weighted
    by batch size; a per-sample tensor is averaged first, as Keras does)."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Any], name: str | None = None) -> None:
        self.fn = fn
        super().__init__(name or getattr(fn, "__name__", type(fn).__name__))

    def reset(self) -> None:
        self._sum: Tensor | float = 0.0
        self._count = 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        value = self.fn(outputs.detach(), targets)
        n = targets.shape[0]
        if isinstance(value, Tensor):
            value = value.detach().to(_acc_dtype(value.device)).mean()
        self._sum = self._sum + value * n
        self._count += n

    def compute(self) -> float:
        return float(self._sum) / self._count if self._count else math.nan

    # a batch-size-weighted sum and a sample count: combined by summing, like MSE
    def state(self) -> list[Tensor]:
        return [_as_tensor(self._sum), _as_tensor(self._count)]

    def load_state(self, state: Sequence[Tensor]) -> None:
        self._sum, self._count = state[0], int(round(float(state[1])))


METRICS: dict[str, type[Metric]] = {
    "accuracy": Accuracy,
    "acc": Accuracy,
    "binary_accuracy": Accuracy,
    "categorical_accuracy": Accuracy,
    "sparse_categorical_accuracy": Accuracy,
    "top_k_accuracy": TopKAccuracy,
    "top_k_categorical_accuracy": TopKAccuracy,
    "sparse_top_k_categorical_accuracy": TopKAccuracy,
    "precision": Precision,
    "recall": Recall,
    "f1": F1,
    "f1_score": F1,
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
    "r2": R2Score,
    "r2_score": R2Score,
    "perplexity": Perplexity,
}


def get_metric(
    spec: str | Metric | type[Metric] | Callable[[Tensor, Tensor], Any], **kwargs: Any
) -> Metric:
    """A Metric from a name ('accuracy', 'f1', 'r2', ...), a Metric, a Metric class or a plain
    callable `f(outputs, targets) -> tensor`. A name keeps the spelling it was asked by
    ('acc' logs as 'acc', like Keras) unless `name=` is given."""
    if isinstance(spec, Metric):
        if kwargs:
            raise ConfigError(
                f"metric arguments {', '.join(sorted(kwargs))} apply to a metric name only; "
                f"set them on the {type(spec).__name__} you passed"
            )
        return spec
    if isinstance(spec, str):
        cls = lookup(METRICS, spec, "metric")
        kwargs.setdefault("name", spec.lower())
        return construct(cls, kwargs, f"metric '{spec}'")
    if isinstance(spec, type):
        if issubclass(spec, Metric):
            return construct(spec, kwargs, f"metric {spec.__name__}")
        raise ConfigError(
            f"metric {spec.__name__} is a class; pass an instance, e.g. {spec.__name__}()"
        )
    if callable(spec):
        return construct(FunctionMetric, {"fn": spec, **kwargs}, "a callable metric")
    raise ConfigError(
        "metric must be a name (e.g. 'accuracy'), a groundup Metric or a callable "
        f"f(outputs, targets), got {type(spec).__name__}"
    )


def check_metrics_fit_loss(loss: Any, metrics: Sequence[Any]) -> None:
    """Refuse a class metric (accuracy, top_k_accuracy, precision, recall, f1) with a
    regression loss (mse, mae, huber): the targets are values, not classes, and accuracy on
    them scores nonsense (often 1.0). `loss` is a name or a Loss, `metrics` names or Metrics;
    the Trainer calls this before any training work."""
    if isinstance(loss, str):
        loss = losses.get_loss(loss)
    regression = (losses.MeanSquaredError, losses.MeanAbsoluteError, losses.Huber)
    if not isinstance(loss, regression):
        return
    for spec in metrics:
        metric = spec if isinstance(spec, Metric) else get_metric(spec)
        if isinstance(metric, (Accuracy, _ConfusionMetric)):
            raise ConfigError(
                f"metric '{metric.name}' scores class labels but loss '{loss.name}' is a "
                "regression loss; use metrics mse, mae or r2 for regression targets (or a "
                "classification loss such as sparse_categorical_crossentropy)"
            )
