"""Weight initializers by their Keras names, with Keras' fan conventions and defaults.

Every initializer takes `(tensor, fan_in, fan_out)` and fills the tensor in place: the layer
knows its fans (a Dense kernel (in, out), a conv kernel (out, in, kh, kw), an LSTM kernel
with four gates), so the initializer does not have to guess them from the tensor's layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from groundup.errors import ConfigError
from groundup.registry import lookup

Initializer = Callable[[Tensor, int, int], None]

# Keras draws "normal" variance-scaling weights from a normal truncated at 2 standard
# deviations, and widens the stddev by this factor so the variance stays scale / n.
_TRUNCATION_STD = 0.87962566103423978


def _truncated(tensor: Tensor, scale: float, n: int) -> None:
    std = math.sqrt(scale / max(1, n)) / _TRUNCATION_STD
    nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def _uniform(tensor: Tensor, scale: float, n: int) -> None:
    limit = math.sqrt(3.0 * scale / max(1, n))
    nn.init.uniform_(tensor, -limit, limit)


def glorot_uniform(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    """U(-sqrt(6 / (fan_in + fan_out)), +...): Keras' default kernel initializer."""
    _uniform(tensor, 2.0, fan_in + fan_out)


def glorot_normal(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    _truncated(tensor, 2.0, fan_in + fan_out)


def he_uniform(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    _uniform(tensor, 2.0, fan_in)


def he_normal(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    _truncated(tensor, 2.0, fan_in)


def lecun_uniform(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    _uniform(tensor, 1.0, fan_in)


def lecun_normal(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    _truncated(tensor, 1.0, fan_in)


def orthogonal(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    """Orthogonal rows or columns: Keras' default for recurrent kernels (gain 1)."""
    nn.init.orthogonal_(tensor)


def zeros(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    nn.init.zeros_(tensor)


def ones(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    nn.init.ones_(tensor)


def normal(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    """N(0, 0.05), Keras' RandomNormal defaults."""
    nn.init.normal_(tensor, 0.0, 0.05)


def uniform(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    """U(-0.05, 0.05), Keras' RandomUniform defaults (and its Embedding default)."""
    nn.init.uniform_(tensor, -0.05, 0.05)


def truncated_normal(tensor: Tensor, fan_in: int, fan_out: int) -> None:
    nn.init.trunc_normal_(tensor, 0.0, 0.05, -0.1, 0.1)


INITIALIZERS: dict[str, Initializer] = {
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "lecun_uniform": lecun_uniform,
    "lecun_normal": lecun_normal,
    "orthogonal": orthogonal,
    "zeros": zeros,
    "ones": ones,
    "normal": normal,
    "random_normal": normal,
    "uniform": uniform,
    "random_uniform": uniform,
    "truncated_normal": truncated_normal,
}


def check_initializer(name: str) -> str:
    """Validate an initializer name at construction time; returns it lowercased."""
    if not isinstance(name, str):
        raise ConfigError(
            f"initializers are given by name, got {type(name).__name__}; "
            f"valid names: {', '.join(sorted(INITIALIZERS))}"
        )
    lookup(INITIALIZERS, name, "initializer")
    return name.lower()


def initialize(name: str, tensor: Tensor, fan_in: int = 1, fan_out: int = 1) -> None:
    """Fill `tensor` in place with the named initializer."""
    with torch.no_grad():
        INITIALIZERS[name](tensor, fan_in, fan_out)
