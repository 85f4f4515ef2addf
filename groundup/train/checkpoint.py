"""Checkpoints without pickle: weights and optimizer tensors in safetensors, the rest in JSON.

A checkpoint is a directory:
  model.safetensors      the unwrapped model's weights (tied weights stored once)
  optimizer.safetensors  optimizer state tensors and the RNG states
  state.json             step/epoch counters, optimizer hyper-parameters, data position, config
It is written into a temporary sibling directory, fsync'd, then renamed into place, so a
crash mid-write never leaves a half checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from groundup.errors import CheckpointError, MissingFileError

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile / DDP wrappers, so saved keys carry no prefixes."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied tensors stored once (safetensors refuses shared storage)."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in unwrap(model).state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen and tensor.numel() > 0:
            continue  # a tied weight: loading restores it through the module it is shared with
        seen[ident] = key
        out[key] = tensor.detach().contiguous().cpu()
    return out


def save_weights(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    save_file(model_tensors(model), str(path), metadata=metadata)


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load safetensors weights into `model`; missing, unexpected or mis-shaped keys are errors."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights file not found: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {path}: {exc}; the file is truncated or not safetensors"
        ) from None
    target = unwrap(model)
    expected = target.state_dict()
    shared = _tied_keys(target)
    missing = [k for k in expected if k not in tensors and k not in shared]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in tensors
        if k in expected and tensors[k].shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(f"shape mismatch loading {path}: " + "; ".join(wrong[:3]))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}")
        raise CheckpointError(
            f"{path} does not fit this model: {', '.join(parts)}; check the model config"
        )
    target.load_state_dict(tensors, strict=False)


def _tied_keys(model: nn.Module) -> set[str]:
    """Keys whose tensor shares storage with an earlier key (dropped on save)."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    tied: set[str] = set()
    for key, tensor in model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen and tensor.numel() > 0:
            tied.add(key)
        seen.add(ident)
    return tied


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (safetensors) and JSON-able metadata."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("state."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = meta["param_groups"]
    if len(groups) != len(optimizer.param_groups) or any(
        len(g["params"]) != len(c["params"]) for g, c in zip(groups, optimizer.param_groups)
    ):
        raise CheckpointError(
            "the checkpoint's optimizer state does not fit this model's parameters; "
            "resume with the same model config or start a new run"
        )
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_tensors() -> tuple[dict[str, torch.Tensor], dict]:
    """torch RNG states as tensors; numpy and python states as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    if "numpy" in meta:
        s = meta["numpy"]
        np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))
    if "python" in meta:
        s = meta["python"]
        random.setstate((s[0], tuple(s[1]), s[2]))


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (temp dir, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(model, tmp / MODEL_FILE)
    payload = dict(state or {})
    extra_tensors, rng_meta = rng_tensors()
    payload["rng"] = rng_meta
    if optimizer is not None:
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        extra_tensors.update(opt_tensors)
        payload["optimizer"] = opt_meta
    save_file(extra_tensors, str(tmp / OPTIMIZER_FILE))
    (tmp / STATE_FILE).write_text(json.dumps(payload, default=_json_default), encoding="utf-8")
    _fsync_dir(tmp)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)
    return path


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng_state: bool = True,
) -> dict[str, Any]:
    """Load weights (and optimizer/RNG state) from a checkpoint directory; returns state.json."""
    path = Path(path)
    if not (path / STATE_FILE).is_file() or not (path / MODEL_FILE).is_file():
        raise CheckpointError(
            f"{path} is not a complete groundup checkpoint (needs {MODEL_FILE} and {STATE_FILE})"
        )
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{path / STATE_FILE} is corrupted; use an earlier checkpoint"
        ) from None
    load_weights(model, path / MODEL_FILE)
    extra: dict[str, torch.Tensor] = {}
    if (path / OPTIMIZER_FILE).is_file():
        try:
            extra = load_file(str(path / OPTIMIZER_FILE))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path / OPTIMIZER_FILE}: {exc}") from None
    if optimizer is not None and "optimizer" in state:
        optimizer_from_flat(optimizer, extra, state["optimizer"])
    if restore_rng_state:
        restore_rng(extra, state.get("rng", {}))
    return state


def _fsync_dir(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_file():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in state.json")
