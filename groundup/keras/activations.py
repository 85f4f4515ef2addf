"""Activation functions by their Keras names: what `Dense(..., activation="relu")` looks up.

Each entry maps a tensor to a tensor with Keras 3 semantics (softmax over the last axis,
leaky_relu slope 0.2, exact gelu, hard_sigmoid = relu6(x + 3) / 6). Where a torch function
already has those semantics it is registered directly, so a layer calls it with no wrapper.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from groundup.errors import ConfigError
from groundup.registry import lookup

ActivationFn = Callable[[Tensor], Tensor]


def linear(x: Tensor) -> Tensor:
    """Identity: what `activation=None` or `"linear"` means."""
    return x


def softmax(x: Tensor) -> Tensor:
    """Softmax over the last axis (class scores are always last, channels-last layout)."""
    return torch.softmax(x, dim=-1)


def log_softmax(x: Tensor) -> Tensor:
    """Log-softmax over the last axis."""
    return torch.log_softmax(x, dim=-1)


def leaky_relu(x: Tensor) -> Tensor:
    """Leaky ReLU with Keras 3's negative slope 0.2 (torch's default is 0.01)."""
    return F.leaky_relu(x, negative_slope=0.2)


def hard_silu(x: Tensor) -> Tensor:
    """x * hard_sigmoid(x)."""
    return F.hardswish(x)


ACTIVATIONS: dict[str, ActivationFn] = {
    "linear": linear,
    "relu": F.relu,
    "relu6": F.relu6,
    "gelu": F.gelu,  # exact (erf) form, like Keras 3's default approximate=False
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "leaky_relu": leaky_relu,
    "elu": F.elu,
    "selu": F.selu,
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "hard_sigmoid": F.hardsigmoid,
    "hard_silu": hard_silu,
    "hard_swish": hard_silu,
    "log_sigmoid": F.logsigmoid,
    "exponential": torch.exp,
}

# Reverse map for callables the user passes directly (first name wins for aliases).
_NAMES: dict[int, str] = {}
for _name, _fn in ACTIVATIONS.items():
    _NAMES.setdefault(id(_fn), _name)


def get_activation(activation: str | ActivationFn | None) -> ActivationFn:
    """Resolve a name, a callable or None (identity) to a function of one tensor."""
    if activation is None:
        return linear
    if isinstance(activation, str):
        return lookup(ACTIVATIONS, activation, "activation")
    if callable(activation):
        return activation
    raise ConfigError(
        f"activation must be a name (e.g. 'relu'), a callable or None, got "
        f"{type(activation).__name__}; valid names: {', '.join(sorted(ACTIVATIONS))}"
    )


def activation_name(activation: str | ActivationFn | None) -> str | None:
    """The registry name of an activation, or None when it is not registered (custom)."""
    if activation is None:
        return "linear"
    if isinstance(activation, str):
        lookup(ACTIVATIONS, activation, "activation")  # validates, with did-you-mean
        return activation.lower()
    return _NAMES.get(id(activation))


get = get_activation  # Keras's keras.activations.get(identifier)
