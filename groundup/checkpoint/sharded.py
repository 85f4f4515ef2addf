"""Sharded (FSDP2) checkpoints with torch.distributed.checkpoint (DCP).

A sharded checkpoint directory holds `dcp/` (the model and optimizer state dicts, one file per
rank plus `.metadata`), `rng.safetensors` (rank 0's RNG) and `state.json`. Every rank writes its
shards into the same temporary directory; rank 0 renames it once all have finished. DCP
reshards on load, so such a checkpoint resumes on any number of ranks, and also in one plain
process (it is read into an ordinary state dict). `is_sharded_checkpoint(path)` recognises one.

DDP and single-process runs write the single-file safetensors form instead (the state is
replicated: rank 0 writes); see groundup.checkpoint, which also loads either form.

Test hook: `GROUNDUP_TEST_SLOW_SAVE=<seconds>` makes the save sleep after the shards are
written into the temporary directory, so a test can kill a run mid-save.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from groundup.checkpoint.folders import (
    DCP_DIR,
    RNG_FILE,
    fsync_dir,
    is_sharded_checkpoint,
    prune_checkpoints,
    read_state,
    step_dir_name,
    swap_in,
    write_latest,
    write_state,
)
from groundup.checkpoint.rng import restore_rng, rng_tensors
from groundup.errors import CheckpointError


def gathered_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU tensors of a sharded model on rank 0 (a collective; {} on the other ranks),
    tied weights stored once."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    tied = _tied_by_identity(model)
    return {k: v.detach().contiguous() for k, v in full.items() if k not in tied}


def _tied_by_identity(model: nn.Module) -> set[str]:
    """Names of parameters that are the same object as an earlier-named one (tied weights)."""
    seen: set[int] = set()
    tied: set[str] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.add(id(p))
    return tied


def save_sharded_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write an FSDP2 checkpoint with torch.distributed.checkpoint; every rank must call it.

    Atomic like `save_checkpoint`: all ranks write into one temporary directory (named by rank
    0's pid), and after a barrier rank 0 adds state.json and renames it into place. For several
    nodes, the run directory must be on a file system every node sees.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    path = Path(path)
    main = dist.get_rank() == 0
    box = [f".{path.name}.tmp-{os.getpid()}"]
    dist.broadcast_object_list(box, src=0)
    tmp = path.with_name(box[0])
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / DCP_DIR).mkdir(parents=True)
    dist.barrier()
    tensors: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        tensors["optim"] = get_optimizer_state_dict(model, optimizer)
    dcp.save(tensors, checkpoint_id=str(tmp / DCP_DIR))
    slow = os.environ.get("GROUNDUP_TEST_SLOW_SAVE")
    if slow:
        time.sleep(float(slow))
    dist.barrier()  # every rank's shard file is on disk
    if main:
        payload = dict(state or {})
        rng, rng_meta = rng_tensors()
        payload["rng"] = rng_meta
        payload["format"] = "dcp"
        payload["has_optimizer"] = optimizer is not None
        if optimizer is not None:
            # Trap: dcp.load fills only the keys the fresh optimizer's groups already have,
            # so keys added later (initial_lr, which the LR schedule reads) must travel here.
            payload["optimizer_groups"] = [
                {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups
            ]
        payload["saved_world_size"] = dist.get_world_size()
        save_file(rng, str(tmp / RNG_FILE))
        write_state(tmp, payload)
        fsync_dir(tmp / DCP_DIR)
        fsync_dir(tmp)
        swap_in(tmp, path)
    dist.barrier()
    return path


def save_sharded_step_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    keep_last: int | None = 3,
) -> Path:
    """`save_step_checkpoint` for FSDP2: sharded save by all ranks, pointer and pruning by rank 0."""
    import torch.distributed as dist

    directory = Path(directory)
    path = save_sharded_checkpoint(directory / step_dir_name(step), model, optimizer, state)
    if dist.get_rank() == 0:
        write_latest(directory, path.name)
        if keep_last is not None:
            prune_checkpoints(directory, keep_last)
    dist.barrier()
    return path


def load_sharded_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng_state: bool = True,
) -> dict[str, Any]:
    """Load a torch.distributed.checkpoint directory into `model` (sharded or not, any number
    of ranks: DCP reshards) and `optimizer`; returns state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(path)
    state = read_state(path)
    with_optim = optimizer is not None and state.get("has_optimizer", True)
    target: dict[str, Any] = {"model": get_model_state_dict(model)}
    if with_optim:
        target["optim"] = get_optimizer_state_dict(model, optimizer)
    try:
        with warnings.catch_warnings():
            # one plain process reading a sharded checkpoint: the intended case here
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load")
            dcp.load(target, checkpoint_id=str(path / DCP_DIR))
    except Exception as exc:  # DCP wraps every reader failure in its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read the sharded checkpoint {path / DCP_DIR}: {first}; the files are "
            "damaged or from another model config"
        ) from None
    set_model_state_dict(model, target["model"])
    if with_optim:
        set_optimizer_state_dict(model, optimizer, target["optim"])
        for group, saved in zip(optimizer.param_groups, state.get("optimizer_groups", [])):
            for key, value in saved.items():
                if isinstance(group.get(key), torch.Tensor):
                    group[key].fill_(value)  # a tensor LR (fused/capturable): keep the tensor
                else:
                    group[key] = tuple(value) if isinstance(value, list) else value
    if restore_rng_state and (path / RNG_FILE).is_file():
        try:
            rng = load_file(str(path / RNG_FILE))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path / RNG_FILE}: {exc}") from None
        restore_rng(rng, state.get("rng", {}))
    return state


__all__ = [
    "gathered_tensors",
    "is_sharded_checkpoint",
    "load_sharded_checkpoint",
    "save_sharded_checkpoint",
    "save_sharded_step_checkpoint",
]
