"""2-D convolution and pooling on channels-last images (B, H, W, C), like Keras.

Trap: torch's kernels take NCHW. `x.permute(0, 3, 1, 2)` is an NCHW *view* of channels-last
memory (torch calls it the channels_last memory format) and conv2d/pooling run on it without
copying; their output keeps that format, so permuting back yields contiguous (B, H, W, C).

"same" padding follows TensorFlow for any stride: out = ceil(in / stride), and when the total
padding is odd the extra row/column goes at the bottom/right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from groundup.errors import ShapeError
from groundup.keras.activations import ActivationFn
from groundup.keras.layers.base import (
    Layer,
    Shape,
    choice,
    conv_groups,
    int_pair,
    known,
    positive_int,
)
from groundup.keras.regularizers import RegularizerLike

PADDINGS = ("valid", "same")
DATA_FORMATS = ("channels_last", "channels_first")


def _out_size(
    size: int | None, kernel: int, stride: int, dilation: int, padding: str
) -> int | None:
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)  # ceil
    return (size - dilation * (kernel - 1) - 1) // stride + 1


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding of one spatial axis for TensorFlow's "same"."""
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


class _Spatial2D(Layer):
    """Shared shape logic of the 2-D layers: rank checks, layouts and output sizes."""

    def _init_spatial(self, kernel: Any, strides: Any, padding: str, data_format: str) -> None:
        self.padding = choice(padding, "padding", PADDINGS, self._who)
        self.data_format = choice(data_format, "data_format", DATA_FORMATS, self._who)
        self._channels_last = self.data_format == "channels_last"
        self._kernel = kernel
        self._strides = strides
        self._dilation = (1, 1)

    def _layout(self) -> str:
        return (
            "(batch, height, width, channels)"
            if self._channels_last
            else "(batch, channels, height, width)"
        )

    def _spatial_out(
        self, input_shape: Sequence[int | None]
    ) -> tuple[int | None, int | None, int | None]:
        """Validates rank and size; returns (out_h, out_w, in_channels)."""
        if len(input_shape) != 3:
            raise ShapeError(
                f"{self._who} expects images of shape {self._layout()}, got per-sample shape "
                f"{tuple(input_shape)}; add a channel axis with Reshape((H, W, 1)) if needed"
            )
        if self._channels_last:
            h, w, c = input_shape
        else:
            c, h, w = input_shape
        outs = tuple(
            _out_size(size, k, s, d, self.padding)
            for size, k, s, d in zip(
                (h, w), self._kernel, self._strides, self._dilation, strict=True
            )
        )
        if any(o is not None and o <= 0 for o in outs):
            raise ShapeError(
                f"{self._who} expects images at least as large as the window {self._kernel[0]}x"
                f"{self._kernel[1]}, got {h}x{w}; use padding='same' or larger inputs"
            )
        return outs[0], outs[1], c

    _windowed = True  # the window must fit in the input (not so for a transposed conv)

    def _to_nchw(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ShapeError(
                f"{self._who} expects images of shape {self._layout()}, got {tuple(x.shape)}"
            )
        if self._windowed:
            self._spatial_out(tuple(x.shape[1:]))  # a too-small image: a ShapeError, per call
        return x.permute(0, 3, 1, 2) if self._channels_last else x  # (B, C, H, W) view

    def _from_nchw(self, y: Tensor) -> Tensor:
        return y.permute(0, 2, 3, 1) if self._channels_last else y  # (B, H, W, C)

    def _pads(self, x: Tensor) -> tuple[int, int, int, int] | None:
        """F.pad order (left, right, top, bottom) for "same", or None when nothing to pad."""
        if self.padding == "valid":
            return None
        top, bottom = _same_pads(x.shape[2], self._kernel[0], self._strides[0], self._dilation[0])
        left, right = _same_pads(x.shape[3], self._kernel[1], self._strides[1], self._dilation[1])
        pads = (left, right, top, bottom)
        return pads if any(pads) else None

    def _shape_out(self, h: int | None, w: int | None, c: int | None) -> Shape:
        return (h, w, c) if self._channels_last else (c, h, w)


class Conv2D(_Spatial2D):
    """2-D convolution. Kernel is stored as torch lays it out: (filters, in_channels, kh, kw)."""

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
        self.kernel_size = int_pair(kernel_size, "kernel_size", self._who)
        self.strides = int_pair(strides, "strides", self._who)
        self.dilation_rate = int_pair(dilation_rate, "dilation_rate", self._who)
        self.groups = conv_groups(groups, self.filters, self._who)
        self._init_spatial(self.kernel_size, self.strides, padding, data_format)
        self._dilation = self.dilation_rate
        self._set_activation(activation)
        self._init_kernel_bias(
            use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        )
        self.in_channels = -1

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        h, w, c = self._spatial_out(input_shape)
        if c is not None and c % self.groups:
            raise ShapeError(
                f"{self._who} expects input channels in multiples of groups={self.groups}, got {c}"
            )
        return self._shape_out(h, w, self.filters)

    def _build(self, input_shape: Shape) -> None:
        c = input_shape[-1] if self._channels_last else input_shape[0]
        self.in_channels = known(c, "number of input channels", self._who)
        kh, kw = self.kernel_size
        per_group = self.in_channels // self.groups
        fan_in, fan_out = per_group * kh * kw, self.filters * kh * kw
        kernel_shape = (self.filters, per_group, kh, kw)
        self._build_kernel_bias(kernel_shape, self.filters, fan_in, fan_out)

    def call(self, x: Tensor) -> Tensor:
        x = self._to_nchw(x)  # (B, C, H, W)
        if x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{self._who} expects {self.in_channels} input channels, got {x.shape[1]}"
            )
        pads = self._pads(x)
        padding: tuple[int, int] = (0, 0)
        if pads is not None:
            left, right, top, bottom = pads
            if left == right and top == bottom:
                padding = (top, left)  # symmetric: let conv2d pad internally (no copy)
            else:
                x = F.pad(x, pads)
        y = F.conv2d(
            x, self.kernel, self.bias, self.strides, padding, self.dilation_rate, self.groups
        )
        return self._from_nchw(y)

    def _config(self) -> dict[str, Any]:
        return {
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": list(self.dilation_rate),
            "groups": self.groups,
            "activation": self._activation_config(),
            **self._kernel_bias_config(),
        }


