"""`gu.utils.plot_model`: Keras's drawing of a model's layers, through pydot and Graphviz
when both are there; without them, a one-line refusal that names `model.summary()`, which
prints the same layers, shapes and connections as text."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from groundup.errors import DependencyError
from groundup.keras.tree import flatten


def _edges_and_shapes(model: Any) -> tuple[list[Any], list[tuple[str, str]], dict[str, str]]:
    """The layers in order, (from, to) layer-name pairs and each layer's output shape."""
    graph = getattr(model, "_graph", None)
    if graph is None:  # Sequential (or subclassed: its layers in order)
        layers = list(model.layers)
        names = [layer.name for layer in layers]
        return layers, list(zip(names, names[1:])), {}
    edges: list[tuple[str, str]] = []
    shapes: dict[str, str] = {}
    for node in graph.nodes:
        if node.is_input:
            continue
        for tensor in node.inputs:
            edges.append((tensor.layer.name, node.layer.name))
        shown = ", ".join(str(t.shape) for t in flatten(node.outputs))
        shapes.setdefault(node.layer.name, shown)
    for t in graph.inputs:
        shapes.setdefault(t.layer.name, str(t.shape))
    return list(graph.layers), edges, shapes


def plot_model(
    model: Any,
    to_file: str | Path = "model.png",
    show_shapes: bool = False,
    show_dtype: bool = False,
    show_layer_names: bool = True,
    rankdir: str = "TB",
    expand_nested: bool = False,
    dpi: int = 200,
    **kwargs: Any,
) -> Path:
    """Draw the model's layers and connections into `to_file` (its suffix picks the format:
    png, svg, pdf, dot). Needs pydot and Graphviz's `dot` program."""
    if importlib.util.find_spec("pydot") is None or shutil.which("dot") is None:
        raise DependencyError(
            "plot_model needs pydot and Graphviz (pip install pydot, and the graphviz "
            "package); model.summary() prints the layers, shapes and connections as text"
        )
    import pydot

    layers, edges, shapes = _edges_and_shapes(model)
    dot = pydot.Dot(graph_type="digraph", rankdir=rankdir, dpi=dpi)
    for layer in layers:
        label = (
            f"{layer.name} ({type(layer).__name__})" if show_layer_names else type(layer).__name__
        )
        if show_shapes and layer.name in shapes:
            label += f"\n{shapes[layer.name]}"
        dot.add_node(pydot.Node(layer.name, label=label, shape="box"))
    for src, dst in edges:
        dot.add_edge(pydot.Edge(src, dst))
    path = Path(to_file)
    fmt = path.suffix.lstrip(".") or "png"
    dot.write(str(path), format="raw" if fmt == "dot" else fmt)
    return path
