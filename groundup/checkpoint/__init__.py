"""Checkpoints: one entry point whatever the strategy, no pickle anywhere.

    save_checkpoint(path, model, optimizer, state, strategy=..., rank=..., world_size=...)
    save_step_checkpoint(directory, step, model, optimizer, state, keep_last, strategy=...)
    load_checkpoint(path, model, optimizer)          # reads either form

One process and DDP write the single-file form (`single.py`: safetensors + state.json; under
DDP the state is replicated and rank 0 writes while the others wait); FSDP2 writes a sharded
torch.distributed.checkpoint folder (`sharded.py`, every rank its shards), which reshards on
load, also into one plain process. `folders.py` is the run's `checkpoints/` history (`step-N/`,
`best/`, the `latest` pointer moved last, pruning, debris of killed saves); `weights.py` the
model weights alone; `rng.py` the RNG states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from groundup import distributed as dist_utils
from groundup.checkpoint.folders import (
    LATEST_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    clean_debris,
    find_latest,
    is_complete,
    is_sharded_checkpoint,
    prune_checkpoints,
    read_state,
    step_checkpoints,
    step_dir_name,
    write_latest,
)
from groundup.checkpoint.sharded import save_sharded_checkpoint, save_sharded_step_checkpoint
from groundup.checkpoint.single import (
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_single_checkpoint,
    save_single_step_checkpoint,
)
from groundup.checkpoint.weights import (
    in_dtype_of,
    load_tensors,
    load_weights,
    model_tensors,
    save_weights,
    unwrap,
)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    *,
    strategy: str = "none",
    rank: int = 0,
    world_size: int = 1,
) -> Path:
    """Write a checkpoint folder at `path` (replacing one there) in the strategy's form.
    Several ranks: every rank must call it."""
    if strategy == "fsdp":
        return save_sharded_checkpoint(path, model, optimizer, state or {})
    if world_size > 1:
        if rank == 0:
            save_single_checkpoint(path, unwrap(model), optimizer, state)
        dist_utils.barrier()
        return Path(path)
    return save_single_checkpoint(path, unwrap(model), optimizer, state)


def save_step_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    keep_last: int | None = 3,
    *,
    strategy: str = "none",
    rank: int = 0,
    world_size: int = 1,
) -> Path:
    """`save_checkpoint` for `<directory>/step-N`, then the `latest` pointer and pruning to
    the newest `keep_last` (None: keep all), in that order (crash safe)."""
    if strategy == "fsdp":
        return save_sharded_step_checkpoint(
            directory, step, model, optimizer, state or {}, keep_last=keep_last
        )
    if world_size > 1:  # DDP: the state is the same on every rank
        if rank == 0:
            save_single_step_checkpoint(directory, step, unwrap(model), optimizer, state, keep_last)
        dist_utils.barrier()
        return Path(directory) / step_dir_name(step)
    return save_single_step_checkpoint(
        directory, step, unwrap(model), optimizer, state, keep_last=keep_last
    )


__all__ = [
    "LATEST_FILE",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "clean_debris",
    "find_latest",
    "in_dtype_of",
    "is_complete",
    "is_sharded_checkpoint",
    "load_checkpoint",
    "load_tensors",
    "load_weights",
    "model_tensors",
    "optimizer_from_flat",
    "optimizer_to_flat",
    "prune_checkpoints",
    "read_state",
    "save_checkpoint",
    "save_step_checkpoint",
    "save_weights",
    "step_checkpoints",
    "step_dir_name",
    "unwrap",
    "write_latest",
]
