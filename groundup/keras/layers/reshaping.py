"""Layers that move values without learning: UpSampling1D/2D, ZeroPadding1D/2D, Cropping2D,
RepeatVector and Permute, with Keras' arguments (channels-last unless data_format says)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from groundup.errors import ConfigError, ShapeError
from groundup.keras.layers.base import Layer, Shape, choice, int_pair, positive_int
from groundup.keras.layers.convolution import DATA_FORMATS

INTERPOLATIONS = ("nearest", "bilinear")


def _rank(layer: Layer, input_shape: Sequence[int | None], rank: int, layout: str) -> None:
    if len(input_shape) != rank:
        raise ShapeError(
            f"{layer._who} expects inputs of shape {layout}, got per-sample shape "
            f"{tuple(input_shape)}"
        )


def _times(dim: int | None, factor: int) -> int | None:
    return None if dim is None else dim * factor


def _plus(dim: int | None, extra: int) -> int | None:
    return None if dim is None else dim + extra


def _pair_of_pairs(value: Any, arg: str, who: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras' 2-D padding/cropping: an int, (rows, cols), or ((top, bottom), (left, right))."""

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if count(value):
        return (value, value), (value, value)
    if isinstance(value, Sequence) and len(value) == 2:
        if all(count(v) for v in value):
            return (value[0], value[0]), (value[1], value[1])
        if all(isinstance(v, Sequence) and len(v) == 2 and all(map(count, v)) for v in value):
            return (value[0][0], value[0][1]), (value[1][0], value[1][1])
    raise ConfigError(
        f"{who}: {arg} must be an int, a pair (rows, cols) or ((top, bottom), (left, right)) "
        f"of ints >= 0, got {value!r}"
    )


