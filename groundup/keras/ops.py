"""`gu.ops`: Keras's most used `keras.ops` functions on torch tensors, with Keras's argument
names (`axis`, `keepdims`, `x1`/`x2`), so a custom loss, metric or layer from a guide,
`ops.mean(ops.square(y_true - y_pred), axis=-1)`, runs as written.

Every function takes tensors, NumPy arrays, Python numbers or a metric's variable
(`gu.metrics.Metric.add_variable`) and returns a torch tensor on the device of its tensor
arguments; what is made from nothing else (`ops.zeros`, a NumPy array) goes where Keras puts
it, on the GPU when there is one (where `compile(device="auto")` puts the model). Python
floats become float32 (Keras's default float type); NumPy arrays keep their dtype. Reductions follow NumPy: `axis=None` reduces everything, `var`/`std` are population
statistics, `argmax(axis=None)` indexes the flattened array.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from groundup.errors import ConfigError

Axis = int | Sequence[int] | None

__all__ = [
    "abs", "absolute", "add", "all", "any", "arange", "argmax", "argmin", "cast", "clip",
    "concatenate", "convert_to_numpy", "convert_to_tensor", "cumsum", "divide", "dot", "equal",
    "exp", "expand_dims", "floor", "greater", "greater_equal", "less", "less_equal", "log",
    "log_softmax", "logical_and", "logical_not", "logical_or", "matmul", "max", "maximum",
    "mean", "min", "minimum", "multiply", "negative", "not_equal", "one_hot", "ones",
    "ones_like", "power", "prod", "relu", "reshape", "round", "shape", "sigmoid", "sign",
    "softmax", "sqrt", "square", "squeeze", "stack", "std", "subtract", "sum", "tanh",
    "top_k", "transpose", "var", "where", "zeros", "zeros_like",
]  # fmt: skip

_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def dtype_of(dtype: Any) -> torch.dtype:
    """A torch dtype from Keras's name ("float32", "int32", ...), a NumPy or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (float, "float"):
        return torch.float32
    if dtype in (int, "int"):
        return torch.int64
    if dtype is bool:
        return torch.bool
    name = dtype if isinstance(dtype, str) else getattr(np.dtype(dtype), "name", str(dtype))
    if name not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def default_device() -> torch.device:
    """Keras's default device: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device(*values: Any) -> torch.device | None:
    for v in values:
        t = _unwrap(v)
        if isinstance(t, Tensor):
            return t.device
    return None


def _unwrap(x: Any) -> Any:
    """A metric variable's tensor; anything else as it is."""
    value = getattr(x, "keras_value", None)
    return value() if callable(value) else x


def _t(x: Any, device: torch.device | None = None, dtype: Any = None) -> Tensor:
    """`x` as a tensor (on `device` when it was not one already)."""
    x = _unwrap(x)
    if isinstance(x, Tensor):
        return x if dtype is None else x.to(dtype_of(dtype))
    if isinstance(x, (list, tuple)) and builtins.any(isinstance(_unwrap(v), Tensor) for v in x):
        return torch.stack([_t(v, device) for v in x])
    if dtype is None and isinstance(x, float):
        dtype = torch.float32
    elif dtype is None and isinstance(x, (list, tuple)):
        arr = np.asarray(x)
        dtype = torch.float32 if arr.dtype == np.float64 else None
        x = arr
    t = torch.as_tensor(x, device=device or default_device())
    return t if dtype is None else t.to(dtype_of(dtype))


def _two(x1: Any, x2: Any) -> tuple[Tensor, Tensor]:
    device = _device(x1, x2)
    a, b = _unwrap(x1), _unwrap(x2)
    if isinstance(a, Tensor) and not isinstance(b, Tensor) and np.isscalar(b):
        return a, torch.as_tensor(b, dtype=torch.result_type(a, b), device=a.device)
    if isinstance(b, Tensor) and not isinstance(a, Tensor) and np.isscalar(a):
        return torch.as_tensor(a, dtype=torch.result_type(b, a), device=b.device), b
    return _t(a, device), _t(b, device)


def _dims(axis: Axis) -> tuple[int, ...] | None:
    if axis is None:
        return None
    return (int(axis),) if isinstance(axis, (int, np.integer)) else tuple(int(a) for a in axis)


def _float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.to(torch.float32)


# ---------------------------------------------------------------- creation and conversion
def convert_to_tensor(x: Any, dtype: Any = None) -> Tensor:
    return _t(x, dtype=dtype)


def convert_to_numpy(x: Any) -> np.ndarray:
    x = _unwrap(x)
    if isinstance(x, Tensor):
        x = x.detach()
        return (x.float() if x.dtype == torch.bfloat16 else x).cpu().numpy()
    return np.asarray(x)


def cast(x: Any, dtype: Any) -> Tensor:
    return _t(x).to(dtype_of(dtype))


