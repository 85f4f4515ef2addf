"""`gu.Sequential`: a stack of layers, each reading the one before; a thin `gu.Model`.

    model = gu.Sequential([gu.Input(shape=(784,)),
                           gu.layers.Dense(64, activation="relu"),
                           gu.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=5, validation_split=0.1)

It is built eagerly from `gu.Input(...)` or the first layer's `input_shape`, else lazily from
the first batch. compile/fit/evaluate/predict, weights and saving are `gu.Model`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from groundup.errors import ConfigError, ShapeError
from groundup.keras import summary as summary_table
from groundup.keras.functional import accepts_logits_mask
from groundup.keras.layers import Layer, layer_from_config
from groundup.keras.masking import call_with_mask
from groundup.keras.model import Model
from groundup.keras.saving import ARCHITECTURE_FILE, WEIGHTS_FILE, load_model
from groundup.keras.symbolic import KerasTensor

__all__ = ["ARCHITECTURE_FILE", "WEIGHTS_FILE", "Sequential", "load_model"]


class Sequential(Model):
    """A stack of `gu.layers`, built eagerly from `input_shape` or lazily from the first batch."""

    def __init__(self, layers: Sequence[Any] | None = None, name: str | None = None) -> None:
        super().__init__(name=name)  # default: "sequential", "sequential_1", ...
        self.layers = nn.ModuleList()
        self.input_shape: tuple[int | None, ...] | None = None
        self._input_dtype: str | None = None
        self._input_name = "input"
        for layer in layers or []:
            self.add(layer)

    # ---------------------------------------------------------------- structure
    def add(self, layer: Any) -> None:
        if isinstance(layer, KerasTensor) and layer.node is not None and layer.node.is_input:
            if len(self.layers):
                raise ConfigError("gu.Input(...) can only start a Sequential, before its layers")
            self._input_dtype = getattr(layer, "explicit_dtype", None)
            self._input_name = layer.name
            self.build(layer.sample_shape)
            return
        if not isinstance(layer, Layer):
            raise ConfigError(
                f"Sequential takes gu.layers objects, got {type(layer).__name__}; "
                "wrap plain torch modules in gu.Trainer instead"
            )
        if len(self.layers) == 0 and getattr(layer, "input_shape", None) is not None:
            self.input_shape = tuple(layer.input_shape)
        self.layers.append(layer)
        if self.input_shape is not None:
            self.build(self.input_shape)

    def pop(self) -> Layer:
        """Remove the last layer and return it (a compiled model re-plans its training on
        the new output at the next fit)."""
        if len(self.layers) == 0:
            raise ConfigError("pop() needs a layer to remove; the Sequential has none")
        layer = self.layers[-1]
        del self.layers[-1]
        self.trainer = None
        return layer

    @property
    def built(self) -> bool:
        return len(self.layers) > 0 and all(layer.built for layer in self.layers)

    def build(self, input_shape: Sequence[int | None]) -> None:
        """Create every layer's parameters from the per-sample input shape (no batch axis;
        a Keras shape with a leading None batch axis is accepted too)."""
        shape = tuple(input_shape)
        if shape and shape[0] is None:
            shape = shape[1:]  # Keras' model.build((None, 784))
        shape = tuple(int(s) if s is not None else None for s in shape)
        self.input_shape = shape
        for layer in self.layers:
            if not layer.built:
                layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))

    def _forward(self, x: Any, mask: Any) -> Any:
        for layer in self.layers:
            x, mask = call_with_mask(layer, (x,), {}, mask)
        return x

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The outputs before the last layer's activation (what cross-entropy should see)."""
        layers = self.layers
        mask = None
        for layer in layers[:-1]:
            x, mask = call_with_mask(layer, (x,), {}, mask)
        last = layers[-1]
        if mask is not None and accepts_logits_mask(last):
            return last.forward_logits(x, mask=mask)
        return last.forward_logits(x)

    @property
    def output_activation(self) -> str | None:
        return self.layers[-1].output_activation if len(self.layers) else None

    # ---- what training.py needs ------------------------------------------------------------
    def _input_names(self, x: Any) -> list[str]:
        return [self._input_name]

    def _input_dtypes(self) -> list[str | None]:
        return [self._input_dtype]

    def _outputs_known(self) -> bool:
        if len(self.layers) == 0:
            raise ConfigError("the model has no layers; add layers before compile")
        return True

    def _output_names(self) -> list[str]:
        return [self.layers[-1].name] if len(self.layers) else ["output"]

    def _build_for(self, inputs: list[torch.Tensor]) -> None:
        shape = tuple(inputs[0].shape[1:])
        if self.input_shape is None:
            self.build(shape)
            self._follow_trainer()  # compiled before it was built: follow its device
        elif len(shape) != len(self.input_shape) or any(
            e is not None and e != g for e, g in zip(self.input_shape, shape)
        ):
            raise ShapeError(f"the model expects samples of shape {self.input_shape}, got {shape}")

    def _run(self, inputs: Sequence[Any], logits: frozenset[int]) -> list[Any]:
        return [self.forward_logits(inputs[0]) if 0 in logits else self(inputs[0])]

    def _logit_activations(self) -> dict[int, str]:
        act = self.output_activation
        return {0: act} if act is not None else {}

    # ---------------------------------------------------------------- inspection and files
    def summary(self, print_fn: Any = print) -> str:
        """A table of layers, output shapes and weight counts (printed and returned)."""
        rows = []
        shape = self.input_shape
        for layer in self.layers:
            if shape is not None and layer.built:
                shape = tuple(layer.compute_output_shape(shape))
                shown = str((None, *shape))
            else:
                shown = "?"
            rows.append(
                (summary_table.layer_title(layer), shown, summary_table.layer_params(layer))
            )
        headers = ("Layer (type)", "Output shape", "Params")
        return summary_table.render(self, self.name, headers, rows, print_fn)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "class_name": "Sequential",
            "name": self.name,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "layers": [
                {"type": type(layer).__name__, **layer.get_config()} for layer in self.layers
            ],
            "compile": self._compiled.saved if self._compiled is not None else None,
        }
        if self._input_dtype is not None:
            config["input_dtype"] = self._input_dtype
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Sequential:
        """The model `get_config()` describes, built when it knew its input shape."""
        model = cls([layer_from_config(dict(c)) for c in config["layers"]], name=config.get("name"))
        model._input_dtype = config.get("input_dtype")
        if config.get("input_shape"):
            model.build(tuple(config["input_shape"]))
        return model
