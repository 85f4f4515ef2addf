"""`gu.utils`: the Keras utilities tutorials call (`to_categorical`, `set_random_seed`,
`clear_session`, `plot_model`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from groundup.errors import DataError
from groundup.keras.layers import reset_layer_names
from groundup.keras.model import reset_model_names
from groundup.keras.plot_model import plot_model
from groundup.seed import set_seed

__all__ = ["clear_session", "plot_model", "set_random_seed", "to_categorical"]


def to_categorical(y: Any, num_classes: int | None = None) -> Any:
    """One-hot rows (float32) for class ids: shape (..., num_classes).

    A trailing axis of size 1 is dropped first, so (N, 1) labels give (N, C), as in Keras.
    `num_classes` defaults to the largest id + 1. A torch tensor gives a tensor back."""
    as_tensor = isinstance(y, torch.Tensor)
    ids = y.detach().cpu().numpy() if as_tensor else np.asarray(y)
    if ids.dtype.kind == "f":
        if not np.all(np.isfinite(ids)) or not np.array_equal(ids, np.round(ids)):
            raise DataError("to_categorical needs integer class ids, got fractions or NaN")
    elif ids.dtype.kind not in "biu" and ids.size:
        raise DataError(f"to_categorical needs integer class ids, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    shape = ids.shape[:-1] if ids.ndim > 1 and ids.shape[-1] == 1 else ids.shape
    flat = ids.reshape(-1)
    if num_classes is None:
        num_classes = int(flat.max()) + 1 if flat.size else 0
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise DataError(f"num_classes must be an integer, got {num_classes!r}")
    bad = flat[(flat < 0) | (flat >= num_classes)]
    if bad.size:
        raise DataError(
            f"to_categorical: class id {int(bad[0])} is outside 0..{int(num_classes) - 1}; "
            "raise num_classes or fix the labels"
        )
    out = np.zeros((flat.size, int(num_classes)), dtype=np.float32)
    out[np.arange(flat.size), flat] = 1.0
    out = out.reshape(*shape, int(num_classes))
    return torch.from_numpy(out) if as_tensor else out


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch at once (keras.utils.set_random_seed)."""
    set_seed(seed)


def clear_session() -> None:
    """Restart the automatic layer and model names (dense, dense_1, ...), as Keras does."""
    reset_layer_names()
    reset_model_names()
