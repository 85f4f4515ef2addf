"""Normalization: (x - mean) / sqrt(variance) per feature, from given statistics or `adapt`.

    norm = gu.layers.Normalization()        # axis=-1: one mean and variance per feature
    norm.adapt(x_train)                     # before training; the statistics are saved
    model = gu.Sequential([norm, gu.layers.Dense(1)])

Learned statistics are buffers, not parameters (training leaves them alone), and count as
Keras counts them (mean, variance and the sample count: 2F + 1 for F features). Statistics
given as `mean=` and `variance=` live in the config instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from groundup.errors import ConfigError, DataError, ShapeError
from groundup.keras.layers.base import Layer, Shape

_EPSILON = 1e-7  # Keras' backend epsilon: the smallest standard deviation divided by


def _axes_arg(axis: Any, who: str) -> tuple[int, ...] | None:
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) and not isinstance(axis, bool) else axis
    ok = isinstance(axes, Sequence) and not isinstance(axes, str)
    if not ok or any(isinstance(a, bool) or not isinstance(a, int) or a == 0 for a in axes):
        raise ConfigError(
            f"{who}: axis must be None, an int or a list of ints (Keras axes: 0 is the batch "
            f"and cannot be kept), got {axis!r}"
        )
    return tuple(axes)


def _stat(value: Any, arg: str, who: str) -> np.ndarray | None:
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{who}: {arg} must be a number or a list of numbers, got {value!r}"
        ) from None
    if not np.isfinite(array).all():
        raise ConfigError(f"{who}: {arg} must be finite, got {value!r}")
    return array


class Normalization(Layer):
    """Feature-wise standardization with Keras' arguments (`axis` counts the batch axis:
    -1 keeps one statistic per last-axis feature, None one for all values)."""

    supports_masking = True
    _repr_keys = ("axis", "invert")

    def __init__(
        self,
        axis: int | Sequence[int] | None = -1,
        mean: Any = None,
        variance: Any = None,
        invert: bool = False,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.axis = _axes_arg(axis, self._who)
        self._mean_arg = _stat(mean, "mean", self._who)
        self._variance_arg = _stat(variance, "variance", self._who)
        if (self._mean_arg is None) != (self._variance_arg is None):
            raise ConfigError(f"{self._who}: give both mean and variance, or neither (adapt)")
        if self._variance_arg is not None and (self._variance_arg < 0).any():
            raise ConfigError(f"{self._who}: variance must be >= 0, got {variance!r}")
        self.invert = bool(invert)
        self._adapted = self._mean_arg is not None
        self._kept: list[int] = []  # kept axes, counting the batch axis
        self._rank = -1

    # ---- shapes ---------------------------------------------------------------------------------

    def _kept_axes(self, input_shape: Sequence[int | None]) -> list[int]:
        rank = len(input_shape) + 1
        if self.axis is None:
            return []
        kept = sorted({a % rank for a in self.axis if -rank <= a < rank})
        if len(kept) != len(self.axis) or 0 in kept:
            raise ShapeError(
                f"{self._who} expects inputs with feature axis {self.axis} (Keras axes count "
                f"the batch), got per-sample shape {tuple(input_shape)}"
            )
        return kept

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        self._kept_axes(input_shape)
        return tuple(input_shape)

    def _build(self, input_shape: Shape) -> None:
        self._rank = len(input_shape) + 1
        self._kept = self._kept_axes(input_shape)
        full = (1, *input_shape)
        sizes = []
        for a in self._kept:
            if full[a] is None:
                raise ShapeError(f"{self._who} needs a known size on kept axis {a} to build")
            sizes.append(full[a])
        shape = tuple(sizes)
        if self._mean_arg is None:  # learned by adapt: saved, and counted as Keras counts
            self.register_buffer("mean", torch.zeros(shape))
            self.register_buffer("variance", torch.ones(shape))
            self.register_buffer("count", torch.zeros((), dtype=torch.int64))
            return
        try:
            mean = np.broadcast_to(self._mean_arg, shape)
            var = np.broadcast_to(self._variance_arg, shape)
        except ValueError:
            raise ShapeError(
                f"{self._who}: mean/variance of shape {self._mean_arg.shape} do not fit the "
                f"kept axes {self._kept} of size {shape}"
            ) from None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("variance", torch.tensor(var, dtype=torch.float32), persistent=False)

    def _broadcast(self, stat: Tensor) -> Tensor:
        """(kept sizes) -> a shape that broadcasts against the full (B, ...) input."""
        shape = [1] * self._rank
        for a, n in zip(self._kept, stat.shape, strict=True):
            shape[a] = n
        return stat.reshape(shape)

    # ---- adapt and call -------------------------------------------------------------------------

    def adapt(self, data: Any) -> None:
        """Set mean and variance from `data`: an array or tensor (N, ...), or an iterable of
        such batches (merged exactly). Starts afresh; the statistics are biased (over N)."""
        if self._mean_arg is not None:
            raise ConfigError(f"{self._who} was given mean and variance; adapt has nothing to do")
        batches = [data] if isinstance(data, (np.ndarray, Tensor, list, tuple)) else data
        if not isinstance(batches, Iterable):
            raise DataError(f"{self._who}.adapt takes an array or batches of them, got {data!r}")
        total, mean, m2 = 0, None, None
        for batch in batches:
            arr = _as_float_array(batch, self._who)
            if not self.built:
                self.build(arr.shape[1:])
            if arr.ndim != self._rank:
                raise ShapeError(
                    f"{self._who} was built for inputs of rank {self._rank}, adapt got {arr.shape}"
                )
            reduce = tuple(a for a in range(arr.ndim) if a not in self._kept)
            n = int(np.prod([arr.shape[a] for a in reduce])) if reduce else 1
            b_mean = arr.mean(axis=reduce)
            b_m2 = ((arr - arr.mean(axis=reduce, keepdims=True)) ** 2).sum(axis=reduce)
            if mean is None:
                total, mean, m2 = n, b_mean, b_m2
            else:  # Chan et al.'s merge of two partial results
                delta = b_mean - mean
                merged = total + n
                mean = mean + delta * n / merged
                m2 = m2 + b_m2 + delta**2 * total * n / merged
                total = merged
        if mean is None:
            raise DataError(f"{self._who}.adapt got no data")
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(np.reshape(mean, self.mean.shape)))
            self.variance.copy_(torch.as_tensor(np.reshape(m2 / total, self.variance.shape)))
            self.count.fill_(total)
        self._adapted = True

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        if prefix + "mean" in state_dict:
            self._adapted = True  # statistics loaded from a saved model

    def call(self, x: Tensor) -> Tensor:
        if not self._adapted:
            raise DataError(
                f"{self._who} has no statistics yet: call .adapt(x_train) before using it, or "
                f"pass mean= and variance="
            )
        if x.dim() != self._rank or any(
            x.shape[a] != n for a, n in zip(self._kept, self.mean.shape, strict=True)
        ):
            sizes = dict(zip(self._kept, self.mean.shape, strict=True))
            raise ShapeError(
                f"{self._who} expects inputs of rank {self._rank} with sizes {sizes} on the "
                f"kept axes, got {tuple(x.shape)}"
            )
        mean = self._broadcast(self.mean).to(x.dtype)
        std = self._broadcast(self.variance).to(x.dtype).sqrt().clamp(min=_EPSILON)
        return mean + x * std if self.invert else (x - mean) / std

    def _config(self) -> dict[str, Any]:
        def listed(a: np.ndarray | None) -> Any:
            return None if a is None else a.tolist()

        return {
            "axis": None if self.axis is None else list(self.axis),
            "mean": listed(self._mean_arg),
            "variance": listed(self._variance_arg),
            "invert": self.invert,
        }


def _as_float_array(batch: Any, who: str) -> np.ndarray:
    if isinstance(batch, Tensor):
        batch = batch.detach().cpu().numpy()
    try:
        arr = np.asarray(batch, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{who}.adapt needs numbers, got {type(batch).__name__}") from None
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise DataError(f"{who}.adapt needs a batch (N, ...) with N > 0, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{who}.adapt got NaN or infinite values; clean the data first")
    return arr
