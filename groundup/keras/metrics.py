"""`gu.metrics`: the engine's metrics (`groundup.train.metrics`), Keras's metric classes by
their Keras names, and Keras's two ways of writing your own, in Keras's argument order.

- A plain function given to a Keras-API model's `compile(metrics=[fn])` is called
  `fn(y_true, y_pred)` and averaged over every value it returns (`MeanMetricWrapper`).
- A subclass of `gu.metrics.Metric` written as for Keras: state made with
  `self.add_variable(...)` (or `add_weight`), `update_state(self, y_true, y_pred,
  sample_weight=None)`, `result()` and optionally `reset_state()`. It runs in `compile`
  and in `gu.Trainer`; fit never passes a sample weight to metrics.

Subclasses written for the engine (`reset`, `update(outputs, targets)`, `compute`) work as
before. A variable is a tensor holder (`assign`, `assign_add`, `assign_sub`, `.value`) that
arithmetic, torch functions and `gu.ops` read as its tensor.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from groundup.errors import ConfigError
from groundup.keras.losses import is_plain_function, same_rank
from groundup.keras.ops import dtype_of
from groundup.train.losses import EPSILON
from groundup.train.metric_base import _regression_pair
from groundup.train.metrics import (
    F1,
    METRICS,
    Accuracy,
    FunctionMetric,
    Perplexity,
    Precision,
    R2Score,
    Recall,
    TopKAccuracy,
    check_metrics_fit_loss,
    confusion_matrix,
    get_metric,
)
from groundup.train.metrics import MeanAbsoluteError as _EngineMAE
from groundup.train.metrics import MeanSquaredError as _EngineMSE
from groundup.train.metrics import Metric as EngineMetric

__all__ = [
    "F1",
    "METRICS",
    "Accuracy",
    "BinaryAccuracy",
    "CategoricalAccuracy",
    "FunctionMetric",
    "Mean",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanMetricWrapper",
    "MeanSquaredError",
    "Metric",
    "MetricVariable",
    "Perplexity",
    "Precision",
    "R2Score",
    "Recall",
    "RootMeanSquaredError",
    "SparseCategoricalAccuracy",
    "SparseTopKCategoricalAccuracy",
    "Sum",
    "TopKAccuracy",
    "TopKCategoricalAccuracy",
    "check_metrics_fit_loss",
    "confusion_matrix",
    "get_metric",
    "keras_metric",
]


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _unwrap(value: Any) -> Any:
    if isinstance(value, MetricVariable):
        return value.value
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


class MetricVariable:
    """One piece of a metric's state (Keras's metric variable): a tensor that `assign`,
    `assign_add` and `assign_sub` replace. It follows the device of what is added to it."""

    def __init__(self, value: Tensor, name: str) -> None:
        self.value = value
        self.initial = value.clone()
        self.name = name

    def keras_value(self) -> Tensor:
        """The tensor (what `gu.ops` reads)."""
        return self.value

    def _cast(self, other: Any) -> Tensor:
        other = _unwrap(other)
        if isinstance(other, Tensor):
            return other.detach().to(self.value.dtype)
        return torch.as_tensor(other, dtype=self.value.dtype, device=self.value.device)

    def assign(self, value: Any) -> MetricVariable:
        new = self._cast(value)
        self.value = new.expand(self.value.shape).clone() if new.shape != self.value.shape else new
        return self

    def assign_add(self, value: Any) -> MetricVariable:
        other = self._cast(value)
        self.value = self.value.to(other.device) + other
        return self

    def assign_sub(self, value: Any) -> MetricVariable:
        other = self._cast(value)
        self.value = self.value.to(other.device) - other
        return self

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.value.dtype

    def numpy(self) -> Any:
        return self.value.detach().cpu().numpy()

    def __float__(self) -> float:
        return float(self.value)

    def __int__(self) -> int:
        return int(self.value)

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        return f"MetricVariable(name={self.name!r}, value={self.value!r})"

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        return func(*_unwrap(args), **_unwrap(kwargs or {}))

    # arithmetic reads the tensor
    def __add__(self, o: Any) -> Tensor:
        return self.value + _unwrap(o)

    def __radd__(self, o: Any) -> Tensor:
        return _unwrap(o) + self.value

    def __sub__(self, o: Any) -> Tensor:
        return self.value - _unwrap(o)

    def __rsub__(self, o: Any) -> Tensor:
        return _unwrap(o) - self.value

    def __mul__(self, o: Any) -> Tensor:
        return self.value * _unwrap(o)

    def __rmul__(self, o: Any) -> Tensor:
        return _unwrap(o) * self.value

    def __truediv__(self, o: Any) -> Tensor:
        return self.value / _unwrap(o)

    def __rtruediv__(self, o: Any) -> Tensor:
        return _unwrap(o) / self.value

    def __pow__(self, o: Any) -> Tensor:
        return self.value ** _unwrap(o)

    def __neg__(self) -> Tensor:
        return -self.value

    def __getitem__(self, index: Any) -> Tensor:
        return self.value[index]


def _initial_value(initializer: Any, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    if initializer is None or initializer == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if initializer == "ones":
        return torch.ones(shape, dtype=dtype)
    if isinstance(initializer, (int, float)) and not isinstance(initializer, bool):
        return torch.full(shape, float(initializer), dtype=dtype)
    if callable(initializer):
        value = initializer(shape, dtype=dtype) if _takes_dtype(initializer) else initializer(shape)
        return torch.as_tensor(_unwrap(value), dtype=dtype).reshape(shape).clone()
    raise ConfigError(
        f"metric variable initializer {initializer!r} is not supported; use 'zeros', 'ones', "
        "a number or a function of the shape"
    )


def _takes_dtype(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "dtype" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class Metric(EngineMetric):
    """Keras's metric base. A subclass makes its state with `add_variable` and defines
    `update_state(y_true, y_pred, sample_weight=None)` and `result()`; `reset_state()`
    (the start of each epoch and evaluation) sets every variable back to its initial value
    unless the subclass says otherwise."""

    def __init__(self, name: str | None = None, dtype: Any = None) -> None:
        self.name = name or _snake(type(self).__name__)
        self.dtype = dtype_of(dtype or "float32")
        self._variables: list[MetricVariable] = []
        if type(self).reset is not Metric.reset:  # written for the engine: it resets itself
            self.reset()

    # ---------------------------------------------------------------- Keras's side
    def add_variable(
        self,
        shape: Any = (),
        initializer: Any = "zeros",
        dtype: Any = None,
        aggregation: str = "sum",
        name: str | None = None,
    ) -> MetricVariable:
        """A state variable of `shape`, set to `initializer` ('zeros', 'ones', a number)."""
        dims = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        torch_dtype = dtype_of(dtype) if dtype is not None else self.dtype
        variable = MetricVariable(
            _initial_value(initializer, dims, torch_dtype),
            name or f"variable_{len(self._variables)}",
        )
        self._variables.append(variable)
        return variable

    def add_weight(
        self,
        shape: Any = (),
        initializer: Any = "zeros",
        dtype: Any = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> MetricVariable:
        """Keras's older spelling of `add_variable`."""
        return self.add_variable(shape, initializer, dtype, name=name)

    @property
    def variables(self) -> list[MetricVariable]:
        return list(self._variables)

    def reset_state(self) -> None:
        for variable in self._variables:
            variable.value = variable.initial.clone()

    def update_state(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must define update_state(self, y_true, y_pred, "
            "sample_weight=None) (Keras) or update(outputs, targets) (the engine)"
        )

    def result(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define result()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.update_state(*args, **kwargs)
        return self.result()

    # ---------------------------------------------------------------- the engine's side
    def reset(self) -> None:
        self.reset_state()

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        self.update_state(targets, outputs.detach())

    def compute(self) -> float:
        value = _unwrap(self.result())
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ConfigError(
                    f"metric '{self.name}': result() returned shape {tuple(value.shape)}; "
                    "it must return one number"
                )
            return float(value.detach().reshape(()))
        return float(value)


class Mean(Metric):
    """The (weighted) mean of every value given to `update_state(values, sample_weight)`."""

    def __init__(self, name: str = "mean", dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable((), "zeros", dtype="float64", name="total")
        self.count = self.add_variable((), "zeros", dtype="float64", name="count")

    def update_state(self, values: Any, sample_weight: Any = None) -> None:
        v = torch.as_tensor(_unwrap(values)).detach().double()
        if sample_weight is None:
            self.total.assign_add(v.sum())
            self.count.assign_add(float(v.numel()))
            return
        w = torch.as_tensor(_unwrap(sample_weight)).detach().double().to(v.device)
        w, v = same_rank(w, v)
        w = torch.broadcast_to(w, v.shape)
        self.total.assign_add((v * w).sum())
        self.count.assign_add(w.sum())

    def result(self) -> Tensor:
        count = float(self.count)
        return self.total.value / count if count else torch.tensor(math.nan)


class Sum(Metric):
    """The (weighted) sum of every value given to `update_state(values, sample_weight)`."""

    def __init__(self, name: str = "sum", dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable((), "zeros", dtype="float64", name="total")

    def update_state(self, values: Any, sample_weight: Any = None) -> None:
        v = torch.as_tensor(_unwrap(values)).detach().double()
        if sample_weight is not None:
            w = torch.as_tensor(_unwrap(sample_weight)).detach().double().to(v.device)
            w, v = same_rank(w, v)
            v = v * w
        self.total.assign_add(v.sum())

    def result(self) -> Tensor:
        return self.total.value


class MeanMetricWrapper(Mean):
    """A function `fn(y_true, y_pred, **kwargs)` averaged over every value it returns
    (what compile makes of a plain metric function; y_true brought to y_pred's rank)."""

    def __init__(
        self, fn: Callable[..., Any], name: str | None = None, dtype: Any = None, **kwargs: Any
    ) -> None:
        fn_name = getattr(fn, "__name__", type(fn).__name__)
        super().__init__(name=name or ("metric" if fn_name == "<lambda>" else fn_name), dtype=dtype)
        self.fn = fn
        self.fn_kwargs = kwargs

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        t, p = torch.as_tensor(_unwrap(y_true)), torch.as_tensor(_unwrap(y_pred))
        t, p = same_rank(t.to(p.device), p)
        values = torch.as_tensor(_unwrap(self.fn(t, p, **self.fn_kwargs)))
        super().update_state(
            values.float() if values.dtype == torch.bool else values, sample_weight
        )


# ---------------------------------------------------------------- Keras's metric classes
class BinaryAccuracy(Accuracy):
    """Share of samples whose probability is on the right side of `threshold`."""

    def __init__(
        self, name: str = "binary_accuracy", dtype: Any = None, threshold: float = 0.5
    ) -> None:
        super().__init__(threshold=threshold, name=name)


class CategoricalAccuracy(Accuracy):
    """Share of samples whose highest output is the one-hot target's class."""

    def __init__(self, name: str = "categorical_accuracy", dtype: Any = None) -> None:
        super().__init__(name=name)


class SparseCategoricalAccuracy(Accuracy):
    """Share of samples whose highest output is the integer target."""

    def __init__(self, name: str = "sparse_categorical_accuracy", dtype: Any = None) -> None:
        super().__init__(name=name)


class TopKCategoricalAccuracy(TopKAccuracy):
    """Share of samples whose one-hot target's class is among the k highest outputs."""

    def __init__(
        self, k: int = 5, name: str = "top_k_categorical_accuracy", dtype: Any = None
    ) -> None:
        super().__init__(k=k, name=name)


class SparseTopKCategoricalAccuracy(TopKAccuracy):
    """Share of samples whose integer target is among the k highest outputs."""

    def __init__(
        self, k: int = 5, name: str = "sparse_top_k_categorical_accuracy", dtype: Any = None
    ) -> None:
        super().__init__(k=k, name=name)


class MeanSquaredError(_EngineMSE):
    """Mean of squared errors over all values."""

    def __init__(self, name: str = "mean_squared_error", dtype: Any = None) -> None:
        super().__init__(name=name)


class MeanAbsoluteError(_EngineMAE):
    """Mean of absolute errors over all values."""

    def __init__(self, name: str = "mean_absolute_error", dtype: Any = None) -> None:
        super().__init__(name=name)


class MeanAbsolutePercentageError(_EngineMSE):
    """100 * mean(|y_true - y_pred| / |y_true|), |y_true| floored at 1e-7 (Keras's epsilon)."""

    def __init__(self, name: str = "mean_absolute_percentage_error", dtype: Any = None) -> None:
        super().__init__(name=name)

    def _errors(self, outputs: Tensor, targets: Tensor) -> Tensor:
        o, t = _regression_pair(self.name, outputs, targets)
        return 100.0 * (o - t).abs() / t.abs().clamp(min=EPSILON)


class RootMeanSquaredError(_EngineMSE):
    """Square root of the mean squared error over all values."""

    def __init__(self, name: str = "root_mean_squared_error", dtype: Any = None) -> None:
        super().__init__(name=name)

    def compute(self) -> float:
        return math.sqrt(super().compute())


def keras_metric(spec: Any) -> EngineMetric:
    """What a Keras-API model's `compile(metrics=[spec])` measures with: a plain function in
    Keras's order, anything else as `gu.metrics.get_metric` reads it."""
    if is_plain_function(spec):
        return MeanMetricWrapper(spec)
    return get_metric(spec)
