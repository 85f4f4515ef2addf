"""Symbolic tensors: `gu.Input` and what a layer does when it is called on one.

    inputs = gu.Input(shape=(784,))                 # KerasTensor, shape (None, 784)
    x = gu.layers.Dense(64, activation="relu")(inputs)
    outputs = gu.layers.Dense(10, activation="softmax")(x)
    model = gu.Model(inputs, outputs)

Calling a layer on symbolic tensors runs nothing: the layer is built from the input shapes,
its output shapes come from `compute_output_shape`, and a `Node` records the call (the layer
and its arguments, with the symbolic tensors where the real ones will go) so the model can
replay it. Any call structure is recorded as it is: one tensor, a list (merge layers), several
positional tensors (`mha(query, value)`), keyword tensors (`key=`), plain options.

`build` and `compute_output_shape` receive the same structure with per-sample shapes (no
batch axis) in place of tensors: one shape, a list of shapes, or several positional shapes;
a keyword tensor `key=` becomes `key_shape=` (or `key=`) where their signature has it, and a
plain option (e.g. `return_attention_scores=True`) is passed on where their signature has it.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from groundup.errors import ConfigError, GroundupError, ShapeError
from groundup.keras.layers import Layer
from groundup.keras.layers.core import Input as InputLayer
from groundup.keras.masking import accepts
from groundup.keras.tree import flatten, map_structure

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_SKIPPED_IN_SHAPES = ("mask", "training")  # runtime-only arguments: not part of the shapes
_NODE_SERIAL = itertools.count()  # creation order: a node is made after the nodes it reads


def check_dtype(dtype: Any, who: str) -> str | None:
    """A dtype name Keras users write ("float32", "int64", ...), or None for the default."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ConfigError(f"{who}: unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    return str(dtype)


class KerasTensor:
    """A placeholder for a batch of tensors while a model is being wired: its `shape` (batch
    axis None), `dtype` name and the `node` (layer call) that made it."""

    def __init__(
        self,
        shape: Sequence[int | None],
        dtype: str = "float32",
        name: str | None = None,
        node: Node | None = None,
        index: int = 0,
    ) -> None:
        self.shape: tuple[int | None, ...] = tuple(shape)
        self.dtype = dtype
        self.name = name or "keras_tensor"
        self.node = node  # set by Node; an Input's tensor points at its InputLayer's node
        self.index = index  # position among that node's flat outputs

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        """The shape without the batch axis (what gu.layers build from)."""
        return self.shape[1:]

    @property
    def layer(self) -> nn.Module:
        assert self.node is not None
        return self.node.layer

    def __repr__(self) -> str:
        return f"<KerasTensor shape={self.shape}, dtype={self.dtype}, name={self.name}>"

    def _refuse(self, *_: Any) -> Any:
        raise ConfigError(
            "symbolic tensors (from gu.Input) are combined with layers, not operators: use "
            "layers.Add()([a, b]), layers.Multiply()([a, b]), layers.Concatenate()([a, b]) "
            "or a layers.Lambda"
        )

    def __iter__(self) -> Any:
        raise ConfigError(
            f"'{self.name}' is one symbolic tensor, not several: a layer that returns several "
            "(return_state=True, return_attention_scores=True) must describe each of them in "
            "its compute_output_shape"
        )

    def __len__(self) -> int:
        raise ConfigError(f"'{self.name}' is a symbolic tensor of shape {self.shape}: no len()")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __truediv__ = __rtruediv__ = __matmul__ = __rmatmul__ = __neg__ = __pow__ = _refuse
    __getitem__ = _refuse


class Node:
    """One call of a layer on symbolic tensors: what the model replays with real tensors."""

    def __init__(self, layer: nn.Module, args: tuple, kwargs: dict[str, Any], outputs: Any):
        self.layer = layer
        self.args = args
        self.kwargs = kwargs
        self.outputs = outputs  # the KerasTensor structure the call returned
        self.serial = next(_NODE_SERIAL)
        self.inputs: list[KerasTensor] = [
            t for t in flatten((args, kwargs)) if isinstance(t, KerasTensor)
        ]
        nodes = layer.__dict__.setdefault("_keras_nodes", [])
        self.index = len(nodes)  # "dense[1][0]": the second call of dense, its first output
        nodes.append(self)
        for i, tensor in enumerate(flatten(outputs)):
            tensor.node, tensor.index = self, i

    @property
    def is_input(self) -> bool:
        return isinstance(self.layer, InputLayer)


