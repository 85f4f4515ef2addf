"""The single-file checkpoint form (one process and DDP): weights and optimizer tensors in
safetensors, the rest in JSON, no pickle.

A checkpoint is a directory:
  model.safetensors      the unwrapped model's weights (tied weights stored once)
  optimizer.safetensors  optimizer state tensors and the RNG states
  state.json             step/epoch counters, optimizer hyper-parameters, data position,
                         running sums, callback states, config
It is written into a temporary sibling directory, fsync'd, then renamed into place, so a
crash mid-write never leaves a half checkpoint under the final name. `load_checkpoint` reads
this form and the sharded one (groundup.checkpoint.sharded).

Test hook: `GROUNDUP_TEST_SLOW_SAVE=<seconds>` makes a save sleep right after the weights are
written into the temporary directory, so a test can kill a run mid-save.
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

from groundup.checkpoint.folders import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    fsync_dir,
    is_sharded_checkpoint,
    kill_point,
    prune_checkpoints,
    read_state,
    step_dir_name,
    swap_in,
    write_latest,
    write_state,
)
from groundup.checkpoint.rng import restore_rng, rng_tensors
from groundup.checkpoint.sharded import load_sharded_checkpoint
from groundup.checkpoint.weights import load_weights, save_weights
from groundup.distributed import is_sharded
from groundup.errors import CheckpointError


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


def save_single_checkpoint(
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


def save_single_step_checkpoint(
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
    path = save_single_checkpoint(directory / step_dir_name(step), model, optimizer, state)
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
