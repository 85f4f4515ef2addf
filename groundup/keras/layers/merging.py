"""Merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum and Concatenate.

Each is called with a list of tensors (`Add()([a, b])`), so `build` and
`compute_output_shape` get the list of their per-sample shapes. Element-wise merges accept
shapes that broadcast as Keras allows (equal sizes, or 1 on one side); Concatenate needs equal
shapes except on its axis. A merge carries masks on: a step is real where every input's is.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from typing import Any

import torch
from torch import Tensor

from groundup.errors import ConfigError, ShapeError
from groundup.keras.layers.base import Layer, Shape


class _Merge(Layer):
    """The shared list checks and mask rule; subclasses give `_combine`."""

    supports_masking = True
    _exactly: int | None = None  # Subtract takes exactly two inputs

    def _shapes(self, input_shape: Any) -> list[Shape]:
        ok = isinstance(input_shape, list) and all(isinstance(s, tuple) for s in input_shape)
        if not ok or len(input_shape) < 2 or (self._exactly and len(input_shape) != self._exactly):
            need = f"exactly {self._exactly}" if self._exactly else "at least 2"
            got = f"{len(input_shape)} inputs" if ok else f"per-sample shape {input_shape}"
            raise ShapeError(
                f"{self._who} expects a list of {need} inputs, got {got}; call it as "
                f"{type(self).__name__}()([a, b])"
            )
        return input_shape

    def _inputs(self, inputs: Any) -> list[Tensor]:
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(t, Tensor) for t in inputs):
            raise ShapeError(
                f"{self._who} expects a list of tensors, got {type(inputs).__name__}; call it "
                f"as {type(self).__name__}()([a, b])"
            )
        self._shapes([tuple(t.shape[1:]) for t in inputs])
        return list(inputs)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Tensor | None:
        """True where every input's mask is (None when no input has one)."""
        masks = [m for m in (mask or []) if m is not None]
        return reduce(torch.logical_and, masks) if masks else None


class _Elementwise(_Merge):
    def compute_output_shape(self, input_shape: Any) -> Shape:
        shapes = self._shapes(input_shape)
        rank = max(len(s) for s in shapes)
        padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
        out: list[int | None] = []
        for sizes in zip(*padded, strict=True):
            known = {d for d in sizes if d is not None and d != 1}
            if len(known) > 1:
                raise ShapeError(
                    f"{self._who} expects inputs of one shape (or size 1 to broadcast), got "
                    f"per-sample shapes {[tuple(s) for s in shapes]}"
                )
            out.append(known.pop() if known else (None if None in sizes else 1))
        return tuple(out)

    def call(self, inputs: Sequence[Tensor]) -> Tensor:
        xs = self._inputs(inputs)
        self.compute_output_shape([tuple(t.shape[1:]) for t in xs])
        rank = max(t.dim() for t in xs)  # lower ranks gain axes after the batch, as Keras
        return self._combine(
            [t.reshape(t.shape[0], *[1] * (rank - t.dim()), *t.shape[1:]) for t in xs]
        )

    def _combine(self, xs: list[Tensor]) -> Tensor:
        raise NotImplementedError


class Add(_Elementwise):
    """The sum of the inputs (a residual connection)."""

    def _combine(self, xs: list[Tensor]) -> Tensor:
        return reduce(torch.add, xs)


class Subtract(_Elementwise):
    """inputs[0] - inputs[1]; exactly two inputs."""

    _exactly = 2

    def _combine(self, xs: list[Tensor]) -> Tensor:
        return xs[0] - xs[1]


class Multiply(_Elementwise):
    """The element-wise product of the inputs (gating)."""

    def _combine(self, xs: list[Tensor]) -> Tensor:
        return reduce(torch.mul, xs)


class Average(_Elementwise):
    """The element-wise mean of the inputs."""

    def _combine(self, xs: list[Tensor]) -> Tensor:
        return reduce(torch.add, xs) / len(xs)


class Maximum(_Elementwise):
    def _combine(self, xs: list[Tensor]) -> Tensor:
        return reduce(torch.maximum, xs)


class Minimum(_Elementwise):
    def _combine(self, xs: list[Tensor]) -> Tensor:
        return reduce(torch.minimum, xs)


class Concatenate(_Merge):
    """Join the inputs along `axis` (a Keras axis: it counts the batch axis; -1 = features)."""

    _repr_keys = ("axis",)

    def __init__(
        self,
        axis: int = -1,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
            raise ConfigError(
                f"{self._who}: axis must be a non-zero int (0 is the batch axis), got {axis!r}"
            )
        self.axis = axis

    def _sample_axis(self, rank: int) -> int:
        """The axis among the per-sample axes (rank = per-sample rank)."""
        ax = self.axis - 1 if self.axis > 0 else rank + self.axis
        if not 0 <= ax < rank:
            raise ShapeError(
                f"{self._who}: axis {self.axis} is outside inputs of per-sample rank {rank}"
            )
        return ax

    def compute_output_shape(self, input_shape: Any) -> Shape:
        shapes = self._shapes(input_shape)
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes):
            raise ShapeError(
                f"{self._who} expects inputs of one rank, got per-sample shapes {shapes}"
            )
        ax = self._sample_axis(rank)
        out = list(shapes[0])
        for i in range(rank):
            sizes = {s[i] for s in shapes}
            if i == ax:
                out[i] = None if None in sizes else sum(s[i] for s in shapes)
            elif len(sizes - {None}) > 1:
                raise ShapeError(
                    f"{self._who} (axis={self.axis}) expects equal sizes off the axis, got "
                    f"per-sample shapes {shapes}"
                )
            else:
                out[i] = next(iter(sizes - {None}), None)
        return tuple(out)

    def call(self, inputs: Sequence[Tensor]) -> Tensor:
        xs = self._inputs(inputs)
        self.compute_output_shape([tuple(t.shape[1:]) for t in xs])
        return torch.cat(xs, dim=self._sample_axis(xs[0].dim() - 1) + 1)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Tensor | None:
        """Off the last axis the masks are joined too (missing ones count as all real)."""
        if not mask or all(m is None for m in mask):
            return None
        rank = inputs[0].dim() - 1
        ax = self._sample_axis(rank)
        if ax == rank - 1 or any(m is not None and m.dim() != rank for m in mask):
            return super().compute_mask(inputs, mask)  # a feature axis: AND, as elementwise
        full = [  # masks are (B, all per-sample axes but the last)
            torch.ones(t.shape[:rank], dtype=torch.bool, device=t.device) if m is None else m
            for t, m in zip(inputs, mask, strict=True)
        ]
        return torch.cat(full, dim=ax + 1)

    def _config(self) -> dict[str, Any]:
        return {"axis": self.axis}