def Input(  # noqa: N802 -- Keras' name: keras.Input(shape=...)
    shape: Sequence[int | None] | int | None = None,
    batch_size: int | None = None,
    dtype: Any = None,
    name: str | None = None,
    batch_shape: Sequence[int | None] | None = None,
    sparse: bool | None = None,
) -> KerasTensor:
    """A symbolic input: `gu.Input(shape=(784,))` is a batch of 784-feature samples.

    `shape` leaves out the batch axis (None marks a free axis, e.g. sequence length);
    `batch_shape` includes it. An integer `dtype` ("int64", ...) casts this input's data in
    `fit` and `predict` (token ids stored as floats); floats stay float32 (the model's
    precision decides the rest)."""
    if sparse:
        raise ConfigError("Input(sparse=True): sparse inputs are not supported; pass dense data")
    if shape is None and batch_shape is not None:
        shape = tuple(batch_shape)[1:]
    if shape is None:
        raise ConfigError("Input needs a shape, e.g. gu.Input(shape=(784,)) (no batch axis)")
    layer = InputLayer(shape, name=name)
    return input_tensor(layer, check_dtype(dtype, "Input"))


def input_tensor(layer: InputLayer, dtype: str | None = None) -> KerasTensor:
    """The symbolic tensor of an InputLayer (made once), so `gu.layers.Input(...)` objects can
    stand where `gu.Input(...)` tensors go."""
    tensor = layer.__dict__.get("_keras_tensor")
    if tensor is None:
        tensor = KerasTensor((None, *layer.input_shape), dtype or "float32", layer.name)
        tensor.explicit_dtype = dtype  # None: the data keeps its own dtype
        Node(layer, (), {}, tensor)
        layer.__dict__["_keras_tensor"] = tensor
    return tensor


def as_symbolic(value: Any) -> Any:
    """An InputLayer becomes its symbolic tensor; anything else stays as it is."""
    return input_tensor(value) if isinstance(value, InputLayer) else value


def has_symbolic(args: tuple, kwargs: dict[str, Any]) -> bool:
    return any(isinstance(v, (KerasTensor, InputLayer)) for v in flatten((args, kwargs)))


# ---- the call of a layer on symbolic tensors --------------------------------------------------
def fmt_shape(shape: Any) -> str:
    """(None, 4) for a per-sample (4,); structures of shapes element by element."""
    if _is_shape(shape):
        return str((None, *shape))
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{k}: {fmt_shape(v)}" for k, v in shape.items()) + "}"
    return "[" + ", ".join(fmt_shape(s) for s in shape) + "]"


