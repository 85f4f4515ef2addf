"""Bytes a training run holds on each rank: weights, gradients, optimizer state, activations.

    est = estimate_memory(model, optim.optimizer_spec(), activations, micro_batch=16,
                          strategy="none", world_size=1, checkpointing=False)
    est.total  # bytes per rank at the peak of a step

The peak is counted as weights + gradients + optimizer state + activations + the loss's
gradient buffers at the start of backward (`loss_transient_bytes`), all at once. That is exact
with gradient accumulation (gradients live across micro-batches) and an upper bound by at most
the gradients without it (they are allocated while backward frees the activations).

Activations come from `architecture.py` (a formula from the GPT/BERT shape, no forward pass)
or `saved.py` (measured on the real model); both give an `Activations`.

Several ranks: DDP keeps full copies on every rank plus its gradient buckets (one more copy of
the gradients); FSDP2 shards weights, gradients and optimizer state 1/N and gathers whole
blocks for compute (the root's parameters and two blocks at a time: the current one and the
one prefetched), in the compute dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

# FSDP2 all-gathers the next block while the current one computes
FSDP_GATHERED_BLOCKS = 2


@dataclass
class Activations:
    """Activation bytes of one micro-batch: `per_sample` grows with the batch, `fixed` does
    not (autocast's weight copies). `*_ckpt`: with activation checkpointing (None: the model
    has no blocks to checkpoint)."""

    per_sample: float
    fixed: float
    transient_per_sample: float  # the loss's gradient buffers at the start of backward
    per_sample_ckpt: float | None = None  # kept under checkpointing: block inputs, the rest
    recompute_per_sample: float | None = None  # one block's activations, re-made in backward
    fixed_ckpt: float | None = None
    per_token_layer: float | None = None  # architecture: bytes per token in one block
    source: str = "architecture"  # or "measured"

    def bytes(self, batch: int, checkpointing: bool = False) -> int:
        """Activations + loss buffers of a micro-batch of `batch` samples at the peak.

        Without checkpointing everything is alive when backward starts. With it, the loss's
        buffers are freed before backward reaches the blocks, whose recompute re-makes one
        block at a time: the peak is the kept part plus the larger of the two."""
        if checkpointing and self.per_sample_ckpt is not None:
            extra = max(self.recompute_per_sample or 0.0, self.transient_per_sample)
            return int(round((self.fixed_ckpt or 0.0) + batch * (self.per_sample_ckpt + extra)))
        per = self.per_sample + self.transient_per_sample
        return int(round(self.fixed + batch * per))


def loss_transient_bytes(outputs: float, output_bytes: int) -> float:
    """The loss's share of the backward peak per sample: the outputs themselves (the step
    still holds them for the metrics) and two float32 gradients of their size (of the loss's
    log-softmax and of the logits) that exist together when backward starts. For a language
    model this is 10-12 bytes per logit, often the biggest single term."""
    return outputs * (output_bytes + 2 * max(4, output_bytes))


@dataclass
class MemoryEstimate:
    """Bytes per rank; `total` is the predicted peak of a training step."""

    params: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int  # with the configured checkpointing
    activations_full: int  # without activation checkpointing
    activations_ckpt: int | None  # with it (None: the model has no blocks)
    comm_buffers: int  # DDP gradient buckets, FSDP2 gathered blocks and their gradients
    strategy: str
    world_size: int
    checkpointing: bool
    micro_batch: int
    source: str

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.comm_buffers

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


# ---------------------------------------------------------------- parameters
def unique_params(model: nn.Module) -> list[nn.Parameter]:
    """Each parameter once (a tied embedding and head are one tensor)."""
    return list({id(p): p for p in model.parameters()}.values())


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in unique_params(model))


def gradient_bytes(model: nn.Module) -> int:
    """One gradient per trainable parameter, in the parameter's dtype."""
    return sum(p.numel() * p.element_size() for p in unique_params(model) if p.requires_grad)


