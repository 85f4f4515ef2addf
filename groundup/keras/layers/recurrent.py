"""SimpleRNN, LSTM and GRU on batch-first sequences (B, T, F), on torch's fused kernels.

Each wraps one single-layer `torch.nn.RNN/LSTM/GRU` (cuDNN on GPUs), initialized the Keras
way: glorot_uniform input kernels, orthogonal recurrent kernels, zero biases, and for the LSTM
a forget-gate bias of 1 (`unit_forget_bias`). torch's GRU is Keras' GRU with reset_after=True
(the Keras default). Not supported: return_state, go_backwards, stateful, masking, dropout and
recurrent_dropout, and activations other than tanh (or relu for SimpleRNN), which the fused
kernels do not offer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from groundup.errors import ConfigError, ShapeError
from groundup.keras.layers.base import Layer, Shape, known, positive_int
from groundup.keras.layers.initializers import check_initializer, initialize
from groundup.keras.regularizers import RegularizerLike, get_regularizer


class _Recurrent(Layer):
    """Shared build/call of the three recurrent layers; subclasses pick the torch module."""

    _gates = 1
    _redundant_bias = True  # torch's bias_hh only duplicates bias_ih (not so in a GRU)
    _activations: tuple[str, ...] = ("tanh",)  # what the fused kernel offers
    _recurrent_activations: tuple[str, ...] = ("sigmoid",)  # () when there are no gates
    _repr_keys = ("units", "return_sequences")

    def __init__(
        self,
        units: int,
        activation: str,
        recurrent_activation: str | None,
        use_bias: bool,
        return_sequences: bool,
        kernel_initializer: str,
        recurrent_initializer: str,
        bias_initializer: str,
        kernel_regularizer: RegularizerLike,
        recurrent_regularizer: RegularizerLike,
        bias_regularizer: RegularizerLike,
        input_shape: Sequence[int | None] | None,
        name: str | None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.units = positive_int(units, "units", self._who)
        self.activation = self._check_fixed("activation", activation, self._activations)
        if self._recurrent_activations:
            self.recurrent_activation = self._check_fixed(
                "recurrent_activation", recurrent_activation, self._recurrent_activations
            )
        self.use_bias = bool(use_bias)
        self.return_sequences = bool(return_sequences)
        self.kernel_initializer = check_initializer(kernel_initializer)
        self.recurrent_initializer = check_initializer(recurrent_initializer)
        self.bias_initializer = check_initializer(bias_initializer)
        self.kernel_regularizer = get_regularizer(kernel_regularizer)
        self.recurrent_regularizer = get_regularizer(recurrent_regularizer)
        self.bias_regularizer = get_regularizer(bias_regularizer)
        self.in_features = -1

    def _check_fixed(self, arg: str, value: Any, allowed: Sequence[str]) -> str:
        key = value.lower() if isinstance(value, str) else value
        if key not in allowed:
            raise ConfigError(
                f"{self._who}: {arg}={value!r} is not supported (torch's fused kernels offer "
                f"{', '.join(repr(a) for a in allowed)})"
            )
        return key

    def _make_rnn(self, in_features: int) -> nn.RNNBase:
        raise NotImplementedError

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        if len(input_shape) != 2:
            raise ShapeError(
                f"{self._who} expects sequences of shape (batch, time, features), got "
                f"per-sample shape {tuple(input_shape)}"
            )
        return (input_shape[0], self.units) if self.return_sequences else (self.units,)

    def _build(self, input_shape: Shape) -> None:
        self.in_features = known(input_shape[-1], "feature width (last axis)", self._who)
        self.rnn = self._make_rnn(self.in_features)
        gated = self._gates * self.units
        # Keras' fans: kernel (F, gates*units), recurrent kernel (units, gates*units); torch
        # stores both transposed, which does not change the fans.
        initialize(self.kernel_initializer, self.rnn.weight_ih_l0, self.in_features, gated)
        initialize(self.recurrent_initializer, self.rnn.weight_hh_l0, self.units, gated)
        self._add_regularizer("rnn.weight_ih_l0", self.kernel_regularizer)
        self._add_regularizer("rnn.weight_hh_l0", self.recurrent_regularizer)
        if self.use_bias:
            # torch has two bias vectors where Keras' LSTM and SimpleRNN have one: their sum
            # is the Keras bias, so the second starts at zero. A GRU's recurrent bias is real.
            initialize(self.bias_initializer, self.rnn.bias_ih_l0)
            initialize(
                "zeros" if self._redundant_bias else self.bias_initializer, self.rnn.bias_hh_l0
            )
            self._add_regularizer("rnn.bias_ih_l0", self.bias_regularizer)
            self._add_regularizer("rnn.bias_hh_l0", self.bias_regularizer)

    def call(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ShapeError(
                f"{self._who} expects sequences (batch, time, {self.in_features}), got "
                f"{tuple(x.shape)}"
            )
        out, _ = self.rnn(x)  # (B, T, units)
        return out if self.return_sequences else out[:, -1]  # (B, units): the last step

    def _config(self) -> dict[str, Any]:
        gated = self._recurrent_activations
        gates = {"recurrent_activation": self.recurrent_activation} if gated else {}
        return {
            "units": self.units,
            "activation": self.activation,
            **gates,
            "use_bias": self.use_bias,
            "return_sequences": self.return_sequences,
            "kernel_initializer": self.kernel_initializer,
            "recurrent_initializer": self.recurrent_initializer,
            "bias_initializer": self.bias_initializer,
            "kernel_regularizer": self._reg_config(self.kernel_regularizer),
            "recurrent_regularizer": self._reg_config(self.recurrent_regularizer),
            "bias_regularizer": self._reg_config(self.bias_regularizer),
        }


class SimpleRNN(_Recurrent):
    """h_t = activation(x_t W + h_{t-1} U + b), activation "tanh" (default) or "relu".

    The activation is internal to the recurrence: `output_activation` is None.
    """

    _activations = ("tanh", "relu")
    _recurrent_activations = ()

    def __init__(
        self,
        units: int,
        activation: str = "tanh",
        use_bias: bool = True,
        return_sequences: bool = False,
        kernel_initializer: str = "glorot_uniform",
        recurrent_initializer: str = "orthogonal",
        bias_initializer: str = "zeros",
        kernel_regularizer: RegularizerLike = None,
        recurrent_regularizer: RegularizerLike = None,
        bias_regularizer: RegularizerLike = None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            units, activation, None, use_bias, return_sequences, kernel_initializer,
            recurrent_initializer, bias_initializer, kernel_regularizer, recurrent_regularizer,
            bias_regularizer, input_shape, name,
        )  # fmt: skip

    def _make_rnn(self, in_features: int) -> nn.RNNBase:
        return nn.RNN(
            in_features, self.units, nonlinearity=self.activation, bias=self.use_bias,
            batch_first=True,
        )  # fmt: skip


class LSTM(_Recurrent):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997), Keras defaults."""

    _gates = 4

    def __init__(
        self,
        units: int,
        activation: str = "tanh",
        recurrent_activation: str = "sigmoid",
        use_bias: bool = True,
        unit_forget_bias: bool = True,
        return_sequences: bool = False,
        kernel_initializer: str = "glorot_uniform",
        recurrent_initializer: str = "orthogonal",
        bias_initializer: str = "zeros",
        kernel_regularizer: RegularizerLike = None,
        recurrent_regularizer: RegularizerLike = None,
        bias_regularizer: RegularizerLike = None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            units, activation, recurrent_activation, use_bias, return_sequences,
            kernel_initializer, recurrent_initializer, bias_initializer, kernel_regularizer,
            recurrent_regularizer, bias_regularizer, input_shape, name,
        )  # fmt: skip
        self.unit_forget_bias = bool(unit_forget_bias)

    def _make_rnn(self, in_features: int) -> nn.RNNBase:
        return nn.LSTM(in_features, self.units, bias=self.use_bias, batch_first=True)

    def _build(self, input_shape: Shape) -> None:
        super()._build(input_shape)
        if self.use_bias and self.unit_forget_bias:
            # torch's gate order is (input, forget, cell, output): the forget slice is second.
            initialize("ones", self.rnn.bias_ih_l0[self.units : 2 * self.units])

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "unit_forget_bias": self.unit_forget_bias}


class GRU(_Recurrent):
    """Gated recurrent unit (Cho et al., 2014) as Keras' default GRU (reset_after=True)."""

    _gates = 3
    _redundant_bias = False

    def __init__(
        self,
        units: int,
        activation: str = "tanh",
        recurrent_activation: str = "sigmoid",
        use_bias: bool = True,
        return_sequences: bool = False,
        kernel_initializer: str = "glorot_uniform",
        recurrent_initializer: str = "orthogonal",
        bias_initializer: str = "zeros",
        kernel_regularizer: RegularizerLike = None,
        recurrent_regularizer: RegularizerLike = None,
        bias_regularizer: RegularizerLike = None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            units, activation, recurrent_activation, use_bias, return_sequences,
            kernel_initializer, recurrent_initializer, bias_initializer, kernel_regularizer,
            recurrent_regularizer, bias_regularizer, input_shape, name,
        )  # fmt: skip

    def _make_rnn(self, in_features: int) -> nn.RNNBase:
        return nn.GRU(in_features, self.units, bias=self.use_bias, batch_first=True)