class _Pool2D(_Spatial2D):
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
        self.pool_size = int_pair(pool_size, "pool_size", self._who)
        # Keras: strides default to the pool size (non-overlapping windows).
        self.strides = (
            self.pool_size if strides is None else int_pair(strides, "strides", self._who)
        )
        self._init_spatial(self.pool_size, self.strides, padding, data_format)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        h, w, c = self._spatial_out(input_shape)
        return self._shape_out(h, w, c)

    def _config(self) -> dict[str, Any]:
        return {
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "data_format": self.data_format,
        }


class MaxPool2D(_Pool2D):
    """Max over pool_size windows; "same" padding never wins the max (padded with -inf)."""

    def call(self, x: Tensor) -> Tensor:
        x = self._to_nchw(x)  # (B, C, H, W)
        pads = self._pads(x)
        if pads is not None:
            x = F.pad(x, pads, value=-math.inf)
        return self._from_nchw(F.max_pool2d(x, self.pool_size, self.strides))


class AvgPool2D(_Pool2D):
    """Mean over pool_size windows; with "same" padding, padded cells are not counted
    (TensorFlow's and JAX's semantics), so border windows average only real values. (Keras'
    torch backend differs where the padding is uneven: it repeats the edge values there.)"""

    def call(self, x: Tensor) -> Tensor:
        x = self._to_nchw(x)  # (B, C, H, W)
        pads = self._pads(x)
        if pads is None:
            return self._from_nchw(F.avg_pool2d(x, self.pool_size, self.strides))
        mean_with_zeros = F.avg_pool2d(F.pad(x, pads), self.pool_size, self.strides)
        ones = x.new_ones((1, 1, x.shape[2], x.shape[3]))  # (1, 1, H, W): share of real cells
        share = F.avg_pool2d(F.pad(ones, pads), self.pool_size, self.strides)
        return self._from_nchw(mean_with_zeros / share)


class _GlobalPool2D(Layer):
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
        self._dims = (1, 2) if self.data_format == "channels_last" else (2, 3)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        if len(input_shape) != 3:
            raise ShapeError(
                f"{self._who} expects images (batch, height, width, channels), got per-sample "
                f"shape {tuple(input_shape)}"
            )
        c = input_shape[-1] if self.data_format == "channels_last" else input_shape[0]
        if not self.keepdims:
            return (c,)
        return (1, 1, c) if self.data_format == "channels_last" else (c, 1, 1)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ShapeError(f"{self._who} expects 4-D image batches, got {tuple(x.shape)}")

    def _config(self) -> dict[str, Any]:
        return {"data_format": self.data_format, "keepdims": self.keepdims}


class GlobalAveragePooling2D(_GlobalPool2D):
    """Mean over height and width: (B, H, W, C) -> (B, C)."""

    def call(self, x: Tensor) -> Tensor:
        self._check(x)
        return x.mean(dim=self._dims, keepdim=self.keepdims)


class GlobalMaxPooling2D(_GlobalPool2D):
    """Max over height and width: (B, H, W, C) -> (B, C)."""

    def call(self, x: Tensor) -> Tensor:
        self._check(x)
        return x.amax(dim=self._dims, keepdim=self.keepdims)


# Keras spells these both ways.
MaxPooling2D = MaxPool2D
AveragePooling2D = AvgPool2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D
