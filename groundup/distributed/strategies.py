"""DDP or FSDP2 for a model: choosing the strategy, wrapping the model, activation
checkpointing, gradient sync across micro-batches."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from groundup.distributed.process_group import (
    AUTO_FSDP_SHARE,
    STRATEGIES,
    active,
    world_size,
)
from groundup.errors import ConfigError, DependencyError


# ---------------------------------------------------------------- strategies
def _fully_shard() -> tuple[Callable, type]:
    """`fully_shard` and `MixedPrecisionPolicy`: public in torch >= 2.6, composable before."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
        except ImportError:
            raise DependencyError(
                f"strategy fsdp needs FSDP2 (torch >= 2.4), this is torch {torch.__version__}; "
                "upgrade torch or use distributed.strategy: ddp"
            ) from None
    return fully_shard, MixedPrecisionPolicy


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def fsdp_unsupported(device: torch.device) -> str | None:
    """Why FSDP2 cannot run here, or None. FSDP2 on CPUs (gloo) works from torch 2.6 (checked
    on 2.13); before that it moved parameters to a GPU or failed in its CUDA streams."""
    if device.type == "cpu" and _torch_version() < (2, 6):
        return (
            f"strategy fsdp on CPUs needs torch >= 2.6 (this is {torch.__version__}); "
            "use distributed.strategy: ddp on CPUs, or run on GPUs"
        )
    if device.type not in ("cpu", "cuda"):
        return f"strategy fsdp is not supported on {device.type}; use distributed.strategy: ddp"
    return None


def resolve_strategy(strategy: str, model: nn.Module, device: torch.device) -> str:
    """'none' (one process), 'ddp' or 'fsdp'. `auto`: DDP while the model's training state fits
    comfortably in one device's memory, FSDP2 beyond; explicit choices are checked."""
    if strategy not in ("none", *STRATEGIES):
        raise ConfigError(
            f"unknown distributed.strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
        )
    if strategy == "none" or not active():
        return "none"  # one plain process: nothing to replicate or shard
    if strategy == "auto":
        if world_size() == 1:
            return "none"
        if device.type != "cuda":
            return "ddp"
        state_bytes = 16 * sum(p.numel() for p in model.parameters())
        memory = torch.cuda.get_device_properties(device).total_memory
        return "fsdp" if state_bytes > AUTO_FSDP_SHARE * memory else "ddp"
    if strategy == "fsdp":
        reason = fsdp_unsupported(device)
        if reason:
            raise ConfigError(reason)
        return "fsdp"
    return "ddp" if world_size() > 1 else "none"  # DDP over one rank only adds hooks


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: the children of every ModuleList named `blocks`."""
    out: list[nn.Module] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "blocks":
            out.extend(module)
    return out


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each transformer block's activations in backward instead of storing them.

    Done from outside the model: each block's `forward` is replaced on the instance by a
    checkpointed call of the original, so parameter names and checkpoints do not change. Only
    while gradients are on (evaluation and generation run the plain forward). Returns the
    number of blocks wrapped.
    """
    from torch.utils.checkpoint import checkpoint

    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError(
            "activation_checkpointing needs a model with transformer blocks (a ModuleList "
            "named 'blocks', as in GPT and BERT); turn it off for this model"
        )
    for block in blocks:
        if getattr(block.forward, "_groundup_checkpointed", False):
            continue
        original = block.forward

        @functools.wraps(original)
        def forward(*args: Any, _original: Callable = original, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        forward._groundup_checkpointed = True  # type: ignore[attr-defined]
        block.forward = forward  # instance attribute: wins over the class's forward
    return len(blocks)


def wrap_model(
    model: nn.Module,
    strategy: str,
    device: torch.device,
    param_dtype: torch.dtype | None = None,
) -> tuple[nn.Module, nn.Module | None]:
    """Shard or replicate `model` (already on `device`). Returns (model, ddp_wrapper).

    - ddp: the model stays as it is; the returned DistributedDataParallel wrapper is what the
      training forward calls (it all-reduces gradients in backward, averaged over ranks).
    - fsdp: `fully_shard` on every transformer block, then on the root, in place: parameters
      become DTensors sharded over the ranks. With `param_dtype` (bf16), parameters are
      all-gathered and computed in it while gradients are reduced in fp32.
    """
    if strategy == "none":
        return model, None
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # broadcast_buffers=False: no collective inside forward, so evaluation may run a
        # different number of batches per rank. groundup's buffers are constants (RoPE tables).
        with warnings.catch_warnings():
            # newer torch renames it forward_sync_buffers (absent in 2.4); same meaning here
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*deprecated")
            ddp = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
        return model, ddp
    if strategy == "fsdp":
        fully_shard, MixedPrecisionPolicy = _fully_shard()
        if param_dtype is not None:
            policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        else:
            policy = MixedPrecisionPolicy()
        from torch.distributed.device_mesh import init_device_mesh

        # Trap: without a mesh, fully_shard builds one on the accelerator whenever CUDA is
        # visible, even for a gloo run on CPUs ("invalid device ordinal" on rank 1).
        mesh = init_device_mesh(device.type, (world_size(),))
        for block in transformer_blocks(model):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)  # the rest: embeddings, final norm, head
        return model, None
    raise ConfigError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")


def is_sharded(model: nn.Module) -> bool:
    """True when the model's parameters are DTensors (FSDP2)."""
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def set_gradient_sync(model: nn.Module, ddp: nn.Module | None, enabled: bool) -> Any:
    """A context for one micro-batch: gradient reduction only on the step's last one."""
    if ddp is not None:
        return contextlib.nullcontext() if enabled else ddp.no_sync()
    setter = getattr(model, "set_requires_gradient_sync", None)  # FSDP2
    if setter is not None:
        setter(enabled)
    return contextlib.nullcontext()