class _Image(Layer):
    """channels_last / channels_first handling shared by the 2-D layers here."""

    def _init_format(self, data_format: str) -> None:
        self.data_format = choice(data_format, "data_format", DATA_FORMATS, self._who)
        self._channels_last = self.data_format == "channels_last"

    def _hwc(self, input_shape: Sequence[int | None]) -> tuple[Any, Any, Any]:
        layout = "(batch, height, width, channels)" if self._channels_last else "(batch, c, h, w)"
        _rank(self, input_shape, 3, layout)
        if self._channels_last:
            return tuple(input_shape)  # type: ignore[return-value]
        return input_shape[1], input_shape[2], input_shape[0]

    def _out(self, h: int | None, w: int | None, c: int | None) -> Shape:
        return (h, w, c) if self._channels_last else (c, h, w)

    def _nchw(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ShapeError(f"{self._who} expects 4-D image batches, got {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2) if self._channels_last else x  # (B, C, H, W) view

    def _back(self, y: Tensor) -> Tensor:
        return y.permute(0, 2, 3, 1) if self._channels_last else y  # (B, H, W, C)


class UpSampling2D(_Image):
    """Repeat rows and columns `size` times ("nearest") or resize bilinearly."""

    _repr_keys = ("size", "interpolation")

    def __init__(
        self,
        size: int | Sequence[int] = (2, 2),
        data_format: str = "channels_last",
        interpolation: str = "nearest",
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.size = int_pair(size, "size", self._who)
        self._init_format(data_format)
        self.interpolation = choice(interpolation, "interpolation", INTERPOLATIONS, self._who)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        h, w, c = self._hwc(input_shape)
        return self._out(_times(h, self.size[0]), _times(w, self.size[1]), c)

    def call(self, x: Tensor) -> Tensor:
        x = self._nchw(x)  # (B, C, H, W)
        if self.interpolation == "nearest":
            y = x.repeat_interleave(self.size[0], dim=2).repeat_interleave(self.size[1], dim=3)
        else:  # half-pixel centres, no antialiasing: Keras' bilinear resize
            y = F.interpolate(x, scale_factor=self.size, mode="bilinear", align_corners=False)
        return self._back(y)

    def _config(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "data_format": self.data_format,
            "interpolation": self.interpolation,
        }


class ZeroPadding2D(_Image):
    """Zeros around each image: padding is an int, (rows, cols) or ((top, bottom), (l, r))."""

    _repr_keys = ("padding",)

    def __init__(
        self,
        padding: Any = (1, 1),
        data_format: str = "channels_last",
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.padding = _pair_of_pairs(padding, "padding", self._who)
        self._init_format(data_format)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        h, w, c = self._hwc(input_shape)
        (top, bottom), (left, right) = self.padding
        return self._out(_plus(h, top + bottom), _plus(w, left + right), c)

    def call(self, x: Tensor) -> Tensor:
        (top, bottom), (left, right) = self.padding
        return self._back(F.pad(self._nchw(x), (left, right, top, bottom)))

    def _config(self) -> dict[str, Any]:
        return {"padding": [list(p) for p in self.padding], "data_format": self.data_format}


class Cropping2D(_Image):
    """Cut rows and columns off each image (the inverse of ZeroPadding2D's argument)."""

    _repr_keys = ("cropping",)

    def __init__(
        self,
        cropping: Any = ((0, 0), (0, 0)),
        data_format: str = "channels_last",
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.cropping = _pair_of_pairs(cropping, "cropping", self._who)
        self._init_format(data_format)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        h, w, c = self._hwc(input_shape)
        (top, bottom), (left, right) = self.cropping
        out_h, out_w = _plus(h, -(top + bottom)), _plus(w, -(left + right))
        if (out_h is not None and out_h <= 0) or (out_w is not None and out_w <= 0):
            raise ShapeError(
                f"{self._who} expects images larger than its cropping {self.cropping}, got {h}x{w}"
            )
        return self._out(out_h, out_w, c)

    def call(self, x: Tensor) -> Tensor:
        (top, bottom), (left, right) = self.cropping
        x = self._nchw(x)  # (B, C, H, W)
        return self._back(x[:, :, top : x.shape[2] - bottom, left : x.shape[3] - right])

    def _config(self) -> dict[str, Any]:
        return {"cropping": [list(p) for p in self.cropping], "data_format": self.data_format}


class UpSampling1D(Layer):
    """Repeat each step `size` times: (B, T, C) -> (B, T*size, C)."""

    _repr_keys = ("size",)

    def __init__(
        self,
        size: int = 2,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.size = positive_int(size, "size", self._who)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        _rank(self, input_shape, 2, "(batch, steps, channels)")
        return (_times(input_shape[0], self.size), input_shape[1])

    def call(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ShapeError(f"{self._who} expects 3-D sequence batches, got {tuple(x.shape)}")
        return x.repeat_interleave(self.size, dim=1)

    def _config(self) -> dict[str, Any]:
        return {"size": self.size}


class ZeroPadding1D(Layer):
    """Zero steps at the start and end: padding is an int or (start, end)."""

    _repr_keys = ("padding",)

    def __init__(
        self,
        padding: int | Sequence[int] = 1,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        rows, _ = _pair_of_pairs(
            (padding, 0) if isinstance(padding, int) else (padding, (0, 0)), "padding", self._who
        )
        self.padding = rows  # (start, end)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        _rank(self, input_shape, 2, "(batch, steps, channels)")
        return (_plus(input_shape[0], sum(self.padding)), input_shape[1])

    def call(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ShapeError(f"{self._who} expects 3-D sequence batches, got {tuple(x.shape)}")
        return F.pad(x, (0, 0, *self.padding))

    def _config(self) -> dict[str, Any]:
        return {"padding": list(self.padding)}


class RepeatVector(Layer):
    """(B, F) -> (B, n, F): the same vector at every step (a seq2seq decoder's input)."""

    _repr_keys = ("n",)

    def __init__(
        self,
        n: int,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.n = positive_int(n, "n", self._who)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        _rank(self, input_shape, 1, "(batch, features)")
        return (self.n, input_shape[0])

    def call(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ShapeError(f"{self._who} expects inputs (batch, features), got {tuple(x.shape)}")
        return x[:, None, :].expand(-1, self.n, -1)  # (B, n, F) view

    def _config(self) -> dict[str, Any]:
        return {"n": self.n}


class Permute(Layer):
    """Reorder the per-sample axes; `dims` counts from 1 (the batch axis stays), as Keras."""

    _repr_keys = ("dims",)

    def __init__(
        self,
        dims: Sequence[int],
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        ok = isinstance(dims, Sequence) and not isinstance(dims, str)
        ok = ok and all(isinstance(d, int) and not isinstance(d, bool) for d in dims)
        if not ok or sorted(dims) != list(range(1, len(dims) + 1)):
            raise ConfigError(
                f"{self._who}: dims must be a permutation of 1..n like (2, 1), got {dims!r}"
            )
        self.dims = tuple(dims)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        _rank(self, input_shape, len(self.dims), f"(batch, {len(self.dims)} axes)")
        return tuple(input_shape[d - 1] for d in self.dims)

    def call(self, x: Tensor) -> Tensor:
        if x.dim() != len(self.dims) + 1:
            raise ShapeError(
                f"{self._who} expects inputs with {len(self.dims)} axes after the batch, got "
                f"{tuple(x.shape)}"
            )
        return x.permute(0, *self.dims)

    def _config(self) -> dict[str, Any]:
        return {"dims": list(self.dims)}
