"""1-D convolution and pooling on channels-last sequences (B, T, C), like Keras.

torch's kernels take (B, C, T): `x.transpose(1, 2)` is that view. "same" padding follows
TensorFlow (out = ceil(T / stride), the odd cell at the end); "causal" pads the start only, so
step t sees steps <= t (WaveNet-style stacks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from groundup.errors import ShapeError
from groundup.keras.activations import ActivationFn
from groundup.keras.layers.base import Layer, Shape, choice, conv_groups, known, positive_int
from groundup.keras.layers.convolution import DATA_FORMATS, _out_size, _same_pads
from groundup.keras.regularizers import RegularizerLike


def _one(value: Any, arg: str, who: str) -> int:
    """An int or a 1-tuple of one (Keras accepts both for 1-D sizes)."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 1:
        value = value[0]
    return positive_int(value, arg, who)


class _Spatial1D(Layer):
    """Shared shape logic of the 1-D layers: rank checks, layouts and output lengths."""

    _paddings: tuple[str, ...] = ("valid", "same")

    def _init_spatial(self, kernel: int, stride: int, padding: str, data_format: str) -> None:
        self.padding = choice(padding, "padding", self._paddings, self._who)
        self.data_format = choice(data_format, "data_format", DATA_FORMATS, self._who)
        self._channels_last = self.data_format == "channels_last"
        self._kernel, self._stride, self._dilation = kernel, stride, 1

    def _layout(self) -> str:
        return "(batch, steps, channels)" if self._channels_last else "(batch, channels, steps)"

    def _steps_out(self, input_shape: Sequence[int | None]) -> tuple[int | None, int | None]:
        """Validates rank and length; returns (out_steps, in_channels)."""
        if len(input_shape) != 2:
            raise ShapeError(
                f"{self._who} expects sequences of shape {self._layout()}, got per-sample shape "
                f"{tuple(input_shape)}"
            )
        steps, c = input_shape if self._channels_last else input_shape[::-1]
        pad = "same" if self.padding == "causal" else self.padding
        out = _out_size(steps, self._kernel, self._stride, self._dilation, pad)
        if self.padding == "causal" and steps is not None:  # causal keeps valid's stride rule
            out = (steps - 1) // self._stride + 1
        if out is not None and out <= 0:
            raise ShapeError(
                f"{self._who} expects at least {self._kernel} steps (the window), got {steps}; "
                f"use padding='same' or longer inputs"
            )
        return out, c

    def _to_ncl(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ShapeError(
                f"{self._who} expects sequences of shape {self._layout()}, got {tuple(x.shape)}"
            )
        self._steps_out(tuple(x.shape[1:]))  # a too-short sequence: a ShapeError, per call
        return x.transpose(1, 2) if self._channels_last else x  # (B, C, T) view

    def _from_ncl(self, y: Tensor) -> Tensor:
        return y.transpose(1, 2) if self._channels_last else y  # (B, T, C)

    def _pads(self, steps: int) -> tuple[int, int] | None:
        reach = self._dilation * (self._kernel - 1)
        if self.padding == "causal":
            return (reach, 0) if reach else None
        if self.padding == "valid":
            return None
        pads = _same_pads(steps, self._kernel, self._stride, self._dilation)
        return pads if any(pads) else None

    def _shape_out(self, steps: int | None, c: int | None) -> Shape:
        return (steps, c) if self._channels_last else (c, steps)


class Conv1D(_Spatial1D):
    """1-D convolution; kernel stored as torch lays it out: (filters, in_channels/groups, k)."""

    _paddings = ("valid", "same", "causal")
    _repr_keys = ("filters", "kernel_size", "strides", "padding", "activation")

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        data_format: str = "channels_last",
        dilation_rate: int | Sequence[int] = 1,
        groups: int = 1,
        activation: str | ActivationFn | None = None,
        use_bias: bool = True,
        kernel_initializer: str = "glorot_uniform",
        bias_initializer: str = "zeros",
        kernel_regularizer: RegularizerLike = None,
        bias_regularizer: RegularizerLike = None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.filters = positive_int(filters, "filters", self._who)
        self.kernel_size = _one(kernel_size, "kernel_size", self._who)
        self.strides = _one(strides, "strides", self._who)
        self.dilation_rate = _one(dilation_rate, "dilation_rate", self._who)
        self.groups = conv_groups(groups, self.filters, self._who)
        self._init_spatial(self.kernel_size, self.strides, padding, data_format)
        self._dilation = self.dilation_rate
        self._set_activation(activation)
        self._init_kernel_bias(
            use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        )
        self.in_channels = -1

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        steps, c = self._steps_out(input_shape)
        if c is not None and c % self.groups:
            raise ShapeError(
                f"{self._who} expects input channels in multiples of groups={self.groups}, got {c}"
            )
        return self._shape_out(steps, self.filters)

    def _build(self, input_shape: Shape) -> None:
        c = input_shape[-1] if self._channels_last else input_shape[0]
        self.in_channels = known(c, "number of input channels", self._who)
        k, per_group = self.kernel_size, self.in_channels // self.groups
        # Keras' kernel is (k, in/groups, filters): fans k*in/groups and k*filters.
        shape = (self.filters, per_group, k)
        self._build_kernel_bias(shape, self.filters, k * per_group, k * self.filters)

    def call(self, x: Tensor) -> Tensor:
        x = self._to_ncl(x)  # (B, C, T)
        if x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{self._who} expects {self.in_channels} input channels, got {x.shape[1]}"
            )
        pads = self._pads(x.shape[2])
        if pads is not None:
            x = F.pad(x, pads)
        y = F.conv1d(x, self.kernel, self.bias, self.strides, 0, self.dilation_rate, self.groups)
        return self._from_ncl(y)

    def _config(self) -> dict[str, Any]:
        return {
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
            "groups": self.groups,
            "activation": self._activation_config(),
            **self._kernel_bias_config(),
        }


