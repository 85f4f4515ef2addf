"""Image augmentation layers (channels-last batches): RandomFlip, RandomRotation, RandomZoom,
RandomTranslation and RandomCrop, with Keras' arguments.

They act only in training mode (`model.train()`, which fit sets) and are the identity at
evaluation and prediction, except RandomCrop, which must still give its output size: at
inference it takes the largest centred window of the target's aspect ratio and resizes it
(Keras' smart resize). Randomness comes from torch's global generator, so `gu.seed.set_seed`
makes runs repeat; `seed=` gives a layer its own generator instead. Rotation, zoom and
translation resample bilinearly (or "nearest") and fill the uncovered border by `fill_mode`:
"reflect" (d c b a | a b c d), "wrap", "nearest" (edge values) or "constant" (fill_value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from groundup.errors import ConfigError, ShapeError
from groundup.keras.layers.base import Layer, Shape, choice, positive_int
from groundup.keras.layers.convolution import DATA_FORMATS

FILL_MODES = ("reflect", "wrap", "nearest", "constant")
INTERPOLATIONS = ("bilinear", "nearest")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


def _bounds(value: Any, arg: str, who: str, *, limit: float | None = None) -> tuple[float, float]:
    """Keras' factor: a float f means [-f, f]; a pair (low, high) is used as given."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number:
        low, high = -float(value), float(value)
    elif (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        low, high = float(value[0]), float(value[1])
    else:
        raise ConfigError(f"{who}: {arg} must be a number or a pair (low, high), got {value!r}")
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"{who}: {arg} needs finite bounds with low <= high, got {value!r}")
    if limit is not None and (low < -limit or high > limit):
        raise ConfigError(f"{who}: {arg} must lie in [-{limit}, {limit}], got {value!r}")
    return low, high


