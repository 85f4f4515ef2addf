"""What `fit`, `evaluate` and `predict` were given, lined up with the model's inputs and outputs.

Keras accepts one array per input or output, a list of them in order, or a dict keyed by
input or output name. Each is turned into one tensor per input (and target per output), in the
model's order, with one-line errors for an unknown name, a missing one or a wrong count, found
before any training work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from groundup.data.preprocess import check_arrays
from groundup.errors import ConfigError, DataError
from groundup.keras.symbolic import DTYPES
from groundup.train.losses import Loss, SparseCategoricalCrossentropy


def is_array(value: Any) -> bool:
    """One array (not a list of arrays): a tensor, a NumPy array, or something array-like."""
    return isinstance(value, (torch.Tensor, np.ndarray)) or hasattr(value, "__array__")


def is_several(value: Any) -> bool:
    """A list/tuple of arrays, i.e. one per input (a list of numbers is one array)."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(is_array(v) for v in value)


def align(data: Any, names: Sequence[str], what: str, method: str) -> list[Any]:
    """`data` (one array, a list in order, or a dict by name) as one entry per name.

    `what` is "input" or "target" (for messages), `method` the caller ("fit", ...)."""
    n = len(names)
    if isinstance(data, Mapping):
        unknown = [k for k in data if k not in names]
        if unknown:
            raise DataError(
                f"{method} got data for {what} '{unknown[0]}', but the model's {what}s are "
                f"{list(names)}; use those names as the keys"
            )
        missing = [k for k in names if k not in data]
        if missing and what == "input":
            raise DataError(
                f"{method} has no data for input '{missing[0]}'; the model's inputs are "
                f"{list(names)}"
            )
        return [data.get(k) for k in names]
    if n == 1:
        if is_several(data) and len(data) == 1:
            return [data[0]]
        if is_several(data) and len(data) > 1 and what == "input":
            raise DataError(
                f"the model has 1 input but {method} got a list of {len(data)} arrays; pass "
                "one array (or stack them into one)"
            )
        return [data]
    if not is_several(data) or len(data) != n:
        got = f"{len(data)} arrays" if is_several(data) else "1 array"
        raise DataError(
            f"the model has {n} {what}s {list(names)} but {method} got {got}; pass a list of "
            f"{n} arrays or a dict keyed by {what} name"
        )
    return list(data)


def to_tensor(value: Any, name: str, dtype: str | None = None) -> torch.Tensor:
    """A checked tensor (NaN/inf refused, floats float32, integers int64), cast to the integer
    or bool `dtype` an Input declared (token ids given as floats); floats stay float32, and
    the model's precision decides the rest, as Keras casts inputs to its compute dtype."""
    try:
        tensor, _ = check_arrays(value)
    except DataError as exc:  # its messages call the array "x": name the input or target
        text = str(exc)
        raise DataError(f"{name}{text[1:]}" if text.startswith("x ") else text) from None
    wanted = DTYPES[dtype] if dtype is not None else None
    if wanted is not None and not wanted.is_floating_point and wanted != tensor.dtype:
        if tensor.is_floating_point() and not torch.equal(tensor, tensor.round()):
            raise DataError(f"{name} is declared {dtype} but holds fractions; give whole numbers")
        tensor = tensor.to(wanted)
    if tensor.dim() == 0:
        raise DataError(f"{name} is a single value; give one row per sample")
    return tensor


def same_length(tensors: Mapping[str, torch.Tensor | None]) -> int:
    """The sample count all the named tensors share (a one-line DataError when they differ)."""
    lengths = {k: int(t.shape[0]) for k, t in tensors.items() if t is not None}
    first, n = next(iter(lengths.items()))
    for key, count in lengths.items():
        if count != n:
            raise DataError(
                f"{key} has {count} samples but {first} has {n}; every input and target needs "
                "one row per sample"
            )
    return n


@dataclass
class Data:
    """One tensor per input and target (None: an output without targets), n samples."""

    inputs: list[torch.Tensor]
    targets: list[torch.Tensor | None]
    n: int


def prepare_target(y: torch.Tensor, loss_fn: Loss | None) -> torch.Tensor:
    """Class ids as int64 for sparse cross-entropy (an (N, 1) column is flattened); floats
    for every other loss."""
    if isinstance(loss_fn, SparseCategoricalCrossentropy):
        if y.is_floating_point() and not torch.equal(y, y.round()):
            raise DataError(
                "sparse_categorical_crossentropy needs integer class ids as targets, got "
                "fractions; use categorical_crossentropy for soft/one-hot targets"
            )
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        return y.long()
    return y.float()


def sample_weights(
    sample_weight: Any, class_weight: Mapping[int, float] | None, data: Data
) -> torch.Tensor | None:
    w = None
    if sample_weight is not None:
        w = torch.as_tensor(np.asarray(sample_weight), dtype=torch.float32).reshape(-1)
        if w.shape[0] != data.n:
            raise DataError(
                f"sample_weight has {w.shape[0]} values for {data.n} samples; give one per sample"
            )
    if class_weight is not None:
        if len(data.targets) != 1 or data.targets[0] is None:
            raise ConfigError(
                "class_weight applies to a model with one output; pass sample_weight instead"
            )
        w = class_weights(class_weight, data.targets[0]) * (w if w is not None else 1.0)
    return w


def class_weights(class_weight: Mapping[int, float], y: torch.Tensor) -> torch.Tensor:
    if y.dim() != 1 or y.is_floating_point():
        labels = y.argmax(-1) if y.dim() == 2 and y.shape[1] > 1 else y.reshape(-1).round().long()
    else:
        labels = y
    n_classes = int(labels.max()) + 1
    table = torch.ones(max(n_classes, max(class_weight) + 1))
    for cls_id, weight in class_weight.items():
        if weight < 0:
            raise ConfigError(f"class_weight for class {cls_id} is negative ({weight})")
        table[int(cls_id)] = float(weight)
    return table[labels]


def split(data: Data, cut: int) -> tuple[Data, Data]:
    def part(t: torch.Tensor | None, lo: int, hi: int | None) -> torch.Tensor | None:
        return None if t is None else t[lo:hi]

    first = Data([t[:cut] for t in data.inputs], [part(t, 0, cut) for t in data.targets], cut)
    rest = Data(
        [t[cut:] for t in data.inputs], [part(t, cut, None) for t in data.targets], data.n - cut
    )
    return first, rest


def concat(a: Data, b: Data) -> Data:
    """Training then validation samples in one table (validation at indices a.n and up)."""
    if len(a.targets) != len(b.targets) or any(
        (ta is None) != (tb is None) for ta, tb in zip(a.targets, b.targets)
    ):
        raise DataError("validation_data must give targets for the same outputs as y")
    inputs = [torch.cat([ta, tb.to(ta.dtype)]) for ta, tb in zip(a.inputs, b.inputs)]
    targets = [
        None if ta is None else torch.cat([ta, tb.to(ta.dtype)])  # type: ignore[union-attr]
        for ta, tb in zip(a.targets, b.targets)
    ]
    return Data(inputs, targets, a.n + b.n)
