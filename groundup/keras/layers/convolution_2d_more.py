"""Conv2DTranspose, SeparableConv2D and DepthwiseConv2D on channels-last images, as Keras.

Kernels are stored as torch lays them out; the docstrings say which Keras kernel each is, and
the initializers use Keras' fans for that kernel, so the starting weights are drawn alike.

Conv2DTranspose's output size follows Keras (TensorFlow's rule): "valid" gives
(in - 1) * stride + max(kernel, stride), "same" gives in * stride, and with output_padding
(in - 1) * stride + kernel + output_padding - 2 * pad. torch's conv_transpose2d only pads
symmetrically, so it runs unpadded here and the window Keras keeps is cut out of its output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groundup.errors import ConfigError, ShapeError
from groundup.keras.activations import ActivationFn
from groundup.keras.layers.base import Shape, int_pair, known, positive_int
from groundup.keras.layers.convolution import _Spatial2D
from groundup.keras.layers.initializers import check_initializer, initialize
from groundup.keras.regularizers import RegularizerLike, get_regularizer


def _transpose_window(
    size: int, kernel: int, stride: int, dilation: int, padding: str, out_pad: int | None
) -> tuple[int, int]:
    """(first kept cell, output length) of one axis of Keras' transposed convolution."""
    k = dilation * (kernel - 1) + 1  # the dilated kernel's reach
    if padding == "valid":
        return 0, (size - 1) * stride + k + (max(k, stride) - k if out_pad is None else out_pad)
    if out_pad is None:
        return max((k - stride) // 2, 0), size * stride
    pad_len = k + k % 2 - 2 + out_pad
    return k - 1 - min(pad_len - pad_len // 2, k - 1), (size - 1) * stride + k % 2 + out_pad


class Conv2DTranspose(_Spatial2D):
    """Transposed 2-D convolution (learned upsampling). Keras' kernel is (kh, kw, filters,
    in_channels); torch's, stored here, is (in_channels, filters, kh, kw)."""

    _repr_keys = ("filters", "kernel_size", "strides", "padding", "activation")
    _windowed = False

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        output_padding: int | Sequence[int] | None = None,
        data_format: str = "channels_last",
        dilation_rate: int | Sequence[int] = 1,
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
        self.output_padding: tuple[int, int] | None = None
        if output_padding is not None:
            pads = (
                (output_padding, output_padding)
                if isinstance(output_padding, int) and not isinstance(output_padding, bool)
                else output_padding
            )
            ok = isinstance(pads, Sequence) and len(pads) == 2
            ok = ok and all(
                isinstance(p, int) and not isinstance(p, bool) and 0 <= p < s
                for p, s in zip(pads, self.strides, strict=True)
            )
            if not ok:
                raise ConfigError(
                    f"{self._who}: output_padding must be None or ints >= 0 and smaller than "
                    f"the strides {self.strides}, got {output_padding!r}"
                )
            self.output_padding = (pads[0], pads[1])
        self._init_spatial(self.kernel_size, self.strides, padding, data_format)
        self._dilation = self.dilation_rate
        self._set_activation(activation)
        self._init_kernel_bias(
            use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        )
        self.in_channels = -1

    def _windows(self, h: int | None, w: int | None) -> list[tuple[int, int] | None]:
        out_pads = self.output_padding or (None, None)
        return [
            None if size is None else _transpose_window(size, k, s, d, self.padding, p)
            for size, k, s, d, p in zip(
                (h, w), self.kernel_size, self.strides, self.dilation_rate, out_pads, strict=True
            )
        ]

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        if len(input_shape) != 3:
            raise ShapeError(
                f"{self._who} expects images of shape {self._layout()}, got per-sample shape "
                f"{tuple(input_shape)}"
            )
        h, w, _ = input_shape if self._channels_last else (*input_shape[1:], input_shape[0])
        sizes = [None if win is None else win[1] for win in self._windows(h, w)]
        return self._shape_out(sizes[0], sizes[1], self.filters)

    def _build(self, input_shape: Shape) -> None:
        c = input_shape[-1] if self._channels_last else input_shape[0]
        self.in_channels = known(c, "number of input channels", self._who)
        kh, kw = self.kernel_size
        # Keras' fans for its (kh, kw, filters, in) kernel: filters*kh*kw in, in*kh*kw out.
        shape = (self.in_channels, self.filters, kh, kw)
        n_in = self.in_channels
        self._build_kernel_bias(shape, self.filters, self.filters * kh * kw, n_in * kh * kw)

    def call(self, x: Tensor) -> Tensor:
        x = self._to_nchw(x)  # (B, C, H, W)
        if x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{self._who} expects {self.in_channels} input channels, got {x.shape[1]}"
            )
        full = F.conv_transpose2d(
            x, self.kernel, None, self.strides, dilation=self.dilation_rate
        )  # (B, filters, (H-1)*s + k, ...): the whole transposed convolution
        (top, out_h), (left, out_w) = self._windows(x.shape[2], x.shape[3])
        y = full[:, :, top : top + out_h, left : left + out_w]
        short_h, short_w = out_h - y.shape[2], out_w - y.shape[3]
        if short_h or short_w:  # a stride past the kernel leaves zeros at the end
            y = F.pad(y, (0, short_w, 0, short_h))
        if self.bias is not None:
            y = y + self.bias[:, None, None]
        return self._from_nchw(y)

    def _config(self) -> dict[str, Any]:
        return {
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "output_padding": None if self.output_padding is None else list(self.output_padding),
            "data_format": self.data_format,
            "dilation_rate": list(self.dilation_rate),
            "activation": self._activation_config(),
            **self._kernel_bias_config(),
        }


class DepthwiseConv2D(_Spatial2D):
    """One kernel per input channel (depth_multiplier outputs each). Keras' kernel is
    (kh, kw, in_channels, depth_multiplier); torch's, stored here, (in*dm, 1, kh, kw), whose
    output channel c*dm + m is Keras' too."""

    _repr_keys = ("kernel_size", "depth_multiplier", "strides", "padding")
    _kernel_name = "depthwise"

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        depth_multiplier: int = 1,
        data_format: str = "channels_last",
        dilation_rate: int | Sequence[int] = 1,
        activation: str | ActivationFn | None = None,
        use_bias: bool = True,
        depthwise_initializer: str = "glorot_uniform",
        bias_initializer: str = "zeros",
        depthwise_regularizer: RegularizerLike = None,
        bias_regularizer: RegularizerLike = None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.kernel_size = int_pair(kernel_size, "kernel_size", self._who)
        self.strides = int_pair(strides, "strides", self._who)
        self.dilation_rate = int_pair(dilation_rate, "dilation_rate", self._who)
        self.depth_multiplier = positive_int(depth_multiplier, "depth_multiplier", self._who)
        self._init_spatial(self.kernel_size, self.strides, padding, data_format)
        self._dilation = self.dilation_rate
        self._set_activation(activation)
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = check_initializer(depthwise_initializer)
        self.bias_initializer = check_initializer(bias_initializer)
        self.depthwise_regularizer = get_regularizer(depthwise_regularizer)
        self.bias_regularizer = get_regularizer(bias_regularizer)
        self.in_channels = -1

    def _out_channels(self, c: int | None) -> int | None:
        return None if c is None else c * self.depth_multiplier

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        h, w, c = self._spatial_out(input_shape)
        return self._shape_out(h, w, self._out_channels(c))

    def _build_depthwise(self, input_shape: Shape) -> int:
        c = input_shape[-1] if self._channels_last else input_shape[0]
        self.in_channels = known(c, "number of input channels", self._who)
        kh, kw = self.kernel_size
        dm = self.depth_multiplier
        self.depthwise_kernel = nn.Parameter(torch.empty(c * dm, 1, kh, kw))
        # Keras' fans for its (kh, kw, in, dm) kernel: in*kh*kw in, dm*kh*kw out.
        initialize(self.depthwise_initializer, self.depthwise_kernel, c * kh * kw, dm * kh * kw)
        self._add_regularizer("depthwise_kernel", self.depthwise_regularizer)
        return c * dm

    def _build_bias(self, size: int) -> None:
        if self.use_bias:
            self.bias = nn.Parameter(torch.empty(size))
            initialize(self.bias_initializer, self.bias)
            self._add_regularizer("bias", self.bias_regularizer)
        else:
            self.register_parameter("bias", None)

    def _build(self, input_shape: Shape) -> None:
        self._build_bias(self._build_depthwise(input_shape))

    def _depthwise(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """(B, C, H, W) -> (B, C*dm, H', W'), "same" padded as TensorFlow pads."""
        if x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{self._who} expects {self.in_channels} input channels, got {x.shape[1]}"
            )
        pads = self._pads(x)
        if pads is not None:
            x = F.pad(x, pads)
        return F.conv2d(
            x, self.depthwise_kernel, bias, self.strides, 0, self.dilation_rate, self.in_channels
        )

    def call(self, x: Tensor) -> Tensor:
        return self._from_nchw(self._depthwise(self._to_nchw(x), self.bias))

    def _config(self) -> dict[str, Any]:
        return {
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "depth_multiplier": self.depth_multiplier,
            "data_format": self.data_format,
            "dilation_rate": list(self.dilation_rate),
            "activation": self._activation_config(),
            "use_bias": self.use_bias,
            "depthwise_initializer": self.depthwise_initializer,
            "bias_initializer": self.bias_initializer,
            "depthwise_regularizer": self._reg_config(self.depthwise_regularizer),
            "bias_regularizer": self._reg_config(self.bias_regularizer),
        }


class SeparableConv2D(DepthwiseConv2D):
    """A depthwise convolution, then a 1x1 pointwise one (Xception, MobileNet). Keras'
    kernels: depthwise (kh, kw, in, dm), pointwise (1, 1, in*dm, filters); stored as torch's
    (in*dm, 1, kh, kw) and (filters, in*dm, 1, 1). One bias, after the pointwise step."""

    _repr_keys = ("filters", "kernel_size", "strides", "padding", "activation")

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        data_format: str = "channels_last",
        dilation_rate: int | Sequence[int] = 1,
        depth_multiplier: int = 1,
        activation: str | ActivationFn | None = None,
        use_bias: bool = True,
        depthwise_initializer: str = "glorot_uniform",
        pointwise_initializer: str = "glorot_uniform",
        bias_initializer: str = "zeros",
        depthwise_regularizer: RegularizerLike = None,
        pointwise_regularizer: RegularizerLike = None,
        bias_regularizer: RegularizerLike = None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            kernel_size, strides, padding, depth_multiplier, data_format, dilation_rate,
            activation, use_bias, depthwise_initializer, bias_initializer,
            depthwise_regularizer, bias_regularizer, input_shape, name,
        )  # fmt: skip
        self.filters = positive_int(filters, "filters", self._who)
        self.pointwise_initializer = check_initializer(pointwise_initializer)
        self.pointwise_regularizer = get_regularizer(pointwise_regularizer)

    def _out_channels(self, c: int | None) -> int | None:
        return self.filters

    def _build(self, input_shape: Shape) -> None:
        mid = self._build_depthwise(input_shape)
        self.pointwise_kernel = nn.Parameter(torch.empty(self.filters, mid, 1, 1))
        initialize(self.pointwise_initializer, self.pointwise_kernel, mid, self.filters)
        self._add_regularizer("pointwise_kernel", self.pointwise_regularizer)
        self._build_bias(self.filters)

    def call(self, x: Tensor) -> Tensor:
        mid = self._depthwise(self._to_nchw(x), None)  # (B, C*dm, H', W')
        return self._from_nchw(F.conv2d(mid, self.pointwise_kernel, self.bias))

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        return {
            "filters": self.filters,
            **config,
            "pointwise_initializer": self.pointwise_initializer,
            "pointwise_regularizer": self._reg_config(self.pointwise_regularizer),
        }