class _Augment(Layer):
    """Seeding, layouts and the train/eval switch shared by the augmentation layers."""

    def _init_augment(self, seed: int | None, data_format: str) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"{self._who}: seed must be None or an int, got {seed!r}")
        self.seed = seed
        self.data_format = choice(data_format, "data_format", DATA_FORMATS, self._who)
        self._generator: torch.Generator | None = None

    def _uniform(self, n: int, low: float, high: float, like: Tensor) -> Tensor:
        """n draws from U(low, high) on `like`'s device, from the layer's generator if seeded."""
        if self.seed is not None and (
            self._generator is None or self._generator.device != like.device
        ):
            self._generator = torch.Generator(device=like.device).manual_seed(self.seed)
        u = torch.rand(n, generator=self._generator, device=like.device, dtype=like.dtype)
        return low + (high - low) * u

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        if len(input_shape) != 3:
            raise ShapeError(
                f"{self._who} expects images (batch, height, width, channels), got per-sample "
                f"shape {tuple(input_shape)}"
            )
        return tuple(input_shape)

    def _nchw(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ShapeError(f"{self._who} expects 4-D image batches, got {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.float()
        return x.permute(0, 3, 1, 2) if self.data_format == "channels_last" else x

    def _back(self, y: Tensor) -> Tensor:
        return y.permute(0, 2, 3, 1) if self.data_format == "channels_last" else y

    def call(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._inference(x)
        return self._back(self._augment(self._nchw(x)))

    def _inference(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ShapeError(f"{self._who} expects 4-D image batches, got {tuple(x.shape)}")
        return x

    def _augment(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        return {"seed": self.seed, "data_format": self.data_format}


class RandomFlip(_Augment):
    """Flips each image left-right and/or up-down, each with probability 1/2."""

    _repr_keys = ("mode",)

    def __init__(
        self,
        mode: str = "horizontal_and_vertical",
        seed: int | None = None,
        data_format: str = "channels_last",
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.mode = choice(mode, "mode", FLIP_MODES, self._who)
        self._init_augment(seed, data_format)

    def _augment(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        for axis, on in ((3, "horizontal"), (2, "vertical")):
            if on in self.mode:
                flip = self._uniform(x.shape[0], 0.0, 1.0, x) < 0.5  # (B,)
                x = torch.where(flip[:, None, None, None], x.flip(axis), x)
        return x

    def _config(self) -> dict[str, Any]:
        return {"mode": self.mode, **super()._config()}


class _Resample(_Augment):
    """Affine resampling with Keras' fill modes (rotation, zoom, translation)."""

    def _init_fill(self, fill_mode: str, interpolation: str, fill_value: float) -> None:
        self.fill_mode = choice(fill_mode, "fill_mode", FILL_MODES, self._who)
        self.interpolation = choice(interpolation, "interpolation", INTERPOLATIONS, self._who)
        if isinstance(fill_value, bool) or not isinstance(fill_value, (int, float)):
            raise ConfigError(f"{self._who}: fill_value must be a number, got {fill_value!r}")
        self.fill_value = float(fill_value)

    def _matrices(self, x: Tensor) -> Tensor:
        """(B, 2, 3) maps from output to input in normalized coordinates ([-1, 1])."""
        raise NotImplementedError

    def _augment(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        batch, channels, height, width = x.shape
        grid = F.affine_grid(self._matrices(x), [batch, channels, height, width], False)
        mode = self.interpolation
        if self.fill_mode == "wrap":
            grid = torch.remainder(grid + 1.0, 2.0) - 1.0  # wrap into the image...
            # ...and sample a copy padded by one wrapped pixel, so edges blend across.
            sizes = torch.tensor([width, height], dtype=x.dtype, device=x.device)
            grid = (grid + 1.0) * sizes / (sizes + 2.0) + 2.0 / (sizes + 2.0) - 1.0
            x = F.pad(x, (1, 1, 1, 1), mode="circular")
            return F.grid_sample(x, grid, mode, "border", align_corners=False)
        padding = {"reflect": "reflection", "nearest": "border", "constant": "zeros"}
        y = F.grid_sample(x, grid, mode, padding[self.fill_mode], align_corners=False)
        if self.fill_mode == "constant" and self.fill_value:
            inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode, "zeros", False)
            y = y + self.fill_value * (1.0 - inside)
        return y

    def _config(self) -> dict[str, Any]:
        return {
            "fill_mode": self.fill_mode,
            "interpolation": self.interpolation,
            "fill_value": self.fill_value,
            **super()._config(),
        }


def _affine(a: Tensor, b: Tensor, c: Tensor, d: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    return torch.stack([torch.stack([a, b, tx], -1), torch.stack([c, d, ty], -1)], -2)


class RandomRotation(_Resample):
    """Rotates each image by a random angle: `factor` is a fraction of a full turn (0.1 means
    up to 36 degrees either way), or a pair (low, high) of such fractions."""

    _repr_keys = ("factor",)

    def __init__(
        self,
        factor: float | Sequence[float],
        fill_mode: str = "reflect",
        interpolation: str = "bilinear",
        seed: int | None = None,
        fill_value: float = 0.0,
        data_format: str = "channels_last",
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.factor = _bounds(factor, "factor", self._who)
        self._init_fill(fill_mode, interpolation, fill_value)
        self._init_augment(seed, data_format)

    def _matrices(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        angle = self._uniform(batch, *self.factor, x) * (2.0 * math.pi)  # (B,) radians
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(cos)
        # A rotation in pixel units, written in normalized coordinates (non-square images).
        return _affine(cos, -sin * height / width, sin * width / height, cos, zero, zero)

    def _config(self) -> dict[str, Any]:
        return {"factor": list(self.factor), **super()._config()}


class RandomZoom(_Resample):
    """Zooms each image: a factor z > 0 zooms out (shows (1 + z) times the field), z < 0 in.
    `width_factor=None` zooms both axes by the same amount (keeping the aspect ratio)."""

    _repr_keys = ("height_factor", "width_factor")

    def __init__(
        self,
        height_factor: float | Sequence[float],
        width_factor: float | Sequence[float] | None = None,
        fill_mode: str = "reflect",
        interpolation: str = "bilinear",
        seed: int | None = None,
        fill_value: float = 0.0,
        data_format: str = "channels_last",
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.height_factor = _bounds(height_factor, "height_factor", self._who)
        self.width_factor = (
            None if width_factor is None else _bounds(width_factor, "width_factor", self._who)
        )
        for bounds in (self.height_factor, self.width_factor or (0.0, 0.0)):
            if bounds[0] <= -1.0:
                raise ConfigError(f"{self._who}: zoom factors must be > -1, got {bounds}")
        self._init_fill(fill_mode, interpolation, fill_value)
        self._init_augment(seed, data_format)

    def _matrices(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        zoom_h = 1.0 + self._uniform(batch, *self.height_factor, x)  # (B,)
        zoom_w = (
            zoom_h
            if self.width_factor is None
            else 1.0 + self._uniform(batch, *self.width_factor, x)
        )
        zero = torch.zeros_like(zoom_h)
        return _affine(zoom_w, zero, zero, zoom_h, zero, zero)

    def _config(self) -> dict[str, Any]:
        width = None if self.width_factor is None else list(self.width_factor)
        return {"height_factor": list(self.height_factor), "width_factor": width,
                **super()._config()}  # fmt: skip


class RandomTranslation(_Resample):
    """Shifts each image by a random fraction of its height and width (0.1 = up to 10%
    either way, or a pair (low, high))."""

    _repr_keys = ("height_factor", "width_factor")

    def __init__(
        self,
        height_factor: float | Sequence[float],
        width_factor: float | Sequence[float],
        fill_mode: str = "reflect",
        interpolation: str = "bilinear",
        seed: int | None = None,
        fill_value: float = 0.0,
        data_format: str = "channels_last",
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.height_factor = _bounds(height_factor, "height_factor", self._who, limit=1.0)
        self.width_factor = _bounds(width_factor, "width_factor", self._who, limit=1.0)
        self._init_fill(fill_mode, interpolation, fill_value)
        self._init_augment(seed, data_format)

    def _matrices(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        dy = self._uniform(batch, *self.height_factor, x)  # (B,) fractions of the height
        dx = self._uniform(batch, *self.width_factor, x)
        one, zero = torch.ones_like(dx), torch.zeros_like(dx)
        return _affine(one, zero, zero, one, -2.0 * dx, -2.0 * dy)  # the image spans 2 units

    def _config(self) -> dict[str, Any]:
        return {"height_factor": list(self.height_factor),
                "width_factor": list(self.width_factor), **super()._config()}  # fmt: skip


class RandomCrop(_Augment):
    """A random height x width window of each image while training; at inference (or for
    images smaller than the window) the centred largest window of that aspect ratio,
    resized to height x width (bilinear), so the output size never changes."""

    _repr_keys = ("height", "width")

    def __init__(
        self,
        height: int,
        width: int,
        seed: int | None = None,
        data_format: str = "channels_last",
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.height = positive_int(height, "height", self._who)
        self.width = positive_int(width, "width", self._who)
        self._init_augment(seed, data_format)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        super().compute_output_shape(input_shape)
        if self.data_format == "channels_last":
            return (self.height, self.width, input_shape[2])
        return (input_shape[0], self.height, self.width)

    def call(self, x: Tensor) -> Tensor:
        x = self._nchw(x)  # (B, C, H, W)
        height, width = x.shape[2], x.shape[3]
        if not self.training or height < self.height or width < self.width:
            return self._back(self._smart_resize(x))
        batch = x.shape[0]
        top = (self._uniform(batch, 0.0, 1.0, x) * (height - self.height + 1)).long()
        left = (self._uniform(batch, 0.0, 1.0, x) * (width - self.width + 1)).long()
        top = top.clamp(max=height - self.height)  # (B,)
        left = left.clamp(max=width - self.width)
        rows = top[:, None] + torch.arange(self.height, device=x.device)  # (B, h)
        cols = left[:, None] + torch.arange(self.width, device=x.device)  # (B, w)
        b = torch.arange(batch, device=x.device)[:, None, None]
        hwc = x.permute(0, 2, 3, 1)  # (B, H, W, C) view
        crop = hwc[b, rows[:, :, None], cols[:, None, :]]  # (B, h, w, C)
        return crop if self.data_format == "channels_last" else crop.permute(0, 3, 1, 2)

    def _smart_resize(self, x: Tensor) -> Tensor:
        height, width = x.shape[2], x.shape[3]
        crop_h = min(height, int(width * self.height / self.width))
        crop_w = min(width, int(height * self.width / self.height))
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        window = x[:, :, top : top + crop_h, left : left + crop_w]
        if (crop_h, crop_w) == (self.height, self.width):
            return window
        return F.interpolate(
            window, size=(self.height, self.width), mode="bilinear", align_corners=False
        )

    def _config(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, **super()._config()}
