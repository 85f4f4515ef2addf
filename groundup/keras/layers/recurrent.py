"""SimpleRNN, LSTM and GRU on batch-first sequences (B, T, F), on torch's fused kernels.

Each wraps one single-layer `torch.nn.RNN/LSTM/GRU` (cuDNN on GPUs), initialized the Keras
way: glorot_uniform input kernels, orthogonal recurrent kernels, zero biases, and for the LSTM
a forget-gate bias of 1 (`unit_forget_bias`). The parameters are exactly Keras': torch's LSTM
and RNN add a second bias (`bias_hh`) that only duplicates the first, so here it is a constant
zero buffer, outside the parameters and the state_dict. torch's GRU is Keras' GRU with
reset_after=True (the Keras default), whose two bias rows are both real.

Keras' `return_sequences`, `return_state`, `go_backwards`, `dropout` (one input mask for all
steps), `initial_state`, masks (`call(x, mask=...)`, see recurrent_run.py) and
`zero_output_for_mask` (zeros instead of repeated outputs at padded steps) work. Not
supported, refused by name: stateful, recurrent_dropout, reset_after=False, and activations
other than tanh (or relu for SimpleRNN), which the fused kernels do not offer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groundup.errors import ConfigError, ShapeError
from groundup.keras.layers.base import Layer, Shape, known, positive_int, unit_float
from groundup.keras.layers.initializers import check_initializer, initialize
from groundup.keras.layers.recurrent_run import run_rnn
from groundup.keras.regularizers import RegularizerLike, get_regularizer


class _Recurrent(Layer):
    """Shared build/call of the three recurrent layers; subclasses pick the torch module."""

    _gates = 1
    _n_states = 1
    _redundant_bias = True  # torch's bias_hh only duplicates bias_ih (not so in a GRU)
    _activations: tuple[str, ...] = ("tanh",)  # what the fused kernel offers
    _recurrent_activations: tuple[str, ...] = ("sigmoid",)  # () when there are no gates
    _repr_keys = ("units", "return_sequences")
    supports_masking = True

    def __init__(
        self,
        units: int,
        activation: str,
        recurrent_activation: str | None,
        use_bias: bool,
        kernel_initializer: str,
        recurrent_initializer: str,
        bias_initializer: str,
        kernel_regularizer: RegularizerLike,
        recurrent_regularizer: RegularizerLike,
        bias_regularizer: RegularizerLike,
        dropout: float,
        recurrent_dropout: float,
        return_sequences: bool,
        return_state: bool,
        go_backwards: bool,
        stateful: bool,
        zero_output_for_mask: bool,
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
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        if stateful:
            raise ConfigError(
                f"{self._who}: stateful=True is not supported; carry the state yourself with "
                f"return_state=True and call(x, initial_state=states)"
            )
        self.dropout = unit_float(dropout, "dropout", self._who)
        if unit_float(recurrent_dropout, "recurrent_dropout", self._who):
            raise ConfigError(
                f"{self._who}: recurrent_dropout is not supported (torch's fused kernels have "
                f"no dropout inside the recurrence); use recurrent_dropout=0 and dropout"
            )
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

    # ---- shapes and building ----------------------------------------------------------------

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Any:
        if len(input_shape) != 2 or any(isinstance(d, (list, tuple)) for d in input_shape):
            raise ShapeError(
                f"{self._who} expects sequences of shape (batch, time, features), got "
                f"per-sample shape {tuple(input_shape)}"
            )
        out = (input_shape[0], self.units) if self.return_sequences else (self.units,)
        if self.return_state:
            return [out] + [(self.units,)] * self._n_states
        return out

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
        if not self.use_bias:
            return
        initialize(self.bias_initializer, self.rnn.bias_ih_l0)
        self._add_regularizer("rnn.bias_ih_l0", self.bias_regularizer)
        if self._redundant_bias:
            # Keras has one bias: torch's second becomes a constant zero (not a parameter, not
            # saved), and the kernel's list of weights is rebuilt so it reads the buffer.
            zero = torch.zeros_like(self.rnn.bias_hh_l0, requires_grad=False)
            del self.rnn.bias_hh_l0
            self.rnn.register_buffer("bias_hh_l0", zero, persistent=False)
            self.rnn._init_flat_weights()
        else:
            initialize(self.bias_initializer, self.rnn.bias_hh_l0)
            self._add_regularizer("rnn.bias_hh_l0", self.bias_regularizer)

    def upgrade_saved_tensors(self, prefix: str, tensors: dict[str, Tensor]) -> None:
        """Saves from before the single Keras bias hold torch's two: fold the second into the
        first (the kernel adds both, so the outputs stay the same)."""
        old, kept = f"{prefix}rnn.bias_hh_l0", f"{prefix}rnn.bias_ih_l0"
        if self._redundant_bias and old in tensors and kept in tensors:
            tensors[kept] = tensors[kept] + tensors.pop(old)

    # ---- running ------------------------------------------------------------------------------

    def _initial_state(self, initial_state: Any, x: Tensor) -> tuple[Tensor, ...]:
        batch = x.shape[0]
        if initial_state is None:
            zero = x.new_zeros(1, batch, self.units)
            return (zero,) * self._n_states
        states = [initial_state] if isinstance(initial_state, Tensor) else list(initial_state)
        if len(states) != self._n_states or any(
            not isinstance(s, Tensor) or tuple(s.shape) != (batch, self.units) for s in states
        ):
            got = [tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__ for s in states]
            raise ShapeError(
                f"{self._who} expects initial_state as {self._n_states} tensor(s) of shape "
                f"({batch}, {self.units}), got {got}"
            )
        return tuple(s.to(x.dtype)[None] for s in states)  # (1, B, units) each

    def call(
        self, x: Tensor, mask: Tensor | None = None, initial_state: Any = None
    ) -> Tensor | list[Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.in_features:
            raise ShapeError(
                f"{self._who} expects sequences (batch, time, {self.in_features}), got "
                f"{tuple(x.shape)}"
            )
        if mask is not None:
            if tuple(mask.shape) != tuple(x.shape[:2]):
                raise ShapeError(
                    f"{self._who} expects a mask of shape {tuple(x.shape[:2])} (batch, time), "
                    f"got {tuple(mask.shape)}"
                )
            mask = mask.to(device=x.device, dtype=torch.bool)
        state = self._initial_state(initial_state, x)
        if self.dropout and self.training:  # one mask for every step, as Keras
            keep = F.dropout(x.new_ones(x.shape[0], 1, x.shape[2]), self.dropout, True)
            x = x * keep
        if self.go_backwards:  # outputs stay in the reversed order, as Keras returns them
            x = x.flip(1)
            mask = None if mask is None else mask.flip(1)
        out, final = run_rnn(self.rnn, x, state, mask)  # (B, T, units)
        if self.zero_output_for_mask and mask is not None:  # Bidirectional sets it
            out = out * mask[:, :, None].to(out.dtype)
        y = out if self.return_sequences else out[:, -1]
        if self.return_state:
            return [y, *(s[0] for s in final)]
        return y

    def compute_mask(self, inputs: Any, mask: Tensor | None = None) -> Any:
        """The mask goes on with the sequence output; a last-step output has none."""
        out = mask if self.return_sequences else None
        return [out] + [None] * self._n_states if self.return_state else out

    def _config(self) -> dict[str, Any]:
        gated = self._recurrent_activations
        gates = {"recurrent_activation": self.recurrent_activation} if gated else {}
        return {
            "units": self.units,
            "activation": self.activation,
            **gates,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
            "recurrent_initializer": self.recurrent_initializer,
            "bias_initializer": self.bias_initializer,
            "kernel_regularizer": self._reg_config(self.kernel_regularizer),
            "recurrent_regularizer": self._reg_config(self.recurrent_regularizer),
            "bias_regularizer": self._reg_config(self.bias_regularizer),
            "dropout": self.dropout,
            "return_sequences": self.return_sequences,
            "return_state": self.return_state,
            "go_backwards": self.go_backwards,
            "zero_output_for_mask": self.zero_output_for_mask,
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
        kernel_initializer: str = "glorot_uniform",
        recurrent_initializer: str = "orthogonal",
        bias_initializer: str = "zeros",
        kernel_regularizer: RegularizerLike = None,
        recurrent_regularizer: RegularizerLike = None,
        bias_regularizer: RegularizerLike = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        zero_output_for_mask: bool = False,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            units, activation, None, use_bias, kernel_initializer, recurrent_initializer,
            bias_initializer, kernel_regularizer, recurrent_regularizer, bias_regularizer,
            dropout, recurrent_dropout, return_sequences, return_state, go_backwards, stateful,
            zero_output_for_mask, input_shape, name,
        )  # fmt: skip

    def _make_rnn(self, in_features: int) -> nn.RNNBase:
        return nn.RNN(
            in_features, self.units, nonlinearity=self.activation, bias=self.use_bias,
            batch_first=True,
        )  # fmt: skip


class LSTM(_Recurrent):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997), Keras defaults.

    With return_state the outputs are [output, h, c], as Keras returns them.
    """

    _gates = 4
    _n_states = 2

    def __init__(
        self,
        units: int,
        activation: str = "tanh",
        recurrent_activation: str = "sigmoid",
        use_bias: bool = True,
        kernel_initializer: str = "glorot_uniform",
        recurrent_initializer: str = "orthogonal",
        bias_initializer: str = "zeros",
        unit_forget_bias: bool = True,
        kernel_regularizer: RegularizerLike = None,
        recurrent_regularizer: RegularizerLike = None,
        bias_regularizer: RegularizerLike = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        zero_output_for_mask: bool = False,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            units, activation, recurrent_activation, use_bias, kernel_initializer,
            recurrent_initializer, bias_initializer, kernel_regularizer, recurrent_regularizer,
            bias_regularizer, dropout, recurrent_dropout, return_sequences, return_state,
            go_backwards, stateful, zero_output_for_mask, input_shape, name,
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
    """Gated recurrent unit (Cho et al., 2014) as Keras' default GRU (reset_after=True).

    Gate order differs: Keras' kernels are (update, reset, candidate), torch's (reset,
    update, new); copying Keras weights means swapping the first two blocks.
    """

    _gates = 3
    _redundant_bias = False

    def __init__(
        self,
        units: int,
        activation: str = "tanh",
        recurrent_activation: str = "sigmoid",
        use_bias: bool = True,
        kernel_initializer: str = "glorot_uniform",
        recurrent_initializer: str = "orthogonal",
        bias_initializer: str = "zeros",
        kernel_regularizer: RegularizerLike = None,
        recurrent_regularizer: RegularizerLike = None,
        bias_regularizer: RegularizerLike = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        reset_after: bool = True,
        zero_output_for_mask: bool = False,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            units, activation, recurrent_activation, use_bias, kernel_initializer,
            recurrent_initializer, bias_initializer, kernel_regularizer, recurrent_regularizer,
            bias_regularizer, dropout, recurrent_dropout, return_sequences, return_state,
            go_backwards, stateful, zero_output_for_mask, input_shape, name,
        )  # fmt: skip
        if reset_after is not True:
            raise ConfigError(
                f"{self._who}: reset_after={reset_after!r} is not supported (torch's fused GRU "
                f"applies the reset gate after the recurrent matmul); use reset_after=True"
            )

    def _make_rnn(self, in_features: int) -> nn.RNNBase:
        return nn.GRU(in_features, self.units, bias=self.use_bias, batch_first=True)
