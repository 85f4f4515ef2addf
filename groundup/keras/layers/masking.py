"""Masking and Lambda: a layer that makes a mask from padded values, and one that wraps a
Python function (usable in a model, but not in a saved config)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from groundup.errors import ConfigError, ShapeError
from groundup.keras.layers.base import Layer, Shape, as_shape


class Masking(Layer):
    """Steps whose features all equal `mask_value` are padding: they are zeroed, and the mask
    (True = a real step) goes on to the layers after (an LSTM then skips them)."""

    supports_masking = True
    _repr_keys = ("mask_value",)

    def __init__(
        self,
        mask_value: float = 0.0,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        if isinstance(mask_value, bool) or not isinstance(mask_value, (int, float)):
            raise ConfigError(f"{self._who}: mask_value must be a number, got {mask_value!r}")
        self.mask_value = float(mask_value)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        if len(input_shape) < 1:
            raise ShapeError(
                f"{self._who} expects inputs (batch, ..., features), got per-sample shape "
                f"{tuple(input_shape)}"
            )
        return tuple(input_shape)

    def compute_mask(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        return (inputs != self.mask_value).any(dim=-1)  # (B, ...) without the feature axis

    def call(self, x: Tensor) -> Tensor:
        keep = self.compute_mask(x)[..., None]
        return x * keep.to(x.dtype)

    def _config(self) -> dict[str, Any]:
        return {"mask_value": self.mask_value}


class Lambda(Layer):
    """`function(*inputs, **arguments)` as a layer.

    The output shape is `output_shape` (a shape or a function of the input shape) or, when
    not given, found by running `function` once on zeros of the input shape (which needs
    every axis known). `mask`, if given, is `mask(inputs, mask) -> new mask`. A function has
    no JSON form: `get_config` (and so saving a model) refuses, naming the layer; write a
    small Layer subclass for a model you mean to save.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        output_shape: Sequence[int | None] | Callable[..., Any] | None = None,
        mask: Callable[..., Any] | None = None,
        arguments: Mapping[str, Any] | None = None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        if not callable(function):
            raise ConfigError(
                f"{self._who}: function must be callable, got {type(function).__name__}; a "
                f"Lambda cannot be rebuilt from a config"
            )
        if output_shape is not None and not callable(output_shape):
            output_shape = as_shape(output_shape, f"{self._who}: output_shape")
        if mask is not None and not callable(mask):
            raise ConfigError(f"{self._who}: mask must be None or a function, got {mask!r}")
        if arguments is not None and not isinstance(arguments, Mapping):
            raise ConfigError(f"{self._who}: arguments must be a dict, got {arguments!r}")
        self.function = function
        self.output_shape = output_shape
        self._mask_fn = mask
        self.arguments = dict(arguments or {})

    def compute_output_shape(self, input_shape: Any, *more_shapes: Any) -> Any:
        if callable(self.output_shape):
            return self.output_shape(input_shape, *more_shapes)
        if self.output_shape is not None:
            return self.output_shape
        shapes = (input_shape, *more_shapes)
        flat = [d for s in shapes for d in _dims(s)]
        if any(d is None for d in flat):
            raise ShapeError(
                f"{self._who} cannot find its output shape for inputs of per-sample shape "
                f"{input_shape} (an axis is unknown); pass output_shape=..."
            )
        try:
            with torch.no_grad():
                out = self.function(*(_zeros(s) for s in shapes), **self.arguments)
        except Exception as exc:  # the user's function: report it as a shape problem
            raise ShapeError(
                f"{self._who}: running the function on zeros of per-sample shape {input_shape} "
                f"to find its output shape failed ({type(exc).__name__}: {exc}); pass "
                f"output_shape=..."
            ) from None
        return _shape_of_output(out)

    def call(self, *inputs: Any) -> Any:
        return self.function(*inputs, **self.arguments)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return None if self._mask_fn is None else self._mask_fn(inputs, mask)

    def get_config(self) -> dict[str, Any]:
        raise ConfigError(
            f"{self._who} wraps a Python function, which a saved config cannot hold; replace "
            f"it with a Layer subclass (or a registered layer) before saving"
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Layer:
        raise ConfigError(
            "a Lambda layer cannot be rebuilt from a config (it wraps a Python function); "
            "build it in code: gu.layers.Lambda(fn)"
        )


def _dims(shape: Any) -> list[int | None]:
    if isinstance(shape, list):
        return [d for s in shape for d in s]
    return list(shape)


def _zeros(shape: Any) -> Any:
    if isinstance(shape, list):
        return [torch.zeros(1, *s) for s in shape]
    return torch.zeros(1, *shape)


def _shape_of_output(out: Any) -> Any:
    if isinstance(out, (list, tuple)):
        return [tuple(t.shape[1:]) for t in out]
    return tuple(out.shape[1:])
