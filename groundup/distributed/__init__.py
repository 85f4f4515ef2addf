"""Several processes on PyTorch's own engine: torchrun starts the processes, DDP or FSDP2 wraps the
model, torch.distributed.checkpoint saves sharded state. There is no home-made layer here,
only the glue the Trainer and the jobs need:

- `init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT) and starts the process group: nccl on GPUs, gloo on CPUs. Without torchrun it
  does nothing and every helper answers as for one process (rank 0 of 1, no collectives).
- `resolve_strategy()` / `wrap_model()`: DDP for models that fit one device; FSDP2
  (`fully_shard` per transformer block, then the root) with bf16 parameters and fp32
  gradient reduction for large ones; optional activation checkpointing of every block.
- `main_first()`: rank 0 does the file-system work (run directory, tokenizer, shards), the
  other ranks wait for it and get its result or its error.
- `launch_torchrun()`: `groundup pretrain CONFIG --nproc N` re-runs itself under torchrun.

The parts: `process_group` (torchrun's environment, the ranks, collectives, `main_first`,
`run_job`), `strategies` (DDP or FSDP2 for a model), `data_parallel` (what the Trainer's
step needs across ranks), `launch` (`--nproc`). Everything public is importable from here:
`from groundup import distributed as du; du.rank()`.
"""

from __future__ import annotations

from groundup.distributed.launch import (
    launch_torchrun,
    strip_nproc,
    torchrun_command,
)
from groundup.distributed.process_group import (
    AUTO_FSDP_SHARE,
    BACKENDS,
    STRATEGIES,
    DistributedConfig,
    active,
    all_reduce_mean,
    all_reduce_sum,
    backend,
    barrier,
    broadcast_object,
    describe_batch,
    env_rank,
    init_distributed,
    is_main,
    launched,
    main_first,
    name_rank,
    rank,
    record,
    run_job,
    split_sequences,
    teardown,
    world_size,
)
from groundup.distributed.strategies import (
    apply_activation_checkpointing,
    fsdp_unsupported,
    is_sharded,
    resolve_strategy,
    set_gradient_sync,
    transformer_blocks,
    wrap_model,
)

__all__ = [
    "AUTO_FSDP_SHARE",
    "BACKENDS",
    "DistributedConfig",
    "STRATEGIES",
    "active",
    "all_reduce_mean",
    "all_reduce_sum",
    "apply_activation_checkpointing",
    "backend",
    "barrier",
    "broadcast_object",
    "describe_batch",
    "env_rank",
    "fsdp_unsupported",
    "init_distributed",
    "is_main",
    "is_sharded",
    "launch_torchrun",
    "launched",
    "main_first",
    "name_rank",
    "rank",
    "record",
    "resolve_strategy",
    "run_job",
    "set_gradient_sync",
    "split_sequences",
    "strip_nproc",
    "teardown",
    "torchrun_command",
    "transformer_blocks",
    "world_size",
    "wrap_model",
]
