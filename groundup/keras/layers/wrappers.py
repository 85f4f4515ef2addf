"""Wrappers: Bidirectional (a recurrent layer run both ways) and TimeDistributed (one layer
applied to every step). Their configs hold the wrapped layer's config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from groundup.errors import ConfigError, ShapeError
from groundup.keras.layers.base import Layer, Shape, choice

MERGE_MODES = ("concat", "sum", "mul", "ave")


def _inner(layer: Any, who: str) -> Layer:
    """The wrapped layer: a Layer, or its config (what get_config wrote)."""
    if isinstance(layer, Mapping):
        from groundup.keras.layers.registry import layer_from_config  # registry imports us

        return layer_from_config(layer)
    if not isinstance(layer, Layer):
        raise ConfigError(f"{who} wraps a gu.layers layer, got {type(layer).__name__}")
    return layer


def _penalty(layers: Sequence[Layer]) -> Tensor | None:
    terms = [p for p in (layer.regularization_loss() for layer in layers) if p is not None]
    return sum(terms[1:], terms[0]) if terms else None


class Bidirectional(Layer):
    """Runs `layer` forwards and a copy of it backwards (go_backwards flipped), then merges:
    "concat" (the default, 2 x units), "sum", "mul", "ave", or None for the two outputs as a
    list. With return_sequences the backward outputs are put back in time order; with
    return_state the outputs are [merged, *forward states, *backward states], as Keras."""

    supports_masking = True
    _repr_keys = ("merge_mode",)

    def __init__(
        self,
        layer: Any,
        merge_mode: str | None = "concat",
        backward_layer: Any = None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        forward = _inner(layer, self._who)
        if not hasattr(forward, "go_backwards") or not hasattr(forward, "return_state"):
            raise ConfigError(
                f"{self._who} wraps a recurrent layer (SimpleRNN, LSTM, GRU), got "
                f"{type(forward).__name__}"
            )
        self.merge_mode = (
            None if merge_mode is None else choice(merge_mode, "merge_mode", MERGE_MODES, self._who)
        )
        base_name = forward.name.removeprefix("forward_")
        forward.name = f"forward_{base_name}"  # Keras' names for the two directions
        if backward_layer is None:
            config = {**forward.get_config(), "go_backwards": not forward.go_backwards}
            config["name"] = f"backward_{base_name}"
            config.pop("input_shape", None)
            backward = type(forward).from_config(config)
        else:
            backward = _inner(backward_layer, self._who)
            if type(backward) is not type(forward) or backward.go_backwards == forward.go_backwards:
                raise ConfigError(
                    f"{self._who}: backward_layer must be a {type(forward).__name__} reading the "
                    f"other way (go_backwards={not forward.go_backwards})"
                )
        if forward.return_sequences != backward.return_sequences or (
            forward.return_state != backward.return_state
        ):
            raise ConfigError(
                f"{self._who}: the two layers must agree on return_sequences and return_state"
            )
        # As Keras: a sequence output is zero at padded steps, in both directions.
        for one in (forward, backward):
            one.zero_output_for_mask = one.return_sequences
        self.forward_layer, self.backward_layer = forward, backward
        self.return_sequences = forward.return_sequences
        self.return_state = forward.return_state
        self._n_states = forward._n_states if forward.return_state else 0

    def _merged(self, shape: Shape) -> Any:
        if self.merge_mode == "concat":
            return (*shape[:-1], shape[-1] * 2)
        if self.merge_mode is None:
            return [shape, shape]
        return shape

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Any:
        out = self.forward_layer.compute_output_shape(input_shape)
        if not self.return_state:
            return self._merged(out)
        merged = self._merged(out[0])
        states = list(out[1:]) * 2
        return [*merged, *states] if self.merge_mode is None else [merged, *states]

    def _build(self, input_shape: Shape) -> None:
        self.forward_layer.build(input_shape)
        self.backward_layer.build(input_shape)

    def call(self, x: Tensor, mask: Tensor | None = None, initial_state: Any = None) -> Any:
        fw_state = bw_state = None
        if initial_state is not None:  # forward states, then backward states
            states = list(initial_state)
            half = len(states) // 2
            fw_state, bw_state = states[:half], states[half:]
        y = self.forward_layer(x, mask=mask, initial_state=fw_state)
        y_rev = self.backward_layer(x, mask=mask, initial_state=bw_state)
        fw_states: list[Tensor] = []
        bw_states: list[Tensor] = []
        if self.return_state:
            y, *fw_states = y
            y_rev, *bw_states = y_rev
        if self.return_sequences:
            y_rev = y_rev.flip(1)  # back in time order
        if self.merge_mode == "concat":
            out: Any = torch.cat([y, y_rev], dim=-1)
        elif self.merge_mode == "sum":
            out = y + y_rev
        elif self.merge_mode == "mul":
            out = y * y_rev
        elif self.merge_mode == "ave":
            out = (y + y_rev) / 2
        else:
            out = [y, y_rev]
        if not self.return_state:
            return out
        head = out if isinstance(out, list) else [out]
        return [*head, *fw_states, *bw_states]

    def compute_mask(self, inputs: Any, mask: Tensor | None = None) -> Any:
        out = mask if self.return_sequences else None
        outs = [out, out] if self.merge_mode is None else [out]
        if self.return_state:
            return [*outs, *[None] * (2 * self._n_states)]
        return outs if self.merge_mode is None else out

    def regularization_loss(self) -> Tensor | None:
        return _penalty([self.forward_layer, self.backward_layer])

    def _config(self) -> dict[str, Any]:
        return {
            "layer": self.forward_layer.get_config(),
            "merge_mode": self.merge_mode,
            "backward_layer": self.backward_layer.get_config(),
        }


class TimeDistributed(Layer):
    """Applies `layer` to every step: (B, T, ...) -> (B, T, layer's output per step).

    The steps are folded into the batch axis, so the wrapped layer runs once. Its output
    activation stays the wrapper's, so a softmax head is still trained on logits.
    """

    supports_masking = True

    def __init__(
        self,
        layer: Any,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.layer = _inner(layer, self._who)
        self.activation = self.layer.output_activation
        self._activation_fn = self.layer._activation_fn if self.activation else None

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        if len(input_shape) < 2:
            raise ShapeError(
                f"{self._who} expects inputs (batch, time, ...), got per-sample shape "
                f"{tuple(input_shape)}"
            )
        inner = self.layer.compute_output_shape(tuple(input_shape[1:]))
        if not isinstance(inner, tuple):
            raise ShapeError(f"{self._who} wraps layers with one output, got {inner}")
        return (input_shape[0], *inner)

    def _build(self, input_shape: Shape) -> None:
        self.layer.build(tuple(input_shape[1:]))

    def call(self, x: Tensor) -> Tensor:
        if x.dim() < 3:
            raise ShapeError(f"{self._who} expects inputs (batch, time, ...), got {tuple(x.shape)}")
        batch, steps = x.shape[:2]
        y = self.layer.forward_logits(x.reshape(batch * steps, *x.shape[2:]))  # (B*T, ...)
        return y.reshape(batch, steps, *y.shape[1:])  # (B, T, ...)

    def compute_mask(self, inputs: Any, mask: Tensor | None = None) -> Tensor | None:
        return mask

    def regularization_loss(self) -> Tensor | None:
        return _penalty([self.layer])

    def _config(self) -> dict[str, Any]:
        return {"layer": self.layer.get_config()}
