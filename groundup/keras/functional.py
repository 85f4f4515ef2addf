"""The graph of a functional model: the layer calls between its Inputs and its outputs, in an
order that runs each call after the calls it reads from, replayed with real tensors.

    graph = Graph([a, b], [out])     # a, b: gu.Input tensors; out: what the layers returned
    (y,) = graph.run([xa, xb])

A graph also saves itself as JSON (`config`) and comes back from it (`graph_from_config`):
the layers' configs, then every call with its arguments, where a tensor argument is written
`{"tensor": [layer name, call number, output number]}` (the "Connected to" of `summary`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from groundup.errors import ConfigError, ShapeError
from groundup.keras.masking import accepts, call_with_mask
from groundup.keras.symbolic import Input, KerasTensor, Node, as_symbolic
from groundup.keras.tree import flatten, map_structure


def _describe(tensor: KerasTensor) -> str:
    return f"'{tensor.layer.name}'" if hasattr(tensor.layer, "name") else repr(tensor)


class Graph:
    """The nodes between `inputs` and `outputs` (flat lists of KerasTensors), checked to be
    connected: every output must depend on the given inputs only."""

    def __init__(self, inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
        self.inputs: list[KerasTensor] = [_tensor(t, "inputs") for t in inputs]
        self.outputs: list[KerasTensor] = [_tensor(t, "outputs") for t in outputs]
        for t in self.inputs:
            if not t.node.is_input:
                raise ConfigError(
                    f"model inputs must come from gu.Input(...); {_describe(t)} is the output "
                    "of a layer"
                )
        if len({id(t) for t in self.inputs}) != len(self.inputs):
            raise ConfigError("the same Input is given twice in the model's inputs")
        self.nodes = self._collect()
        self.layers = self._layers()
        names = [getattr(layer, "name", None) for layer in self.layers]
        repeated = sorted({n for n in names if n is not None and names.count(n) > 1})
        if repeated:
            raise ConfigError(
                f"layer names must be unique in a model, {repeated} appear twice; "
                "give the layers different name= values"
            )
        # how often each tensor is read, so an output read by another layer keeps its activation
        self.readers: dict[int, int] = {}
        for node in self.nodes:
            for t in node.inputs:
                self.readers[id(t)] = self.readers.get(id(t), 0) + 1

    def _collect(self) -> list[Node]:
        """The nodes the outputs depend on, in creation order; an Input outside `inputs` is
        the disconnected-graph error."""
        known_inputs = {id(t.node) for t in self.inputs}
        seen: dict[int, Node] = {}
        for output in self.outputs:
            stack = [output.node]
            while stack:
                node = stack.pop()
                if id(node) in seen or id(node) in known_inputs:
                    continue
                if node.is_input:
                    missing = node.outputs
                    raise ConfigError(
                        f"output {_describe(output)} depends on Input '{missing.name}', which "
                        f"is not in the model's inputs {[t.name for t in self.inputs]}; add it "
                        "to inputs="
                    )
                seen[id(node)] = node
                stack.extend(t.node for t in node.inputs)
        return sorted(seen.values(), key=lambda n: n.serial)  # creation order: topological

    def _layers(self) -> list[nn.Module]:
        """Input layers in the order of `inputs`, then every other layer by its first call."""
        layers: list[nn.Module] = [t.layer for t in self.inputs]
        for node in self.nodes:
            if not any(layer is node.layer for layer in layers):
                layers.append(node.layer)
        return layers

    def node_number(self, node: Node) -> int:
        """Which call of its layer `node` is, counting this graph's calls only."""
        same = [n for n in self.nodes if n.layer is node.layer]
        return next(i for i, n in enumerate(same) if n is node) if same else 0

    def inbound(self, node: Node) -> list[str]:
        """'dense[0][0]' for each tensor the call reads (Keras' "Connected to")."""
        return [self.reference(t) for t in node.inputs]

    def reference(self, tensor: KerasTensor) -> str:
        number = 0 if tensor.node.is_input else self.node_number(tensor.node)
        return f"{tensor.layer.name}[{number}][{tensor.index}]"

    def logit_nodes(self) -> dict[int, Node]:
        """The output nodes whose activation a cross-entropy can take over: a single-tensor call
        of a layer with `forward_logits`, giving one model output that no other layer reads."""
        found: dict[int, Node] = {}
        for i, t in enumerate(self.outputs):
            node = t.node
            if (
                not node.is_input
                and hasattr(node.layer, "forward_logits")
                and getattr(node.layer, "output_activation", None) is not None
                and len(node.args) == 1
                and isinstance(node.args[0], KerasTensor)
                and set(node.kwargs) <= {"mask", "training"}
                and isinstance(node.outputs, KerasTensor)
                and self.readers.get(id(t), 0) == 0
                and sum(o is t for o in self.outputs) == 1
            ):
                found[i] = node
        return found

    # ---- running ----------------------------------------------------------------------------
    def run(self, values: Sequence[Tensor], logits: Mapping[int, Node] | None = None) -> list[Any]:
        """The outputs for real inputs `values` (in the order of `inputs`). The nodes in
        `logits` run without their output activation (see `logit_nodes`)."""
        logit_ids = {id(node) for node in (logits or {}).values()}
        env: dict[int, Any] = {}
        masks: dict[int, Any] = {}
        for tensor, value in zip(self.inputs, values):
            env[id(tensor)] = tensor.layer(value)  # the InputLayer checks the known axes
            masks[id(tensor)] = None

        def real(x: Any) -> Any:
            return env[id(x)] if isinstance(x, KerasTensor) else x

        for node in self.nodes:
            args, kwargs = map_structure(real, (node.args, node.kwargs))
            mask = _input_masks(node.args, masks)
            if id(node) in logit_ids:
                out = _run_logits(node.layer, args[0], kwargs, mask)
                new_mask = None
            else:
                out, new_mask = call_with_mask(node.layer, args, kwargs, mask)
            symbolic = flatten(node.outputs)
            produced = flatten(out)
            if len(produced) != len(symbolic):
                raise ShapeError(
                    f"{node.layer.name} returned {len(produced)} tensor(s) but its "
                    f"compute_output_shape described {len(symbolic)}; make them agree"
                )
            for i, (t, v) in enumerate(zip(symbolic, produced)):
                env[id(t)] = v
                masks[id(t)] = _output_mask(new_mask, i, len(symbolic))
        return [env[id(t)] for t in self.outputs]

    # ---- saving -----------------------------------------------------------------------------
    def config(self, layer_config: Callable[[nn.Module], dict[str, Any]]) -> dict[str, Any]:
        """JSON-able: the layers (`layer_config(layer)` each), the calls, inputs and outputs."""

        def ref(x: Any) -> Any:
            if isinstance(x, KerasTensor):
                number = 0 if x.node.is_input else self.node_number(x.node)
                return {"tensor": [x.layer.name, number, x.index]}
            if isinstance(x, tuple):
                return list(x)
            return x

        layers = []
        for layer in self.layers:
            cfg = layer_config(layer)
            tensor = layer.__dict__.get("_keras_tensor")
            if tensor is not None and getattr(tensor, "explicit_dtype", None):
                cfg = {**cfg, "dtype": tensor.explicit_dtype}
            layers.append(cfg)
        return {
            "layers": layers,
            "nodes": [
                {
                    "layer": node.layer.name,
                    "args": map_structure(ref, list(node.args)),
                    "kwargs": map_structure(ref, node.kwargs),
                }
                for node in self.nodes
            ],
            "inputs": [ref(t) for t in self.inputs],
            "outputs": [ref(t) for t in self.outputs],
        }


