"""Core layers: Input, Dense, Activation, Dropout, Flatten, Reshape, Rescaling, Embedding."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groundup.errors import ConfigError, DataError, ShapeError
from groundup.keras.activations import ActivationFn
from groundup.keras.layers.base import (
    Layer,
    Shape,
    as_shape,
    known,
    positive_int,
    unit_float,
)
from groundup.keras.layers.initializers import check_initializer, initialize
from groundup.keras.regularizers import RegularizerLike, get_regularizer


class Input(Layer):
    """Marks the per-sample input shape at the head of a Sequential (Keras' `Input`).

    None in `shape` leaves an axis free (e.g. sequence length). Passes inputs through after
    checking their known axes, so a wrong input fails here with a clear message.
    """

    _repr_keys = ("input_shape",)

    def __init__(self, shape: Sequence[int | None], name: str | None = None) -> None:
        super().__init__(input_shape=as_shape(shape, "Input: shape"), name=name)
        self._checks = [(i + 1, d) for i, d in enumerate(self.input_shape) if d is not None]
        self._rank = len(self.input_shape) + 1

    def call(self, x: Tensor) -> Tensor:
        if x.dim() != self._rank or any(x.shape[i] != d for i, d in self._checks):
            raise ShapeError(
                f"{self._who} expects inputs of shape (batch, "
                f"{', '.join(str(d) for d in self.input_shape)}), got {tuple(x.shape)}"
            )
        return x

    def get_config(self) -> dict[str, Any]:
        return {"type": "Input", "name": self.name, "shape": list(self.input_shape)}


class Dense(Layer):
    """`activation(x @ kernel + bias)` on the last axis; kernel is (in_features, units).

    Inputs of any rank >= 2 work: (B, F) -> (B, units), (B, T, F) -> (B, T, units).
    """

    supports_masking = True
    _repr_keys = ("units", "activation")

    def __init__(
        self,
        units: int,
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
        self.units = positive_int(units, "units", self._who)
        self._set_activation(activation)
        self._init_kernel_bias(
            use_bias, kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        )
        self.in_features = -1  # set by build; the per-call width check compares against it

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        if len(input_shape) < 1:
            raise ShapeError(
                f"{self._who} needs inputs of shape (batch, features), got per-sample shape "
                f"{tuple(input_shape)}; reshape scalars to (batch, 1)"
            )
        return (*input_shape[:-1], self.units)

    def _build(self, input_shape: Shape) -> None:
        self.in_features = known(input_shape[-1], "input width (last axis)", self._who)
        n_in = self.in_features
        self._build_kernel_bias((n_in, self.units), self.units, n_in, self.units)

    def call(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[-1] != self.in_features:
            got = f"width {x.shape[-1]}" if x.dim() >= 2 else f"shape {tuple(x.shape)}"
            raise ShapeError(f"{self._who} expects inputs of width {self.in_features}, got {got}")
        # F.linear wants (out, in); kernel.t() is a free view and linear runs x @ kernel directly.
        return F.linear(x, self.kernel.t(), self.bias)

    def _config(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "activation": self._activation_config(),
            **self._kernel_bias_config(),
        }


class Activation(Layer):
    """Applies an activation function; `forward_logits` is the identity."""

    supports_masking = True
    _repr_keys = ("activation",)

    def __init__(
        self,
        activation: str | ActivationFn | None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self._set_activation(activation)

    def call(self, x: Tensor) -> Tensor:
        return x

    def _config(self) -> dict[str, Any]:
        return {"activation": self._activation_config()}


class Dropout(Layer):
    """Zeroes a fraction `rate` of inputs while training, scaling the rest by 1/(1-rate)."""

    supports_masking = True
    _repr_keys = ("rate",)

    def __init__(
        self,
        rate: float,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.rate = unit_float(rate, "rate", self._who)

    def call(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.rate, self.training)

    def _config(self) -> dict[str, Any]:
        return {"rate": self.rate}


def _numel(shape: Sequence[int | None]) -> int | None:
    return None if any(d is None for d in shape) else math.prod(shape)


class Flatten(Layer):
    """(B, d1, d2, ...) -> (B, d1*d2*...). Channels-last images flatten in (H, W, C) order,
    as in Keras, so Dense weights line up with a Keras model's."""

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        return (_numel(input_shape),)

    def call(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)  # (B, H*W*C): a view of contiguous channels-last data


class Reshape(Layer):
    """Reshape each sample to `target_shape`; one axis may be -1 (inferred)."""

    _repr_keys = ("target_shape",)

    def __init__(
        self,
        target_shape: Sequence[int],
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        if isinstance(target_shape, int) and not isinstance(target_shape, bool):
            target_shape = (target_shape,)
        bad = not isinstance(target_shape, Sequence) or any(
            isinstance(d, bool) or not isinstance(d, int) or (d <= 0 and d != -1)
            for d in target_shape
        )
        if bad or list(target_shape).count(-1) > 1:
            raise ConfigError(
                f"{self._who}: target_shape must be positive ints with at most one -1, "
                f"got {target_shape!r}"
            )
        self.target_shape = tuple(target_shape)
        self._sample_numel: int | None = None  # per-sample size, checked per call when known

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        total = _numel(input_shape)
        fixed = math.prod(d for d in self.target_shape if d != -1)
        if total is None:
            return tuple(None if d == -1 else d for d in self.target_shape)
        if (-1 in self.target_shape and total % fixed) or (
            -1 not in self.target_shape and total != fixed
        ):
            raise ShapeError(
                f"{self._who} cannot reshape samples of shape {tuple(input_shape)} ({total} "
                f"values) to {self.target_shape}"
            )
        return tuple(total // fixed if d == -1 else d for d in self.target_shape)

    def _build(self, input_shape: Shape) -> None:
        self._sample_numel = _numel(input_shape)

    def call(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        if self._sample_numel is not None and x.numel() != batch * self._sample_numel:
            raise ShapeError(
                f"{self._who} was built for samples of {self._sample_numel} values, got "
                f"shape {tuple(x.shape[1:])}"
            )
        return x.reshape(batch, *self.target_shape)

    def _config(self) -> dict[str, Any]:
        return {"target_shape": list(self.target_shape)}


class Rescaling(Layer):
    """x * scale + offset, e.g. `Rescaling(1 / 255)` for pixel values."""

    supports_masking = True
    _repr_keys = ("scale", "offset")

    def __init__(
        self,
        scale: float,
        offset: float = 0.0,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        for arg, value in (("scale", scale), ("offset", offset)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{self._who}: {arg} must be a number, got {value!r}")
        self.scale, self.offset = float(scale), float(offset)

    def call(self, x: Tensor) -> Tensor:
        return x * self.scale + self.offset if self.offset else x * self.scale

    def _config(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset": self.offset}


class Embedding(Layer):
    """Integer ids (B, ...) -> vectors (B, ..., output_dim); table is (input_dim, output_dim).

    Ids must lie in [0, input_dim): they are not range-checked here (that would need a device
    sync every step); torch raises an IndexError (CPU) or a device assert (GPU) otherwise.
    With `mask_zero=True`, id 0 is padding and the layer gives the mask the next layers skip
    (an LSTM carries its state over padded steps); id 0 still has a row, as in Keras.
    """

    _repr_keys = ("input_dim", "output_dim")

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        embeddings_initializer: str = "uniform",
        embeddings_regularizer: RegularizerLike = None,
        mask_zero: bool = False,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero  # as Keras; compute_mask makes the mask
        self.input_dim = positive_int(input_dim, "input_dim", self._who)
        self.output_dim = positive_int(output_dim, "output_dim", self._who)
        self.embeddings_initializer = check_initializer(embeddings_initializer)
        self.embeddings_regularizer = get_regularizer(embeddings_regularizer)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        return (*input_shape, self.output_dim)

    def _build(self, input_shape: Shape) -> None:
        self.embeddings = nn.Parameter(torch.empty(self.input_dim, self.output_dim))
        initialize(self.embeddings_initializer, self.embeddings, self.input_dim, self.output_dim)
        self._add_regularizer("embeddings", self.embeddings_regularizer)

    def call(self, x: Tensor) -> Tensor:
        if x.is_floating_point() or x.is_complex():
            raise DataError(
                f"{self._who} expects integer token ids, got {x.dtype}; convert with x.long()"
            )
        return F.embedding(x, self.embeddings)

    def compute_mask(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor | None:
        """With mask_zero, id 0 is padding: the mask is `inputs != 0` (True = a real token)."""
        return inputs != 0 if self.mask_zero else None

    def _config(self) -> dict[str, Any]:
        return {
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "embeddings_initializer": self.embeddings_initializer,
            "embeddings_regularizer": self._reg_config(self.embeddings_regularizer),
            "mask_zero": self.mask_zero,
        }
