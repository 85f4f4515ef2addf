"""One optimizer step of a job, described before it runs, and what it will cost.

A job (or `groundup estimate`) fills in a `StepPlan`: the model (real, or built on the meta
device when only its shape matters), the batch split, device, precision, optimizer and
budget. `plan_memory` gives the per-rank `MemoryEstimate`, from the architecture formula for
GPT/BERT models and from a measured forward for any other module; `summarize` turns plan,
estimate and (optionally) timed steps into the plain dict that `table.py` prints and
`groundup estimate` returns; `preflight` is what a job calls before `Run.begin`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from groundup.estimate.architecture import Setup, shape_of, transformer_activations
from groundup.estimate.check import check_fits, device_memory, memory_fixes
from groundup.estimate.memory import (
    Activations,
    MemoryEstimate,
    dtype_bytes,
    estimate_memory,
    planned_strategy,
)
from groundup.estimate.speed import StepTiming, predict_seconds


@dataclass
class StepPlan:
    """What one optimizer step of a run is (see the module doc)."""

    model: nn.Module
    description: str  # "gpt2, 4 layers x 256", "Sequential, 3 layers"
    micro_batch: int  # samples (sequences) per micro-batch on each rank
    device: torch.device
    optimizer: Mapping[str, Any] | str  # the spec build_optimizer takes
    grad_accum: int = 1
    world_size: int = 1
    strategy: str = "none"  # as configured (auto, ddp, fsdp); resolved in `resolved_strategy`
    seq_len: int | None = None  # tokens per sample; None for non-token data
    autocast_dtype: torch.dtype | None = None
    weight_dtype: torch.dtype = torch.float32
    checkpointing: bool = False
    flops_per_sample: float | None = None  # forward + backward
    total_steps: int | None = None  # the run's optimizer steps
    eval_batches: int = 0  # validation batches over the whole run
    forward_loss: Callable[[int], torch.Tensor] | None = None  # measured path: run(batch)

    @property
    def samples_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    @property
    def precision(self) -> str:
        if self.weight_dtype == torch.float64:
            return "fp64"
        names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
        return f"{names[self.autocast_dtype]} autocast" if self.autocast_dtype else "fp32"

    def resolved_strategy(self) -> str:
        total = None
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
        params = sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())
        return planned_strategy(self.strategy, params, self.device, self.world_size, total)


def architecture_activations(plan: StepPlan, strategy: str) -> Activations | None:
    """The formula's activations for a GPT/BERT plan with token data; None otherwise."""
    shape = shape_of(plan.model)
    if shape is None or plan.seq_len is None:
        return None
    sharded_bf16 = strategy == "fsdp" and plan.autocast_dtype is not None
    setup = Setup(
        plan.device.type,
        plan.weight_dtype,
        plan.autocast_dtype,
        residual_bytes=dtype_bytes(plan.autocast_dtype) if sharded_bf16 else None,
    )
    return transformer_activations(shape, plan.seq_len, setup)


def plan_memory(plan: StepPlan, activations: Activations | None = None) -> MemoryEstimate:
    """Per-rank memory of `plan`: `activations` when given, else the architecture formula
    (GPT/BERT), else a measured forward (`plan.forward_loss`)."""
    from groundup.estimate.saved import measure_activations

    strategy = plan.resolved_strategy()
    if activations is None:
        activations = architecture_activations(plan, strategy)
    if activations is None:
        if plan.forward_loss is None:
            raise ValueError("a plan for a module without a known shape needs forward_loss")
        activations = measure_activations(plan.forward_loss, plan.model)
    return estimate_memory(
        plan.model,
        plan.optimizer,
        activations,
        plan.micro_batch,
        strategy=strategy,
        world_size=plan.world_size,
        checkpointing=plan.checkpointing,
        compute_bytes=dtype_bytes(plan.autocast_dtype or plan.weight_dtype),
        param_bytes=dtype_bytes(plan.weight_dtype),
    )


def summarize(
    plan: StepPlan,
    est: MemoryEstimate,
    timing: StepTiming | None = None,
    eval_seconds: float = 0.0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the table shows, as plain JSON-able values."""
    available, source = device_memory(plan.device)
    tokens = plan.samples_per_step * plan.seq_len if plan.seq_len else None
    per_token = None
    if plan.flops_per_sample:
        per_token = plan.flops_per_sample / plan.seq_len if plan.seq_len else None
    out: dict[str, Any] = {
        "model": plan.description,
        "params": est.params,
        "trainable_params": est.trainable,
        "flops_per_token": per_token,
        "flops_per_sample": plan.flops_per_sample,
        "tokens_per_step": tokens,
        "samples_per_step": plan.samples_per_step,
        "micro_batch": plan.micro_batch,
        "grad_accum": plan.grad_accum,
        "world_size": plan.world_size,
        "strategy": est.strategy,
        "device": str(plan.device),
        "precision": plan.precision,
        "checkpointing": est.checkpointing,
        "memory": est.to_dict(),
        "device_memory": available,
        "device_memory_source": source,
        "fits": None if available is None else est.total <= available,
        "total_steps": plan.total_steps,
    }
    if timing is not None:
        out["timing"] = timing.to_dict()
        if timing.peak_bytes:  # measured / predicted, on the same footing
            predicted = est.total if timing.peak_includes_weights else est.total - est.weights
            out["measured_peak_ratio"] = timing.peak_bytes / max(1, predicted)
        out["seconds_per_step"] = timing.seconds_per_step
        out["eval_seconds_per_batch"] = eval_seconds
        if plan.total_steps is not None:
            out["predicted_seconds"] = predict_seconds(
                timing, plan.total_steps, plan.eval_batches, eval_seconds
            )
    out.update(extra or {})
    return out


def preflight(
    plan: StepPlan,
    *,
    check: bool = True,
    verbose: int = 1,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a job runs before `Run.begin`: the estimate, the one-time table (when verbose)
    and the refusal when the step cannot fit. Returns the summary."""
    from groundup.estimate.table import print_summary

    est = plan_memory(plan)
    summary = summarize(plan, est, extra=extra)
    if verbose:
        print_summary(summary)
    if check:
        check_fits(est, plan.device, fixes=fixes_for(plan, est))
    return summary


def fixes_for(plan: StepPlan, est: MemoryEstimate) -> Sequence[str]:
    """The config changes worth naming when `plan` does not fit."""
    from groundup.distributed import transformer_blocks

    return memory_fixes(
        batch_size=plan.micro_batch,
        precision_is_fp32=plan.autocast_dtype is None and plan.weight_dtype == torch.float32,
        has_blocks=bool(transformer_blocks(plan.model)),
        checkpointing=est.checkpointing,
        distributed=plan.seq_len is not None and shape_of(plan.model) is not None,
    )