def _is_shape(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(
        d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in value
    )


def _sample_shapes(structure: Any) -> Any:
    return map_structure(
        lambda t: tuple(t.sample_shape) if isinstance(t, KerasTensor) else t, structure
    )


def _signature(fn: Callable) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def _shape_arguments(
    fn: Callable, args: tuple, kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """The call's arguments as `fn` (build or compute_output_shape) takes them (module doc)."""
    params = _signature(fn)
    free = any(p.kind is p.VAR_KEYWORD for p in params.values())
    positional: list[Any] = []
    for arg in args:
        if not any(isinstance(t, KerasTensor) for t in flatten(arg)):
            break  # a plain positional option ends the tensors
        positional.append(_sample_shapes(arg))
    named: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _SKIPPED_IN_SHAPES:
            continue
        if any(isinstance(t, KerasTensor) for t in flatten(value)):
            shapes = _sample_shapes(value)
            for name in (f"{key}_shape", key):
                if name in params or (free and name == f"{key}_shape"):
                    named[name] = shapes
                    break
        elif key in params or free:
            named[key] = value
    return positional, named


def _compatible(built: Any, got: Any) -> bool:
    """Same structure and rank, equal where both axes are known."""
    if _is_shape(built) and _is_shape(got):
        return len(built) == len(got) and all(
            b is None or g is None or b == g for b, g in zip(built, got)
        )
    if isinstance(built, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(built) == len(got) and all(_compatible(b, g) for b, g in zip(built, got))
    return False


def _dry_run_fails(layer: Layer, args: tuple, kwargs: dict[str, Any]) -> str | None:
    """Run the built layer on zeros of the symbolic shapes; the reason it refuses, or None."""
    param = next(layer.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    float_dtype = param.dtype if param is not None and param.is_floating_point() else None

    def zeros(t: Any) -> Any:
        if not isinstance(t, KerasTensor):
            return t
        dtype = DTYPES.get(t.dtype, torch.float32)
        if dtype.is_floating_point and float_dtype is not None:
            dtype = float_dtype
        return torch.zeros((2, *(d or 2 for d in t.sample_shape)), dtype=dtype, device=device)

    real_args, real_kwargs = map_structure(zeros, (args, kwargs))
    was_training = layer.training
    layer.eval()
    try:
        with torch.no_grad():
            nn.Module.__call__(layer, *real_args, **real_kwargs)
    except GroundupError as exc:
        return str(exc)
    except (RuntimeError, ValueError, IndexError):
        return "its weights do not fit these inputs"
    finally:
        layer.train(was_training)
    return None


def _symbolic_outputs(shapes: Any, dtype: str, name: str) -> Any:
    if _is_shape(shapes):
        return KerasTensor((None, *shapes), dtype, name)
    if isinstance(shapes, dict):
        return {k: _symbolic_outputs(v, dtype, name) for k, v in shapes.items()}
    if isinstance(shapes, (list, tuple)):
        return type(shapes)(_symbolic_outputs(s, dtype, name) for s in shapes)
    raise ConfigError(
        f"{name}: compute_output_shape returned {shapes!r}; it must return a shape tuple "
        "(no batch axis) or a list of them"
    )


def _output_dtype(layer: nn.Module, inputs: list[KerasTensor]) -> str:
    declared = getattr(layer, "output_dtype", None)
    if declared is not None:
        return str(declared)
    if next(layer.parameters(), None) is not None or not inputs:
        return "float32"  # a layer with weights computes in floats (Embedding of ids too)
    return inputs[0].dtype  # reshaping/pooling/merging keeps the dtype


def _who(layer: nn.Module) -> str:
    name = getattr(layer, "name", None)
    return f"{type(layer).__name__} '{name}'" if name else type(layer).__name__


def call_symbolic(layer: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
    """Build `layer` for the symbolic inputs, record the call, return symbolic outputs."""
    args, kwargs = map_structure(as_symbolic, (tuple(args), dict(kwargs)))
    symbolic = [t for t in flatten((args, kwargs)) if isinstance(t, KerasTensor)]
    who = _who(layer)
    if hasattr(layer, "compute_output_spec"):  # a container (a Model used as a layer)
        outputs = layer.compute_output_spec(*args, **kwargs)
        Node(layer, args, kwargs, outputs)
        return outputs
    shape_args, shape_kwargs = _shape_arguments(layer.compute_output_shape, args, kwargs)
    if not shape_args:
        raise ConfigError(f"{who} was called without a tensor input; pass it a tensor first")
    got = shape_args[0] if len(shape_args) == 1 else shape_args
    try:
        if not layer.built:
            build_args, build_kwargs = _shape_arguments(layer.build, args, kwargs)
            layer.build(*build_args, **build_kwargs)
        elif layer.build_input_shape is not None and not _compatible(layer.build_input_shape, got):
            reason = _dry_run_fails(layer, args, kwargs)
            if reason is not None:
                raise ShapeError(
                    f"{who} was built for inputs of shape {fmt_shape(layer.build_input_shape)}, "
                    f"got {fmt_shape(got)} ({reason}); give it inputs like the first ones, or "
                    "use a new layer"
                )
        out_shapes = layer.compute_output_shape(*shape_args, **shape_kwargs)
    except (ShapeError, ConfigError) as exc:
        text = str(exc)
        if getattr(layer, "name", "\0") in text:
            raise
        raise type(exc)(f"{who} cannot take inputs of shape {fmt_shape(got)}: {text}") from None
    outputs = _symbolic_outputs(
        out_shapes, _output_dtype(layer, symbolic), getattr(layer, "name", "")
    )
    Node(layer, args, kwargs, outputs)
    return outputs


def layer_call(
    layer: nn.Module, call: Callable[..., Any], args: tuple, kwargs: dict[str, Any]
) -> Any:
    """What calling a gu layer does: on symbolic tensors, record a node (`call_symbolic`);
    on real ones, `call` (nn.Module's), honouring Keras' `training=` for a layer whose forward
    does not take it by running it in that mode for this call."""
    if has_symbolic(args, kwargs):
        return call_symbolic(layer, args, kwargs)
    if "training" in kwargs and not accepts(layer, "training"):
        kwargs = dict(kwargs)
        training = kwargs.pop("training")
        if training is not None and bool(training) != layer.training:
            was = layer.training
            layer.train(bool(training))
            try:
                return call(*args, **kwargs)
            finally:
                layer.train(was)
    return call(*args, **kwargs)
