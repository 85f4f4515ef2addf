"""Weight penalties with Keras semantics: L1 = l1 * sum(|w|), L2 = l2 * sum(w**2).

Note the Keras L2 has no 1/2 factor, so `L2(l2)` equals weight decay of `2 * l2` under SGD.
A layer adds its penalties to the loss through `Layer.regularization_loss()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from groundup.errors import ConfigError
from groundup.registry import construct, lookup


def _coefficient(value: Any, arg: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{owner}: {arg} must be a number >= 0, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{owner}: {arg} must be a finite number >= 0, got {value!r}")
    return value


class Regularizer:
    """Base class: a callable from a weight tensor to a scalar penalty."""

    def __call__(self, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """JSON-serializable description; `get_regularizer` rebuilds it."""
        return {"type": type(self).__name__, **vars(self)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]  # mutable value object


class L1(Regularizer):
    """l1 * sum(|w|): pushes weights to exactly zero (sparse)."""

    def __init__(self, l1: float = 0.01) -> None:
        self.l1 = _coefficient(l1, "l1", "L1")

    def __call__(self, weight: Tensor) -> Tensor:
        return self.l1 * weight.abs().sum()


class L2(Regularizer):
    """l2 * sum(w**2): keeps weights small (Keras spelling: no 1/2 factor)."""

    def __init__(self, l2: float = 0.01) -> None:
        self.l2 = _coefficient(l2, "l2", "L2")

    def __call__(self, weight: Tensor) -> Tensor:
        return self.l2 * weight.square().sum()


class L1L2(Regularizer):
    """l1 * sum(|w|) + l2 * sum(w**2); a zero coefficient costs nothing."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1 = _coefficient(l1, "l1", "L1L2")
        self.l2 = _coefficient(l2, "l2", "L1L2")

    def __call__(self, weight: Tensor) -> Tensor:
        if self.l1 == 0.0:
            return self.l2 * weight.square().sum()
        penalty = self.l1 * weight.abs().sum()
        if self.l2 != 0.0:
            penalty = penalty + self.l2 * weight.square().sum()
        return penalty


REGULARIZERS: dict[str, type[Regularizer]] = {"l1": L1, "l2": L2, "l1l2": L1L2, "l1_l2": L1L2}


def l1_l2(l1: float = 0.01, l2: float = 0.01) -> L1L2:
    """Both penalties at once, 0.01 each by default (Keras 2's helper of the same name)."""
    return L1L2(l1=l1, l2=l2)


RegularizerLike = Regularizer | Callable[[Tensor], Tensor] | str | Mapping[str, Any] | None


def get_regularizer(spec: RegularizerLike) -> Regularizer | Callable[[Tensor], Tensor] | None:
    """Resolve None, a name ("l1", "l2", "l1_l2"), a dict or a callable to a regularizer.

    Dicts are `{"type": "L2", "l2": 1e-4}` (what `get_config` writes) or Keras'
    `{"class_name": "L2", "config": {"l2": 1e-4}}`. The name "l1_l2" gives 0.01 for both
    coefficients (a no-op `L1L2()` would be a surprising thing to ask for by name).
    """
    if spec is None or isinstance(spec, Regularizer):
        return spec
    if isinstance(spec, str):
        if spec.lower() in ("l1_l2", "l1l2"):
            return l1_l2()
        return lookup(REGULARIZERS, spec, "regularizer")()
    if isinstance(spec, Mapping):
        return _from_dict(spec)
    if callable(spec):
        return spec
    raise ConfigError(
        f"regularizer must be a name ('l1', 'l2', 'l1_l2'), a dict, a callable or None, "
        f"got {type(spec).__name__}"
    )


def _from_dict(spec: Mapping[str, Any]) -> Regularizer:
    if "class_name" in spec:  # Keras' serialized form
        name, kwargs = spec["class_name"], dict(spec.get("config") or {})
    else:
        kwargs = dict(spec)
        name = kwargs.pop("type", None)
    if name is None:
        raise ConfigError(
            f"regularizer dict needs a 'type' key (one of L1, L2, L1L2), got keys {sorted(spec)}"
        )
    cls = lookup(REGULARIZERS, str(name), "regularizer")
    return construct(cls, kwargs, f"regularizer {cls.__name__}")


def serialize_regularizer(reg: Regularizer | Callable[[Tensor], Tensor] | None, owner: str) -> Any:
    """Config value for a layer's regularizer argument; custom callables cannot be saved."""
    if reg is None:
        return None
    if isinstance(reg, Regularizer):
        return reg.get_config()
    raise ConfigError(
        f"{owner} uses a custom regularizer {reg!r} that cannot be saved in a config; "
        f"use gu.regularizers.L1, L2 or L1L2 instead"
    )
