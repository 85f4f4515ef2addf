"""The Trainer's work across ranks (torchrun; see groundup.distributed), strategy "ddp"
or "fsdp":

- The step's item count is all-reduced first, so every token weighs 1 / (global count) as in one
  process; DDP and FSDP average gradients over the ranks, so each rank's loss is multiplied by
  the world size to undo that. Gradients are reduced only on the step's last micro-batch.
- The step loss and an "a rank was signalled" flag travel in one all-reduce after backward, so
  the non-finite checks and SIGINT/SIGTERM stops agree on every rank (every step on the CPU; on
  GPUs at log steps, like the NaN check). Clipping sees the global norm.
- Rank 0 alone writes metrics.jsonl and shows progress; evaluation splits the batches over the
  ranks and all-reduces the sums. Training metrics (accuracy, F1, ...) accumulate on each
  rank's share of the batches; at epoch end `sync_metrics` gathers their states in one
  collective and merges them, so the logged values are over all the data.
- Checkpoints: DDP's state is replicated, so rank 0 writes the usual safetensors checkpoint;
  FSDP2 writes a sharded torch.distributed.checkpoint.
- With one process (no torchrun) none of this runs: no collective, no extra work per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from groundup import distributed as dist_utils
from groundup.errors import ConfigError
from groundup.train.batches import Batch
from groundup.train.device import resolve_precision
from groundup.train.metrics import Metric


# ---------------------------------------------------------------- the model
def prepare_model(
    model: nn.Module,
    strategy: str,
    device: torch.device,
    precision: str,
    *,
    activation_checkpointing: bool,
    custom_forward: bool,
    optimizer: Any,
) -> tuple[str, nn.Module, nn.Module | None]:
    """Activation checkpointing (if asked), then the resolved strategy's wrapping of `model`
    (already on `device`). Returns (strategy, model, DDP wrapper or None)."""
    if activation_checkpointing:
        dist_utils.apply_activation_checkpointing(model)
    strategy = dist_utils.resolve_strategy(strategy, model, device)
    if strategy == "none":
        return strategy, model, None
    if custom_forward:
        raise ConfigError(
            f"strategy {strategy} trains through the model's own forward; "
            "drop the custom forward= function"
        )
    if strategy == "fsdp" and isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            "strategy fsdp shards the parameters after the Trainer gets the model; pass "
            "the optimizer by name (optimizer='adamw'), not as a built optimizer"
        )
    param_dtype = resolve_precision(precision, device)
    model, ddp = dist_utils.wrap_model(model, strategy, device, param_dtype)
    return strategy, model, ddp


# ---------------------------------------------------------------- the step
def global_item_count(counts: Sequence[Any], device: torch.device) -> torch.Tensor:
    """The step's item count summed over every rank (one all-reduce)."""
    total = torch.as_tensor(sum(counts), device=device).clone()
    dist_utils.all_reduce_sum(total)
    return total


def micro_batch_sync(
    model: nn.Module, ddp: nn.Module | None, index: int, last: int
) -> contextlib.AbstractContextManager:
    """The context for micro-batch `index` of `last + 1`: gradients are reduced on the last one
    only (DDP's no_sync, FSDP2's requires_gradient_sync). One micro-batch: nothing to skip."""
    if not last:
        return contextlib.nullcontext()
    return dist_utils.set_gradient_sync(model, ddp, index == last)


def agree_loss_and_signal(
    step_loss: torch.Tensor, signal: int | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(global step loss, signalled flag > 0 when any rank got a signal), in one all-reduce."""
    signalled = torch.full((), float(signal or 0), device=device)
    both = dist_utils.all_reduce_sum(torch.stack([step_loss.double(), signalled.double()]))
    return both[0], both[1]


# ---------------------------------------------------------------- metrics
def sync_metrics(metrics: Sequence[Metric], device: torch.device) -> list[Metric]:
    """Make each metric the metric over every rank's data: one all_gather of all their states
    (flattened to one float64 vector), then `Metric.merge` on every rank. Returns the metrics
    that cannot be combined (`state()` is None): they keep this rank's share. One process:
    nothing happens.

    Every rank must call it. Trap: the states must have the same sizes on every rank (a
    collective of mismatched sizes fails or hangs); they do in training, where every rank runs
    the same steps through the same model, so the class and output axes agree.
    """
    world = dist_utils.world_size()
    if world == 1:
        return []
    skipped: list[Metric] = []
    owned: list[tuple[Metric, list[torch.Tensor]]] = []
    for metric in metrics:
        state = metric.state()
        if state is None:
            skipped.append(metric)
        else:
            owned.append((metric, list(state)))
    pieces = [t.to(device=device, dtype=torch.float64).reshape(-1) for _, s in owned for t in s]
    if not pieces:  # nothing to combine (the same on every rank): no collective
        return skipped
    flat = torch.cat(pieces)  # (L,)
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)  # gloo and nccl both have the list form (torch >= 2.4)
    offset = 0
    for metric, state in owned:
        per_rank: list[list[torch.Tensor]] = [[] for _ in range(world)]
        for t in state:
            n = t.numel()
            for r in range(world):
                per_rank[r].append(gathered[r][offset : offset + n].view(t.shape))
            offset += n
        metric.merge(per_rank)
    return skipped


# ---------------------------------------------------------------- evaluation
def round_robin(
    data: Iterable[Batch], max_batches: int | None, rank: int, world: int
) -> Iterator[tuple[Batch, bool]]:
    """This rank's share of `data`: batches rank, rank + world, ... as `(batch, True)`.

    In a last, short round a rank without a batch of its own gets the round's first one as
    `(batch, False)`: a throwaway forward, since FSDP needs every rank in every forward.
    """
    chunk: list[Batch] = []
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            break
        chunk.append(batch)
        if len(chunk) == world:
            yield chunk[rank], True
            chunk = []
    if chunk:
        mine = rank < len(chunk)
        yield (chunk[rank] if mine else chunk[0]), mine
