"""`gu.Model`: a functional model, `Model(inputs, outputs)`, or a subclassed one whose `call`
says what it computes, as Keras allows both:

    inputs = gu.Input(shape=(784,))
    outputs = gu.layers.Dense(10, activation="softmax")(gu.layers.Dense(64, "relu")(inputs))
    model = gu.Model(inputs, outputs)

    class MyModel(gu.Model):
        def __init__(self):
            super().__init__()
            self.hidden = gu.layers.Dense(64, activation="relu")
            self.out = gu.layers.Dense(10, activation="softmax")

        def call(self, inputs, training=False):
            return self.out(self.hidden(inputs))

Both are `nn.Module`s with the compile/fit/evaluate/predict facade (`training.py`), weights
utilities and `summary()`. A subclassed model is built on its first batch (its layers are
lazy); it saves its weights (`save_weights`) but not its architecture, which is Python code.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from groundup.errors import ConfigError, ShapeError
from groundup.keras import summary as summary_table
from groundup.keras import weights as weights_io
from groundup.keras.data_adapter import align, is_several
from groundup.keras.functional import Graph
from groundup.keras.layers import Layer
from groundup.keras.symbolic import (
    KerasTensor,
    as_symbolic,
    call_symbolic,
    fmt_shape,
    has_symbolic,
)
from groundup.keras.training import TrainingMixin
from groundup.keras.tree import flatten, map_structure, pack_as

_MODEL_NAMES: dict[str, int] = {}
_CALL_TAKES: dict[tuple[type, str], bool] = {}


def _auto_name(base: str) -> str:
    count = _MODEL_NAMES.get(base, 0)
    _MODEL_NAMES[base] = count + 1
    return base if count == 0 else f"{base}_{count}"


def reset_model_names() -> None:
    _MODEL_NAMES.clear()


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _unique(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        candidate, k = n, 1
        while candidate in out:
            candidate, k = f"{n}_{k}", k + 1
        out.append(candidate)
    return out


def _structure_kind(structure: Any) -> str:
    if isinstance(structure, Mapping):
        return "dict"
    if isinstance(structure, (list, tuple)):
        return "list"
    return "single"


class Model(TrainingMixin, nn.Module):
    """A functional (`Model(inputs, outputs)`) or subclassed (`call`) Keras-style model."""

    def __init__(
        self,
        inputs: Any = None,
        outputs: Any = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        trainable = kwargs.pop("trainable", True)
        if kwargs:
            raise ConfigError(
                f"Model got unknown argument(s) {', '.join(sorted(kwargs))}; it takes "
                "inputs, outputs, name and trainable"
            )
        functional = inputs is not None or outputs is not None
        default = "functional" if type(self) is Model else _snake(type(self).__name__)
        self.name = name or _auto_name(default)
        self._init_training()
        self._graph: Graph | None = None
        self._sub_inputs: tuple[str, list[str]] | None = None  # subclassed: (kind, names)
        self._sub_outputs: tuple[str, list[str]] | None = None
        self._seen_shapes: dict[int, str] = {}  # subclassed: output shapes seen at build
        if functional:
            if inputs is None or outputs is None:
                raise ConfigError("Model(inputs, outputs) needs both the inputs and the outputs")
            self._set_graph(inputs, outputs)
        if not trainable:
            self.trainable = False

    # ---------------------------------------------------------------- structure
    def _set_graph(self, inputs: Any, outputs: Any) -> None:
        inputs = map_structure(as_symbolic, inputs)
        outputs = map_structure(as_symbolic, outputs)
        self._graph = Graph(flatten(inputs), flatten(outputs))
        self.layers = nn.ModuleList(self._graph.layers)
        self._input_structure, self._output_structure = inputs, outputs
        graph = self._graph
        self._in_names = (
            list(inputs) if isinstance(inputs, Mapping) else [t.name for t in graph.inputs]
        )
        self._out_names = (
            list(outputs)
            if isinstance(outputs, Mapping)
            else _unique([getattr(t.layer, "name", "output") for t in graph.outputs])
        )
        self._logit_nodes = graph.logit_nodes()

    def __getattr__(self, name: str) -> Any:
        if name == "layers" and "layers" not in self.__dict__.get("_modules", {}):
            # a subclassed model: the layers it holds, in assignment order (Keras' tracking)
            found = []
            for child in self.children():
                group = child if isinstance(child, (nn.ModuleList, nn.ModuleDict)) else [child]
                items = group.values() if isinstance(group, nn.ModuleDict) else group
                found += [m for m in items if isinstance(m, (Layer, Model))]
            return found
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Keras tracks lists and dicts of layers; torch registers only ModuleList/ModuleDict
        if name.startswith("_"):
            pass  # the model's own bookkeeping (e.g. the regularized layers) stays plain
        elif (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, nn.Module) for v in value)
        ):
            value = nn.ModuleList(value)
        elif (
            isinstance(value, dict)
            and value
            and all(isinstance(v, nn.Module) for v in value.values())
        ):
            value = nn.ModuleDict(value)
        super().__setattr__(name, value)

    @property
    def trainable(self) -> bool:
        """Keras's switch: False freezes every weight of the model (read at compile and fit;
        a layer inside it may set its own)."""
        return self.__dict__.get("trainable", True)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self.__dict__["trainable"] = bool(value)
        self.requires_grad_(bool(value))

    @property
    def inputs(self) -> list[KerasTensor] | None:
        return None if self._graph is None else list(self._graph.inputs)

    @property
    def outputs(self) -> list[KerasTensor] | None:
        return None if self._graph is None else list(self._graph.outputs)

    @property
    def input_names(self) -> list[str]:
        return self._input_names(None)

    @property
    def output_names(self) -> list[str]:
        return self._output_names()

    @property
    def built(self) -> bool:
        if self._graph is not None:
            return True
        layers = self.layers
        return self._sub_outputs is not None or (
            bool(layers) and all(getattr(layer, "built", True) for layer in layers)
        )

    @property
    def output_activation(self) -> str | None:
        """The activation of the single output (what cross-entropy by name reads), else None."""
        if self._graph is None or len(self._graph.outputs) != 1 or 0 not in self._logit_nodes:
            return None
        return self._logit_nodes[0].layer.output_activation

    def get_layer(self, name: str | None = None, index: int | None = None) -> nn.Module:
        """A layer by name (or by position in `model.layers`)."""
        layers = list(self.layers)
        if index is not None:
            if not -len(layers) <= index < len(layers):
                raise ConfigError(f"{self.name} has {len(layers)} layers; no index {index}")
            return layers[index]
        for layer in layers:
            if getattr(layer, "name", None) == name:
                return layer
        names = [getattr(layer, "name", "?") for layer in layers]
        raise ConfigError(f"{self.name} has no layer named {name!r}; its layers are {names}")

    # ---------------------------------------------------------------- running
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if has_symbolic(args, kwargs):  # a model used as a layer of another model
            return call_symbolic(self, args, kwargs)
        return nn.Module.__call__(self, *args, **kwargs)

    def forward(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        """`model(x)`; `training=True/False` runs in that mode for this call (Keras)."""
        if training is not None and bool(training) != self.training:
            was = self.training
            self.train(bool(training))
            try:
                return self._forward(inputs, mask)
            finally:
                self.train(was)
        return self._forward(inputs, mask)

    def _forward(self, inputs: Any, mask: Any) -> Any:
        if self._graph is not None:
            return pack_as(
                self._output_structure, self._run(self._graph_values(inputs), frozenset())
            )
        kwargs: dict[str, Any] = {}
        if self._call_takes("training"):
            kwargs["training"] = self.training
        if mask is not None and self._call_takes("mask"):
            kwargs["mask"] = mask
        return self.call(inputs, **kwargs)

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        """What the model computes. A subclass overrides it: `call(self, inputs, training=False)`."""
        if self._graph is not None:
            return self._forward(inputs, mask)
        raise ConfigError(
            f"{type(self).__name__} has no call(): a subclassed gu.Model defines "
            "call(self, inputs, training=False), or build one with gu.Model(inputs, outputs)"
        )

    def _call_takes(self, name: str) -> bool:
        key = (type(self), name)
        if key not in _CALL_TAKES:
            params = inspect.signature(self.call).parameters
            _CALL_TAKES[key] = name in params or any(
                p.kind is p.VAR_KEYWORD for p in params.values()
            )
        return _CALL_TAKES[key]

    def _graph_values(self, inputs: Any) -> list[Any]:
        return align(inputs, self._in_names, "input", f"model '{self.name}'")

    def compute_output_spec(self, *args: Any, **kwargs: Any) -> Any:
        """Symbolic outputs of this model called as a layer (a functional model only)."""
        if self._graph is None:
            raise ConfigError(
                f"the subclassed model '{self.name}' cannot be called on gu.Input tensors; "
                "call its layers in a functional model, or use it on real data"
            )
        values = self._graph_values(args[0] if len(args) == 1 else list(args))
        for t, v in zip(self._graph.inputs, values):
            if not isinstance(v, KerasTensor) or not _fits(t.sample_shape, v.sample_shape):
                got = fmt_shape(v.sample_shape) if isinstance(v, KerasTensor) else repr(v)
                raise ShapeError(
                    f"model '{self.name}' input '{t.name}' expects {fmt_shape(t.sample_shape)}, "
                    f"got {got}"
                )
        outs = [KerasTensor(t.shape, t.dtype, self.name) for t in self._graph.outputs]
        return pack_as(self._output_structure, outs)

    # ---- what training.py needs ------------------------------------------------------------
    def _input_names(self, x: Any) -> list[str]:
        if self._graph is not None:
            return list(self._in_names)
        if self._sub_inputs is None:
            if x is None:
                return ["input"]
            if isinstance(x, Mapping):
                self._sub_inputs = ("dict", list(x))
            elif is_several(x) and len(x) > 1:
                self._sub_inputs = ("list", [f"input_{i + 1}" for i in range(len(x))])
            else:
                self._sub_inputs = ("single", ["input"])
        return list(self._sub_inputs[1])

    def _input_dtypes(self) -> list[str | None]:
        if self._graph is None:
            return [None] * len(self._input_names(None))
        return [getattr(t, "explicit_dtype", None) for t in self._graph.inputs]

    def _outputs_known(self) -> bool:
        return self._graph is not None or self._sub_outputs is not None

    def _output_names(self) -> list[str]:
        if self._graph is not None:
            return list(self._out_names)
        if self._sub_outputs is None:
            raise ConfigError(f"'{self.name}' is not built yet: fit it or call it on data first")
        return list(self._sub_outputs[1])

    def _build_for(self, inputs: list[torch.Tensor]) -> None:
        """Functional: check the data against the Inputs. Subclassed: the first call builds it."""
        if self._graph is not None:
            for t, x in zip(self._graph.inputs, inputs):
                if not _fits(t.sample_shape, tuple(x.shape[1:])):
                    raise ShapeError(
                        f"input '{t.name}' expects samples of shape {tuple(t.sample_shape)}, got "
                        f"{tuple(x.shape[1:])}"
                    )
            return
        if self._sub_outputs is None:
            self._build_by_calling([x[:2] for x in inputs])
            self._follow_trainer()

    def _sub_structure(self, inputs: Sequence[Any]) -> Any:
        kind, names = self._sub_inputs or ("single", ["input"])
        if kind == "dict":
            return dict(zip(names, inputs))
        return list(inputs) if kind == "list" else inputs[0]

    def _build_by_calling(self, inputs: Sequence[torch.Tensor]) -> None:
        """One call on a couple of samples (eval mode, no gradients) creates the lazy layers;
        the output shape of every layer is noted for `summary`."""
        hooks = []
        for module in self.modules():
            if module is not self:
                hooks.append(module.register_forward_hook(self._note_shape))
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = self(self._sub_structure(inputs))
        finally:
            self.train(was)
            for h in hooks:
                h.remove()
        if isinstance(out, Mapping):
            self._sub_outputs = ("dict", list(out))
        elif isinstance(out, (list, tuple)):
            self._sub_outputs = ("list", [f"output_{i + 1}" for i in range(len(out))])
        else:
            self._sub_outputs = ("single", ["output"])

    def _note_shape(self, module: nn.Module, args: Any, output: Any) -> None:
        shapes = [str((None, *t.shape[1:])) for t in flatten(output) if isinstance(t, torch.Tensor)]
        self._seen_shapes[id(module)] = shapes[0] if len(shapes) == 1 else f"[{', '.join(shapes)}]"

    def build(self, input_shape: Any) -> None:
        """Build from a Keras input shape with its batch axis, e.g. `model.build((None, 784))`
        (a list of them for several inputs)."""
        if self._graph is not None:
            return
        several = isinstance(input_shape, list) and all(
            isinstance(s, (tuple, list)) for s in input_shape
        )
        shapes = input_shape if several else [input_shape]
        zeros = []
        for shape in shapes:
            rest = tuple(shape)[1:]
            if any(d is None for d in rest):
                raise ConfigError(
                    f"{self.name}.build({input_shape!r}) needs every axis but the batch axis "
                    "known; fit it on data instead"
                )
            zeros.append(torch.zeros((2, *rest)))
        if self._sub_inputs is None:
            kind = "list" if several else "single"
            self._sub_inputs = (kind, [f"input_{i + 1}" for i in range(len(zeros))] if several
                                else ["input"])  # fmt: skip
        self._build_by_calling(zeros)
        self._follow_trainer()

    def _run(self, inputs: Sequence[Any], logits: frozenset[int]) -> list[Any]:
        """Flat outputs for inputs in the model's order (`logits`: outputs left pre-activation)."""
        if self._graph is not None:
            nodes = {i: n for i, n in self._logit_nodes.items() if i in logits}
            return self._graph.run(list(inputs), nodes)
        out = self(self._sub_structure(inputs))
        return list(out.values()) if isinstance(out, Mapping) else flatten(out)

    def _logit_activations(self) -> dict[int, str]:
        if self._graph is None:
            return {}
        return {i: n.layer.output_activation for i, n in self._logit_nodes.items()}

    def _pack_outputs(self, flat: list[np.ndarray]) -> Any:
        if self._graph is not None:
            if isinstance(self._output_structure, Mapping):
                return dict(zip(self._out_names, flat))
            return pack_as(self._output_structure, flat) if len(flat) > 1 else flat[0]
        if self._sub_outputs is not None and self._sub_outputs[0] == "dict":
            return dict(zip(self._sub_outputs[1], flat))
        return flat[0] if len(flat) == 1 else flat

    # ---------------------------------------------------------------- weights
    @property
    def weights(self) -> list[torch.Tensor]:
        """Every weight (parameters, and saved buffers such as moving statistics), layer by
        layer in Keras' order: the live tensors `get_weights` copies."""
        return [t for _, t in weights_io.weight_entries(self)]

    @property
    def trainable_weights(self) -> list[torch.Tensor]:
        return [t for t in self.weights if isinstance(t, nn.Parameter) and t.requires_grad]

    @property
    def non_trainable_weights(self) -> list[torch.Tensor]:
        return [t for t in self.weights if not (isinstance(t, nn.Parameter) and t.requires_grad)]

    def get_weights(self) -> list[np.ndarray]:
        """Every weight as a NumPy array, layer by layer in Keras' order."""
        return weights_io.get_weights(self)

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Set every weight from a list like `get_weights()` gives (each shape checked)."""
        self._require_built("set_weights")
        weights_io.set_weights(self, weights, self.name)

    def count_params(self) -> int:
        """Number of weights, frozen ones and moving statistics included (Keras' count)."""
        self._require_built("count_params")
        return weights_io.count_weights(self)[0]

    def save_weights(self, filepath: str | Path) -> Path:
        """The weights alone, keyed by layer name, in one safetensors file."""
        self._require_built("save_weights")
        return weights_io.save_weights(self, filepath)

    def load_weights(
        self, filepath: str | Path, by_name: bool = False, skip_mismatch: bool = False
    ) -> None:
        """Load a `save_weights` file: layer by layer, or by layer name (`by_name`)."""
        self._require_built("load_weights")
        weights_io.load_weights(self, filepath, by_name=by_name, skip_mismatch=skip_mismatch)

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise ConfigError(
                f"'{self.name}' is not built yet, so it has no weights for {what}: fit it, "
                "call it on data or call model.build(input_shape) first"
            )

    # ---------------------------------------------------------------- inspection and files
    def summary(self, print_fn: Any = print) -> str:
        """A table of layers, output shapes, weight counts and (functional) inbound layers."""
        if self._graph is None:
            rows = [
                (
                    summary_table.layer_title(layer),
                    self._seen_shapes.get(id(layer), "?"),
                    summary_table.layer_params(layer),
                )
                for layer in self.layers
            ]
            headers = ("Layer (type)", "Output shape", "Params")
            return summary_table.render(self, self.name, headers, rows, print_fn)
        graph = self._graph
        rows = []
        for layer in graph.layers:
            nodes = [n for n in graph.nodes if n.layer is layer]
            if not nodes:  # an Input
                tensor = layer.__dict__["_keras_tensor"]
                rows.append((summary_table.layer_title(layer), str(tensor.shape), "0", "-"))
                continue
            shapes = [str(t.shape) for t in flatten(nodes[0].outputs)]
            shown = shapes[0] if len(shapes) == 1 else f"[{', '.join(shapes)}]"
            inbound = ", ".join(ref for n in nodes for ref in graph.inbound(n))
            rows.append(
                (
                    summary_table.layer_title(layer),
                    shown,
                    summary_table.layer_params(layer),
                    inbound,
                )
            )
        headers = ("Layer (type)", "Output shape", "Params", "Connected to")
        return summary_table.render(self, self.name, headers, rows, print_fn)

    def get_config(self) -> dict[str, Any]:
        """The architecture as JSON-able data (functional models; `Model.from_config` rebuilds)."""
        if self._graph is None:
            raise ConfigError(
                f"'{self.name}' is a subclassed model: its architecture is Python code and "
                "cannot be saved as JSON; use save_weights/load_weights, or build it with "
                "gu.Model(inputs, outputs)"
            )
        from groundup.keras.saving import layer_config

        return {
            "class_name": "Functional",
            "name": self.name,
            "inputs": {"kind": _structure_kind(self._input_structure), "names": self._in_names},
            "outputs": {"kind": _structure_kind(self._output_structure), "names": self._out_names},
            "graph": self._graph.config(layer_config),
            "compile": self._compiled.saved if self._compiled is not None else None,
        }

    def save(self, path: str | Path) -> Path:
        """Write `path/` with `architecture.json` and `model.safetensors` (no pickle)."""
        from groundup.keras.saving import save_model

        return save_model(self, path)

    @classmethod
    def load(cls, path: str | Path, compile: bool = True) -> Model:
        """Rebuild a saved model; re-compiles it when it was saved compiled with named parts."""
        from groundup.keras.saving import load_folder

        return load_folder(path, compile=compile)


def _fits(expected: Sequence[int | None], got: Sequence[int | None]) -> bool:
    return len(expected) == len(got) and all(
        e is None or g is None or e == g for e, g in zip(expected, got)
    )