def optimizer_bytes(model: nn.Module, spec: Mapping[str, Any] | str) -> int:
    """The optimizer's state: Adam/AdamW two moments (three with amsgrad), SGD a momentum
    buffer when momentum > 0, RMSprop a square average (+ momentum, + centred mean), Muon a
    momentum for the hidden matrices and AdamW's two moments for the rest. States have the
    parameter's dtype (torch's `zeros_like`); step counters are negligible."""
    from groundup.train.optim import optimizer_spec

    built = optimizer_spec(spec if not isinstance(spec, Mapping) else dict(spec))
    trainable = [p for p in unique_params(model) if p.requires_grad]

    def size(params: list[torch.Tensor]) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    name = built.name
    if name in ("adam", "adamw"):
        return size(trainable) * (3 if getattr(built, "amsgrad", False) else 2)
    if name == "sgd":
        return size(trainable) if built.momentum > 0 else 0
    if name == "rmsprop":
        copies = 1 + (built.momentum > 0) + bool(built.centered)
        return size(trainable) * copies
    if name == "muon":
        from groundup.train.muon import muon_param_groups

        total = 0
        for group in muon_param_groups(model):
            total += size(group["params"]) * (1 if group["use_muon"] else 2)
        return total
    return size(trainable) * 2  # an optimizer we do not know: assume Adam's two moments


# ---------------------------------------------------------------- strategies
def planned_strategy(
    strategy: str, params: int, device: torch.device, world_size: int, total_memory: int | None
) -> str:
    """The strategy the Trainer will resolve to (see `distributed.resolve_strategy`), known
    before any process group exists: none for one process, FSDP2 under `auto` when 16 bytes a
    parameter exceed the share of one GPU it allows, DDP otherwise."""
    from groundup.distributed import AUTO_FSDP_SHARE

    if world_size <= 1 or strategy == "none":
        return "none"
    if strategy == "auto":
        if device.type != "cuda" or total_memory is None:
            return "ddp"
        return "fsdp" if 16 * params > AUTO_FSDP_SHARE * total_memory else "ddp"
    return strategy


def estimate_memory(
    model: nn.Module,
    optim_spec: Mapping[str, Any] | str,
    activations: Activations,
    micro_batch: int,
    *,
    strategy: str = "none",
    world_size: int = 1,
    checkpointing: bool = False,
    compute_bytes: int = 4,
    param_bytes: int | None = None,
) -> MemoryEstimate:
    """Per-rank bytes of training `model` (see the module doc). `compute_bytes`: the dtype
    FSDP2 gathers parameters in (2 under bf16), ignored otherwise. `param_bytes`: the bytes
    of a parameter in training when the model is not cast yet (8: the Trainer's fp64)."""
    from groundup.distributed import transformer_blocks

    params = unique_params(model)
    n = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    weights, grads = weight_bytes(model), gradient_bytes(model)
    optim = optimizer_bytes(model, optim_spec)
    if param_bytes is not None and params and params[0].element_size() != param_bytes:
        scale = param_bytes / params[0].element_size()
        weights, grads, optim = (int(x * scale) for x in (weights, grads, optim))
    full = activations.bytes(micro_batch, checkpointing=False)
    ckpt = activations.bytes(micro_batch, checkpointing=True)
    has_ckpt = activations.per_sample_ckpt is not None
    comm = 0
    if strategy == "ddp":
        comm = grads  # the reducer's buckets: a second copy of the gradients
    elif strategy == "fsdp" and world_size > 1:
        blocks = transformer_blocks(model)
        block_params = [sum(p.numel() for p in b.parameters()) for b in blocks]
        root = n - sum(block_params)
        biggest = max(block_params, default=0)
        gathered = (root + FSDP_GATHERED_BLOCKS * biggest) * compute_bytes
        comm = gathered + biggest * 4  # + one block's unsharded fp32 gradients
        weights, grads, optim = (-(-x // world_size) for x in (weights, grads, optim))
    return MemoryEstimate(
        params=n,
        trainable=trainable,
        weights=weights,
        gradients=grads,
        optimizer=optim,
        activations=ckpt if checkpointing and has_ckpt else full,
        activations_full=full,
        activations_ckpt=ckpt if has_ckpt else None,
        comm_buffers=comm,
        strategy=strategy,
        world_size=world_size,
        checkpointing=checkpointing and has_ckpt,
        micro_batch=micro_batch,
        source=activations.source,
    )


def dtype_bytes(dtype: torch.dtype | None) -> int:
    """Bytes of one element of `dtype` (float32 for None: no autocast)."""
    return torch.empty((), dtype=dtype or torch.float32).element_size()


def format_bytes(n: float) -> str:
    """1.5 GiB, 320 MiB, 12 KiB: binary units, three significant digits."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"