class _Pool1D(_Spatial1D):
    _repr_keys = ("pool_size", "strides", "padding")

    def __init__(
        self,
        pool_size: int | Sequence[int] = 2,
        strides: int | Sequence[int] | None = None,
        padding: str = "valid",
        data_format: str = "channels_last",
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.pool_size = _one(pool_size, "pool_size", self._who)
        # Keras: strides default to the pool size (non-overlapping windows).
        self.strides = self.pool_size if strides is None else _one(strides, "strides", self._who)
        self._init_spatial(self.pool_size, self.strides, padding, data_format)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        steps, c = self._steps_out(input_shape)
        return self._shape_out(steps, c)

    def _config(self) -> dict[str, Any]:
        return {
            "pool_size": self.pool_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
        }


class MaxPool1D(_Pool1D):
    """Max over pool_size steps; "same" padding never wins the max (padded with -inf)."""

    def call(self, x: Tensor) -> Tensor:
        x = self._to_ncl(x)  # (B, C, T)
        pads = self._pads(x.shape[2])
        if pads is not None:
            x = F.pad(x, pads, value=-math.inf)
        return self._from_ncl(F.max_pool1d(x, self.pool_size, self.strides))


class AvgPool1D(_Pool1D):
    """Mean over pool_size steps; with "same", padded cells are not counted (TensorFlow's
    and JAX's rule; Keras' torch backend repeats edge values where the padding is uneven)."""

    def call(self, x: Tensor) -> Tensor:
        x = self._to_ncl(x)  # (B, C, T)
        pads = self._pads(x.shape[2])
        if pads is None:
            return self._from_ncl(F.avg_pool1d(x, self.pool_size, self.strides))
        mean_with_zeros = F.avg_pool1d(F.pad(x, pads), self.pool_size, self.strides)
        ones = x.new_ones((1, 1, x.shape[2]))  # (1, 1, T): share of real cells per window
        share = F.avg_pool1d(F.pad(ones, pads), self.pool_size, self.strides)
        return self._from_ncl(mean_with_zeros / share)


class _GlobalPool1D(Layer):
    _repr_keys = ("keepdims",)

    def __init__(
        self,
        data_format: str = "channels_last",
        keepdims: bool = False,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.data_format = choice(data_format, "data_format", DATA_FORMATS, self._who)
        self.keepdims = bool(keepdims)
        self._step_axis = 1 if self.data_format == "channels_last" else 2

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        if len(input_shape) != 2:
            raise ShapeError(
                f"{self._who} expects sequences (batch, steps, channels), got per-sample "
                f"shape {tuple(input_shape)}"
            )
        c = input_shape[-1] if self.data_format == "channels_last" else input_shape[0]
        if not self.keepdims:
            return (c,)
        return (1, c) if self.data_format == "channels_last" else (c, 1)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3:
            raise ShapeError(f"{self._who} expects 3-D sequence batches, got {tuple(x.shape)}")

    def _config(self) -> dict[str, Any]:
        return {"data_format": self.data_format, "keepdims": self.keepdims}


class GlobalAveragePooling1D(_GlobalPool1D):
    """Mean over steps: (B, T, C) -> (B, C); with a mask, the mean of the real steps only."""

    supports_masking = True

    def call(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self._check(x)
        if mask is None:
            return x.mean(dim=self._step_axis, keepdim=self.keepdims)
        weight = mask.to(x.device, x.dtype).unsqueeze(3 - self._step_axis)  # (B, T, 1) or (B, 1, T)
        total = (x * weight).sum(dim=self._step_axis, keepdim=self.keepdims)
        count = weight.sum(dim=self._step_axis, keepdim=self.keepdims)
        return total / count  # an all-padding row gives NaN, as in Keras

    def compute_mask(self, inputs: Tensor, mask: Tensor | None = None) -> None:
        """The step axis is gone, and the mask with it."""
        return None


class GlobalMaxPooling1D(_GlobalPool1D):
    """Max over steps: (B, T, C) -> (B, C)."""

    def call(self, x: Tensor) -> Tensor:
        self._check(x)
        return x.amax(dim=self._step_axis, keepdim=self.keepdims)


# Keras spells these both ways.
MaxPooling1D = MaxPool1D
AveragePooling1D = AvgPool1D
GlobalAvgPool1D = GlobalAveragePooling1D
GlobalMaxPool1D = GlobalMaxPooling1D
