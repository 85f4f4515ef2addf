"""BatchNormalization and LayerNormalization with Keras' arguments and defaults.

Axes are Keras axes: they count the batch axis (axis=-1 is the channels of (B, H, W, C);
axis=1 is the features of (B, F)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groundup.errors import ConfigError, ShapeError
from groundup.keras.layers.base import Layer, Shape, known, positive_float, unit_float
from groundup.keras.layers.initializers import check_initializer, initialize
from groundup.keras.regularizers import RegularizerLike, get_regularizer


def _axis_index(axis: int, rank: int, who: str) -> int:
    """Normalize a Keras axis against the full rank (batch included); the batch axis is refused."""
    if not -rank <= axis < rank or axis % rank == 0:
        raise ShapeError(
            f"{who}: axis {axis} is not a feature axis of inputs of rank {rank} "
            f"(batch axis included); use axis=-1 for the last axis"
        )
    return axis % rank


class _Affine(Layer):
    """The gamma (scale) and beta (center) that both normalization layers learn."""

    supports_masking = True

    def _init_affine(
        self,
        center: bool,
        scale: bool,
        beta_initializer: str,
        gamma_initializer: str,
        beta_regularizer: RegularizerLike,
        gamma_regularizer: RegularizerLike,
    ) -> None:
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = check_initializer(beta_initializer)
        self.gamma_initializer = check_initializer(gamma_initializer)
        self.beta_regularizer = get_regularizer(beta_regularizer)
        self.gamma_regularizer = get_regularizer(gamma_regularizer)

    def _build_affine(self, shape: tuple[int, ...]) -> None:
        self.gamma = nn.Parameter(torch.empty(shape)) if self.scale else None
        self.beta = nn.Parameter(torch.empty(shape)) if self.center else None
        if self.gamma is not None:
            initialize(self.gamma_initializer, self.gamma)
            self._add_regularizer("gamma", self.gamma_regularizer)
        if self.beta is not None:
            initialize(self.beta_initializer, self.beta)
            self._add_regularizer("beta", self.beta_regularizer)

    def _affine_config(self) -> dict[str, Any]:
        return {
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": self.beta_initializer,
            "gamma_initializer": self.gamma_initializer,
            "beta_regularizer": self._reg_config(self.beta_regularizer),
            "gamma_regularizer": self._reg_config(self.gamma_regularizer),
        }


class BatchNormalization(_Affine):
    """Normalizes each feature/channel with batch statistics while training and with moving
    averages at inference.

    Keras semantics: `moving = momentum * moving + (1 - momentum) * batch`, with the biased
    batch variance (divided by n, as Keras computes it). Trap: torch's fused kernel would
    update its running variance with the unbiased one (n - 1) and weighs the *new* batch by
    its momentum, so the kernel only normalizes here and the moving statistics are updated
    beside it, from the same batch.
    """

    _repr_keys = ("axis", "momentum", "epsilon")

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: str = "zeros",
        gamma_initializer: str = "ones",
        moving_mean_initializer: str = "zeros",
        moving_variance_initializer: str = "ones",
        beta_regularizer: RegularizerLike = None,
        gamma_regularizer: RegularizerLike = None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ConfigError(f"{self._who}: axis must be an int, got {axis!r}")
        self.axis = axis
        self.momentum = unit_float(momentum, "momentum", self._who, closed=True)
        self.epsilon = positive_float(epsilon, "epsilon", self._who)
        self._init_affine(
            center, scale, beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer
        )
        self.moving_mean_initializer = check_initializer(moving_mean_initializer)
        self.moving_variance_initializer = check_initializer(moving_variance_initializer)
        self._rank = -1
        self._ax = -1
        self.num_features = -1

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        _axis_index(self.axis, len(input_shape) + 1, self._who)
        return tuple(input_shape)

    def _build(self, input_shape: Shape) -> None:
        self._rank = len(input_shape) + 1
        self._ax = _axis_index(self.axis, self._rank, self._who)
        n = self.num_features = known(
            input_shape[self._ax - 1], "size of the normalized axis", self._who
        )
        self._build_affine((n,))
        self.register_buffer("moving_mean", torch.empty(n))
        self.register_buffer("moving_variance", torch.empty(n))
        initialize(self.moving_mean_initializer, self.moving_mean)
        initialize(self.moving_variance_initializer, self.moving_variance)

    def call(self, x: Tensor) -> Tensor:
        if x.dim() != self._rank or x.shape[self._ax] != self.num_features:
            raise ShapeError(
                f"{self._who} expects inputs of rank {self._rank} with {self.num_features} "
                f"features on axis {self.axis}, got {tuple(x.shape)}"
            )
        moved = x if self._ax == 1 else x.movedim(self._ax, 1)  # (B, C, ...) view
        if self.training:
            self._update_moving(moved)
            stats: tuple[Tensor | None, Tensor | None] = (None, None)  # batch statistics
        else:
            stats = (self.moving_mean, self.moving_variance)
        y = F.batch_norm(moved, *stats, self.gamma, self.beta, self.training, 0.0, self.epsilon)
        return y if self._ax == 1 else y.movedim(1, self._ax)

    @torch.no_grad()
    def _update_moving(self, moved: Tensor) -> None:
        dims = [d for d in range(moved.dim()) if d != 1]
        var, mean = torch.var_mean(moved, dim=dims, correction=0)  # biased, as Keras
        self.moving_mean.lerp_(mean.to(self.moving_mean.dtype), 1.0 - self.momentum)
        self.moving_variance.lerp_(var.to(self.moving_variance.dtype), 1.0 - self.momentum)

    def _config(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "moving_mean_initializer": self.moving_mean_initializer,
            "moving_variance_initializer": self.moving_variance_initializer,
            **self._affine_config(),
        }


class LayerNormalization(_Affine):
    """Normalizes each sample over `axis` (an int or a list of Keras axes), then scales by
    gamma and shifts by beta, both shaped like the normalized axes."""

    _repr_keys = ("axis", "epsilon")

    def __init__(
        self,
        axis: int | Sequence[int] = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: str = "zeros",
        gamma_initializer: str = "ones",
        beta_regularizer: RegularizerLike = None,
        gamma_regularizer: RegularizerLike = None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        axes = [axis] if isinstance(axis, int) and not isinstance(axis, bool) else axis
        if (
            not isinstance(axes, Sequence)
            or not axes
            or any(isinstance(a, bool) or not isinstance(a, int) for a in axes)
        ):
            raise ConfigError(f"{self._who}: axis must be an int or a list of ints, got {axis!r}")
        self.axis: int | list[int] = axis if isinstance(axis, int) else list(axis)
        self._axes_spec = list(axes)
        self.epsilon = positive_float(epsilon, "epsilon", self._who)
        self._init_affine(
            center, scale, beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer
        )
        self._axes: list[int] = []
        self._rank = -1
        self._trailing = True
        self._param_shape: tuple[int, ...] = ()
        self._sizes: list[tuple[int, int]] = []  # (axis, size) checked per call

    def _resolve(self, rank: int) -> list[int]:
        axes = sorted({_axis_index(a, rank, self._who) for a in self._axes_spec})
        if len(axes) != len(self._axes_spec):
            raise ConfigError(f"{self._who}: axis lists the same axis twice: {self.axis!r}")
        return axes

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        self._resolve(len(input_shape) + 1)
        return tuple(input_shape)

    def _build(self, input_shape: Shape) -> None:
        self._rank = len(input_shape) + 1
        self._axes = self._resolve(self._rank)
        full = (None, *input_shape)
        sizes = [known(full[a], f"size of axis {a}", self._who) for a in self._axes]
        self._sizes = list(zip(self._axes, sizes, strict=True))
        # F.layer_norm (fused) handles trailing axes; other axis sets take the explicit path.
        self._trailing = self._axes == list(range(self._rank - len(self._axes), self._rank))
        if self._trailing:
            self._param_shape = tuple(sizes)
        else:  # broadcastable against the full input, e.g. (1, H, 1, C) for axes [1, 3]
            self._param_shape = tuple(
                full[a] if a in self._axes else 1 for a in range(1, self._rank)
            )
        self._build_affine(self._param_shape)

    def call(self, x: Tensor) -> Tensor:
        if x.dim() != self._rank or any(x.shape[a] != n for a, n in self._sizes):
            raise ShapeError(
                f"{self._who} expects inputs of rank {self._rank} with sizes "
                f"{dict(self._sizes)} on the normalized axes, got {tuple(x.shape)}"
            )
        if self._trailing:
            return F.layer_norm(x, self._param_shape, self.gamma, self.beta, self.epsilon)
        var, mean = torch.var_mean(x, dim=self._axes, correction=0, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.epsilon)
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None:
            y = y + self.beta
        return y

    def _config(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "epsilon": self.epsilon,
            **self._affine_config(),
        }