def graph_from_config(
    config: Mapping[str, Any], make_layer: Callable[[Mapping[str, Any]], nn.Module]
) -> tuple[list[KerasTensor], list[KerasTensor]]:
    """Rebuild the symbolic inputs and outputs `Graph.config` describes, calling fresh layers
    (`make_layer(layer config)`) exactly as the saved model did."""
    layers: dict[str, nn.Module] = {}
    produced: dict[tuple[str, int], list[KerasTensor]] = {}
    for cfg in config["layers"]:
        if cfg.get("type") in ("Input", "InputLayer"):
            tensor = Input(cfg["shape"], name=cfg["name"], dtype=cfg.get("dtype"))
            layers[cfg["name"]] = tensor.layer
            produced[(cfg["name"], 0)] = [tensor]
        else:
            layer = make_layer({k: v for k, v in cfg.items()})
            layers[layer.name] = layer

    def tensor_of(x: Any) -> Any:
        if isinstance(x, Mapping) and set(x) == {"tensor"}:
            name, number, index = x["tensor"]
            try:
                return produced[(name, number)][index]
            except (KeyError, IndexError):
                raise ConfigError(
                    f"the saved graph reads {name}[{number}][{index}], which no earlier call "
                    "made; the architecture file is damaged, re-save the model"
                ) from None
        return x

    def decode(structure: Any) -> Any:
        if isinstance(structure, Mapping) and set(structure) == {"tensor"}:
            return tensor_of(structure)
        if isinstance(structure, Mapping):
            return {k: decode(v) for k, v in structure.items()}
        if isinstance(structure, list):
            return [decode(v) for v in structure]
        return structure

    calls: dict[str, int] = {}
    for node in config["nodes"]:
        name = node["layer"]
        if name not in layers:
            raise ConfigError(f"the saved graph calls layer '{name}', which it does not define")
        args = decode(node["args"])
        kwargs = decode(node["kwargs"])
        out = layers[name](*args, **kwargs)
        number = calls.get(name, 0)
        calls[name] = number + 1
        produced[(name, number)] = flatten(out)
    return [decode(r) for r in config["inputs"]], [decode(r) for r in config["outputs"]]