def ones(shape: Any, dtype: Any = None) -> Tensor:
    return torch.ones(
        _shape_arg(shape), dtype=dtype_of(dtype or "float32"), device=default_device()
    )


def zeros(shape: Any, dtype: Any = None) -> Tensor:
    return torch.zeros(
        _shape_arg(shape), dtype=dtype_of(dtype or "float32"), device=default_device()
    )


def ones_like(x: Any, dtype: Any = None) -> Tensor:
    return torch.ones_like(_t(x), dtype=None if dtype is None else dtype_of(dtype))


def zeros_like(x: Any, dtype: Any = None) -> Tensor:
    return torch.zeros_like(_t(x), dtype=None if dtype is None else dtype_of(dtype))


def arange(start: Any, stop: Any = None, step: Any = 1, dtype: Any = None) -> Tensor:
    if stop is None:
        start, stop = 0, start
    out = torch.arange(start, stop, step, device=default_device())
    return out if dtype is None else out.to(dtype_of(dtype))


def one_hot(x: Any, num_classes: int, axis: int = -1, dtype: Any = None) -> Tensor:
    """One-hot rows (float32 by default) for integer class ids."""
    ids = _t(x).long()
    out = F.one_hot(ids, int(num_classes)).to(dtype_of(dtype or "float32"))
    return out if axis == -1 else torch.movedim(out, -1, axis)


