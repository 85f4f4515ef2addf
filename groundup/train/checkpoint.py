"""Checkpoints without pickle: weights and optimizer tensors in safetensors, the rest in JSON.

A checkpoint is a directory:
  model.safetensors      the unwrapped model's weights (tied weights stored once)
  optimizer.safetensors  optimizer state tensors and the RNG states
  state.json             step/epoch counters, optimizer hyper-parameters, data position, config
It is written into a temporary sibling directory, fsync'd, then renamed into place, so a
crash mid-write never leaves a half checkpoint under the final name.

A run keeps a history in its `checkpoints/` folder (`step-N/`, `best/`, and `latest`, a pointer
updated LAST; see groundup.train.checkpoint_dirs). `find_latest(dir)` follows `latest` and falls
back to the newest complete step directory.

Sharded (FSDP2) checkpoints are torch.distributed.checkpoint directories, written and read by
groundup.train.sharded_checkpoint; `load_checkpoint` reads either form. DDP and single-process
runs write the safetensors form (the state is replicated: rank 0 writes). The names of those
modules stay importable from here.

Test hook: `GROUNDUP_TEST_SLOW_SAVE=<seconds>` makes `save_checkpoint` sleep right after the
weights are written into the temporary directory, so a test can kill a run mid-save.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from groundup.errors import CheckpointError, MissingFileError
from groundup.train.checkpoint_dirs import (
    DCP_DIR,
    DCP_METADATA,
    LATEST_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    STATE_FILE,
    STEP_DIR,
    find_latest,
    fsync_dir,
    is_complete,
    is_sharded_checkpoint,
    kill_point,
    prune_checkpoints,
    read_state,
    step_checkpoints,
    step_dir_name,
    swap_in,
    write_latest,
    write_state,
)
from groundup.train.distributed import is_sharded
from groundup.train.rng_state import restore_rng, rng_tensors
from groundup.train.sharded_checkpoint import (
    gathered_tensors,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
    save_sharded_step_checkpoint,
)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile / DDP wrappers, so saved keys carry no prefixes."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied tensors stored once (safetensors refuses shared storage).

    For an FSDP2 model this gathers the full tensors: every rank must call it, and only rank 0
    gets them (the others get an empty dict).
    """
    if is_sharded(unwrap(model)):
        return gathered_tensors(unwrap(model))
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
    load_tensors(model, tensors, path, strict=strict)


def load_tensors(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    source: str | Path,
    strict: bool = True,
    allow_missing: tuple[str, ...] = (),
    fix: str = "check the model config",
) -> None:
    """Load `tensors` into `model` after checking them: a shape mismatch is always an error,
    missing or unexpected keys are with `strict` (tied weights, and keys starting with
    `allow_missing`, may be absent). `source` names where they came from, `fix` the remedy."""
    target = unwrap(model)
    expected = target.state_dict()
    shared = _tied_keys(target)
    missing = [
        k
        for k in expected
        if k not in tensors and k not in shared and not k.startswith(allow_missing)
    ]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in tensors
        if k in expected and tensors[k].shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(f"shape mismatch loading {source}: " + "; ".join(wrong[:3]))
    if strict and (missing or unexpected):
        parts = [f"missing keys {missing[:5]}"] if missing else []
        parts += [f"unexpected keys {unexpected[:5]}"] if unexpected else []
        raise CheckpointError(f"{source} does not fit this model: {', '.join(parts)}; {fix}")
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
    slow = os.environ.get("GROUNDUP_TEST_SLOW_SAVE")
    if slow:  # test hook: lets a test kill the process while a checkpoint is half written
        time.sleep(float(slow))
    kill_point("save-mid")
    payload = dict(state or {})
    extra_tensors, rng_meta = rng_tensors()
    payload["rng"] = rng_meta
    if optimizer is not None:
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        extra_tensors.update(opt_tensors)
        payload["optimizer"] = opt_meta
    save_file(extra_tensors, str(tmp / OPTIMIZER_FILE))
    write_state(tmp, payload)
    fsync_dir(tmp)
    swap_in(tmp, path)
    return path


def save_step_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    keep_last: int | None = 3,
) -> Path:
    """Save `directory/step-N` atomically, point `latest` at it, then prune old step dirs.

    Order matters for crash safety: the new checkpoint and the pointer are in place before
    anything older is deleted. `keep_last=None` keeps every checkpoint.
    """
    directory = Path(directory)
    path = save_checkpoint(directory / step_dir_name(step), model, optimizer, state)
    write_latest(directory, path.name)
    if keep_last is not None:
        prune_checkpoints(directory, keep_last)
    return path


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng_state: bool = True,
) -> dict[str, Any]:
    """Load weights (and optimizer/RNG state) from a checkpoint directory; returns state.json."""
    path = Path(path)
    if is_sharded_checkpoint(path) and (path / STATE_FILE).is_file():
        return load_sharded_checkpoint(path, model, optimizer, restore_rng_state)
    if is_sharded(model):
        raise CheckpointError(
            f"{path} is a single-file (DDP or one-process) checkpoint and this run shards the "
            "model (strategy fsdp); resume it with distributed.strategy: ddp, or start a new run"
        )
    if not (path / STATE_FILE).is_file() or not (path / MODEL_FILE).is_file():
        raise CheckpointError(
            f"{path} is not a complete groundup checkpoint (needs {MODEL_FILE} and {STATE_FILE})"
        )
    state = read_state(path)
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


def config_diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested config dicts differ (`train.max_steps`)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}{key}"
            if key not in saved or key not in current:
                out.append(name)
            else:
                out.extend(config_diff(saved[key], current[key], name + "."))
        return out
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        saved, current = list(saved), list(current)
    return [] if saved == current else [prefix.rstrip(".") or "<config>"]


def check_config(saved: dict[str, Any] | None, current: dict[str, Any] | None, where: Any) -> None:
    """Refuse to resume a checkpoint made with another config, naming the differing fields."""
    if saved is None or current is None:
        return
    diff = config_diff(saved, current)
    if diff:
        shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise CheckpointError(
            f"--resume needs the config the run started with ({where}); these fields differ: "
            f"{shown}; undo those changes or start a new run_dir"
        )


__all__ = [
    "DCP_DIR",
    "DCP_METADATA",
    "LATEST_FILE",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "RNG_FILE",
    "STATE_FILE",
    "STEP_DIR",
    "check_config",
    "config_diff",
    "find_latest",
    "is_complete",
    "is_sharded_checkpoint",
    "load_checkpoint",
    "load_sharded_checkpoint",
    "load_weights",
    "model_tensors",
    "optimizer_from_flat",
    "optimizer_to_flat",
    "prune_checkpoints",
    "restore_rng",
    "rng_tensors",
    "save_checkpoint",
    "save_sharded_checkpoint",
    "save_sharded_step_checkpoint",
    "save_step_checkpoint",
    "save_weights",
    "step_checkpoints",
    "step_dir_name",
    "unwrap",
    "write_latest",
]