# ---- helpers ----------------------------------------------------------------------------------
def _tensor(value: Any, where: str) -> KerasTensor:
    value = as_symbolic(value)
    if not isinstance(value, KerasTensor):
        raise ConfigError(
            f"model {where} must be tensors from gu.Input(...) and layer calls, got "
            f"{type(value).__name__}"
        )
    return value


def _input_masks(args: tuple, masks: dict[int, Any]) -> Any:
    """The masks of a call's positional tensors, in the same structure (None when none)."""
    tensors = [a for a in args if any(isinstance(t, KerasTensor) for t in flatten(a))]
    structure = tensors[0] if len(tensors) == 1 else tensors
    found = map_structure(
        lambda t: masks.get(id(t)) if isinstance(t, KerasTensor) else None, structure
    )
    return None if all(m is None for m in flatten(found)) else found


def _output_mask(mask: Any, index: int, n_outputs: int) -> Any:
    """The mask of output `index`: a tensor mask is shared, a list gives one per output."""
    if mask is None or isinstance(mask, Tensor):
        return mask
    if isinstance(mask, (list, tuple)) and len(mask) == n_outputs and n_outputs > 1:
        return mask[index]
    return None  # a list of input masks the layer did not combine: no mask


def _run_logits(layer: nn.Module, x: Any, kwargs: dict[str, Any], mask: Any) -> Any:
    extra = {}
    if mask is not None and accepts_logits_mask(layer):
        extra["mask"] = mask
    if kwargs.get("mask") is not None and accepts_logits_mask(layer):
        extra["mask"] = kwargs["mask"]
    return layer.forward_logits(x, **extra)


def accepts_logits_mask(layer: nn.Module) -> bool:
    """forward_logits takes `mask=` where the layer's call does (by name, or through
    forward_logits' **kwargs)."""
    try:
        params = inspect.signature(layer.forward_logits).parameters
    except (TypeError, ValueError):
        return False
    named = "mask" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return named and accepts(layer, "mask")