def _shape_arg(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def shape(x: Any) -> tuple[int, ...]:
    return tuple(_t(x).shape)


# ---------------------------------------------------------------- elementwise
def abs(x: Any) -> Tensor:  # noqa: A001 -- Keras's name
    return torch.abs(_t(x))


absolute = abs


def square(x: Any) -> Tensor:
    return torch.square(_t(x))


def sqrt(x: Any) -> Tensor:
    return torch.sqrt(_float(_t(x)))


def exp(x: Any) -> Tensor:
    return torch.exp(_float(_t(x)))


def log(x: Any) -> Tensor:
    return torch.log(_float(_t(x)))


def negative(x: Any) -> Tensor:
    return torch.negative(_t(x))


def sign(x: Any) -> Tensor:
    return torch.sign(_t(x))


def floor(x: Any) -> Tensor:
    return torch.floor(_t(x))


def round(x: Any, decimals: int = 0) -> Tensor:  # noqa: A001 -- Keras's name
    return torch.round(_t(x), decimals=decimals)


def power(x1: Any, x2: Any) -> Tensor:
    return torch.pow(*_two(x1, x2))


def add(x1: Any, x2: Any) -> Tensor:
    return torch.add(*_two(x1, x2))


def subtract(x1: Any, x2: Any) -> Tensor:
    return torch.subtract(*_two(x1, x2))


def multiply(x1: Any, x2: Any) -> Tensor:
    return torch.multiply(*_two(x1, x2))


def divide(x1: Any, x2: Any) -> Tensor:
    return torch.true_divide(*_two(x1, x2))


def maximum(x1: Any, x2: Any) -> Tensor:
    return torch.maximum(*_two(x1, x2))


def minimum(x1: Any, x2: Any) -> Tensor:
    return torch.minimum(*_two(x1, x2))


def clip(x: Any, x_min: Any, x_max: Any) -> Tensor:
    return torch.clamp(_t(x), x_min, x_max)


def equal(x1: Any, x2: Any) -> Tensor:
    return torch.eq(*_two(x1, x2))


def not_equal(x1: Any, x2: Any) -> Tensor:
    return torch.ne(*_two(x1, x2))


def greater(x1: Any, x2: Any) -> Tensor:
    return torch.gt(*_two(x1, x2))


def greater_equal(x1: Any, x2: Any) -> Tensor:
    return torch.ge(*_two(x1, x2))


def less(x1: Any, x2: Any) -> Tensor:
    return torch.lt(*_two(x1, x2))


def less_equal(x1: Any, x2: Any) -> Tensor:
    return torch.le(*_two(x1, x2))


def logical_and(x1: Any, x2: Any) -> Tensor:
    return torch.logical_and(*_two(x1, x2))


def logical_or(x1: Any, x2: Any) -> Tensor:
    return torch.logical_or(*_two(x1, x2))


def logical_not(x: Any) -> Tensor:
    return torch.logical_not(_t(x))


def where(condition: Any, x1: Any = None, x2: Any = None) -> Any:
    """Elements of x1 where condition holds, else of x2; with neither, the indices (NumPy)."""
    cond = _t(condition).bool()
    if x1 is None and x2 is None:
        return torch.where(cond)
    if x1 is None or x2 is None:
        raise ConfigError("ops.where needs both x1 and x2, or neither")
    a, b = _two(x1, x2)
    return torch.where(cond, a.to(cond.device), b.to(cond.device))


# ---------------------------------------------------------------- activations
def relu(x: Any) -> Tensor:
    return F.relu(_t(x))


def sigmoid(x: Any) -> Tensor:
    return torch.sigmoid(_float(_t(x)))


def tanh(x: Any) -> Tensor:
    return torch.tanh(_float(_t(x)))


def softmax(x: Any, axis: int = -1) -> Tensor:
    return torch.softmax(_float(_t(x)), dim=axis)


def log_softmax(x: Any, axis: int = -1) -> Tensor:
    return torch.log_softmax(_float(_t(x)), dim=axis)


# ---------------------------------------------------------------- reductions
def _reduce(fn: Any, x: Tensor, axis: Axis, keepdims: bool) -> Tensor:
    dims = _dims(axis)
    if dims is None:
        out = fn(x)
        return out.reshape([1] * x.dim()) if keepdims else out
    return fn(x, dim=dims, keepdim=keepdims)


def mean(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    return _reduce(torch.mean, _float(_t(x)), axis, keepdims)


def sum(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return _reduce(torch.sum, _t(x), axis, keepdims)


def prod(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    return _one_axis_at_a_time(torch.prod, _t(x), axis, keepdims)


def max(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return _reduce(torch.amax, _t(x), axis, keepdims)


def min(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return _reduce(torch.amin, _t(x), axis, keepdims)


def var(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    t, dims = _float(_t(x)), _dims(axis)
    out = torch.var(t, dim=dims, correction=0, keepdim=keepdims)
    return out.reshape([1] * t.dim()) if keepdims and dims is None else out


def std(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:
    return torch.sqrt(var(x, axis=axis, keepdims=keepdims))


def any(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return _one_axis_at_a_time(torch.any, _t(x).bool(), axis, keepdims)


def all(x: Any, axis: Axis = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return _one_axis_at_a_time(torch.all, _t(x).bool(), axis, keepdims)


def _one_axis_at_a_time(fn: Any, t: Tensor, axis: Axis, keepdims: bool) -> Tensor:
    """Reductions whose torch form takes one `dim` only (prod, any, all)."""
    dims = _dims(axis)
    if dims is None:
        out = fn(t)
        return out.reshape([1] * t.dim()) if keepdims else out
    for d in sorted((d % t.dim() for d in dims), reverse=True):
        t = fn(t, dim=d, keepdim=keepdims)
    return t


def argmax(x: Any, axis: int | None = None, keepdims: bool = False) -> Tensor:
    t = _t(x)
    if axis is None:
        out = torch.argmax(t.reshape(-1))
        return out.reshape([1] * t.dim()) if keepdims else out
    return torch.argmax(t, dim=axis, keepdim=keepdims)


def argmin(x: Any, axis: int | None = None, keepdims: bool = False) -> Tensor:
    t = _t(x)
    if axis is None:
        out = torch.argmin(t.reshape(-1))
        return out.reshape([1] * t.dim()) if keepdims else out
    return torch.argmin(t, dim=axis, keepdim=keepdims)


def cumsum(x: Any, axis: int | None = None) -> Tensor:
    t = _t(x)
    return torch.cumsum(t.reshape(-1) if axis is None else t, dim=0 if axis is None else axis)


def top_k(x: Any, k: int, sorted: bool = True) -> tuple[Tensor, Tensor]:  # noqa: A002
    out = torch.topk(_t(x), int(k), dim=-1, sorted=sorted)
    return out.values, out.indices


# ---------------------------------------------------------------- shapes and products
def reshape(x: Any, newshape: Any) -> Tensor:
    return torch.reshape(_t(x), _shape_arg(newshape))


def expand_dims(x: Any, axis: int) -> Tensor:
    return torch.unsqueeze(_t(x), axis)


def squeeze(x: Any, axis: Axis = None) -> Tensor:
    t = _t(x)
    return torch.squeeze(t) if axis is None else torch.squeeze(t, _dims(axis))


def transpose(x: Any, axes: Sequence[int] | None = None) -> Tensor:
    t = _t(x)
    return t.permute(*reversed(range(t.dim()))) if axes is None else t.permute(*axes)


def concatenate(xs: Sequence[Any], axis: int = 0) -> Tensor:
    device = _device(*xs)
    return torch.cat([_t(x, device) for x in xs], dim=axis)


def stack(x: Sequence[Any], axis: int = 0) -> Tensor:
    device = _device(*x)
    return torch.stack([_t(v, device) for v in x], dim=axis)


def matmul(x1: Any, x2: Any) -> Tensor:
    return torch.matmul(*_two(x1, x2))


def dot(x1: Any, x2: Any) -> Tensor:
    a, b = _two(x1, x2)
    if a.dim() == 0 or b.dim() == 0:
        return a * b
    return torch.matmul(a, b)
