"""Keras' weight utilities: `get_weights`/`set_weights` (NumPy arrays in Keras' order),
`count_params`, and `save_weights`/`load_weights` files keyed by layer name.

A layer's weights are what Keras counts as its variables: its parameters and its saved
buffers (BatchNormalization's moving mean and variance, Normalization's count), in creation
order; non-persistent buffers (constants) are not weights. A model's are its layers' in order.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from groundup.errors import CheckpointError, ConfigError, MissingFileError

WEIGHTS_FORMAT = "groundup.keras.weights"


def weight_entries(module: nn.Module) -> list[tuple[str, Tensor]]:
    """(state_dict key, tensor) of each weight, a tied one once (parameters stay live)."""
    seen: set[int] = set()
    entries = []
    for key, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        entries.append((key, tensor))
    return entries


def count_weights(module: nn.Module) -> tuple[int, int]:
    """(all weights, trainable ones): Keras' "Total params" and "Trainable params"."""
    total = trainable = 0
    for _, t in weight_entries(module):
        total += t.numel()
        if isinstance(t, nn.Parameter) and t.requires_grad:
            trainable += t.numel()
    return total, trainable


def get_weights(module: nn.Module) -> list[np.ndarray]:
    """Copies of the weights as NumPy arrays, in Keras' order."""
    out = []
    for _, t in weight_entries(module):
        t = t.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        out.append(t.cpu().numpy().copy())
    return out


def set_weights(module: nn.Module, arrays: Sequence[Any], who: str) -> None:
    """Copy `arrays` (as `get_weights` gives them) into the weights, every shape checked first."""
    entries = weight_entries(module)
    if isinstance(arrays, (np.ndarray, Tensor)) or not isinstance(arrays, Sequence):
        raise ConfigError(f"{who}.set_weights takes a list of arrays, got {type(arrays).__name__}")
    if len(arrays) != len(entries):
        raise ConfigError(
            f"{who}.set_weights got {len(arrays)} arrays but it has {len(entries)} weights "
            f"({', '.join(k for k, _ in entries) or 'none: build it first'}); pass one per weight"
        )
    values = [np.asarray(a) for a in arrays]
    for i, ((key, t), value) in enumerate(zip(entries, values)):
        if tuple(value.shape) != tuple(t.shape):
            raise ConfigError(
                f"{who}.set_weights: array {i} ({key}) has shape {tuple(value.shape)}, the "
                f"weight has {tuple(t.shape)}"
            )
    with torch.no_grad():
        for (_, t), value in zip(entries, values):
            t.copy_(torch.as_tensor(value, dtype=t.dtype))


def named_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of the model's layers in order (a plain torch child by its attribute)."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, (list, nn.ModuleList)):
        return [(getattr(layer, "name", str(i)), layer) for i, layer in enumerate(layers)]
    return [(getattr(child, "name", attr), child) for attr, child in model.named_children()]


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """One safetensors file, keys `layer name/weight key` (whatever the file's name: a Keras
    "x.weights.h5" name works, but the file is safetensors, not HDF5)."""
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    order = []
    for name, layer in named_layers(model):
        entries = weight_entries(layer)
        if entries:
            order.append(name)
        for key, t in entries:
            tensors[f"{name}/{key}"] = t.detach().contiguous().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": WEIGHTS_FORMAT, "layers": json.dumps(order)})
    return path


def _read(path: Path) -> tuple[dict[str, dict[str, Tensor]], list[str]]:
    if not path.is_file():
        raise MissingFileError(f"weights file not found: {path}; give the file save_weights wrote")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {path}: {exc}; the file is truncated or not a safetensors file"
        ) from None
    if meta.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(
            f"{path} was not written by save_weights (format {meta.get('format')!r}); load a "
            "model folder with gu.load_model"
        )
    by_layer: dict[str, dict[str, Tensor]] = {}
    for key, t in flat.items():
        name, _, inner = key.partition("/")
        by_layer.setdefault(name, {})[inner] = t
    return by_layer, json.loads(meta.get("layers", "[]"))


def _fits(layer: nn.Module, saved: dict[str, Tensor]) -> str | None:
    """Why `saved` cannot go into `layer` (None when it can)."""
    mine = dict(weight_entries(layer))
    if set(mine) != set(saved):
        return f"weights {sorted(saved)} in the file, {sorted(mine)} in the model"
    for key, t in mine.items():
        if tuple(saved[key].shape) != tuple(t.shape):
            return f"{key} is {tuple(saved[key].shape)} in the file, {tuple(t.shape)} in the model"
    return None


def load_weights(
    model: nn.Module, path: str | Path, by_name: bool = False, skip_mismatch: bool = False
) -> None:
    """Load a `save_weights` file: layer by layer in order, or by layer name (`by_name`, where
    layers the file does not hold keep their weights). A layer that does not fit is an error
    naming it, or skipped with a warning (`skip_mismatch`)."""
    path = Path(path)
    saved, order = _read(path)
    layers = [(n, layer) for n, layer in named_layers(model) if weight_entries(layer)]
    if by_name:
        pairs = [(n, layer, n) for n, layer in layers if n in saved]
    else:
        if len(order) != len(layers):
            raise CheckpointError(
                f"{path} holds the weights of {len(order)} layers, the model has {len(layers)} "
                "layers with weights; load with by_name=True to match them by name"
            )
        pairs = [(n, layer, s) for (n, layer), s in zip(layers, order)]
    plan, skipped = [], []
    for name, layer, source in pairs:
        reason = _fits(layer, saved[source])
        if reason is None:
            plan.append((layer, saved[source]))
        elif skip_mismatch:
            skipped.append(f"{name} ({reason})")
        else:
            raise CheckpointError(
                f"layer '{name}' does not fit the weights of '{source}' in {path}: {reason}; "
                "pass skip_mismatch=True to leave it as it is"
            )
    if skipped:
        text = "; ".join(skipped)
        warnings.warn(f"load_weights skipped {len(skipped)} layer(s): {text}", stacklevel=3)
    with torch.no_grad():
        for layer, tensors in plan:
            for key, t in weight_entries(layer):
                t.copy_(tensors[key].to(t.dtype))
