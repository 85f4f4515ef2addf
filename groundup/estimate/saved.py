"""Activation memory of any `nn.Module`, measured: the bytes autograd keeps for backward.

A forward pass with gradients on runs under `torch.autograd.graph.saved_tensors_hooks`; every
tensor an op saves for its backward passes through the pack hook, and the unique storages
among them (a view and its base count once) are the activation memory of that forward.
Parameters are left out (they are the weights); autocast's low-precision weight copies stay in
(they are real memory until backward). Two batch sizes give the part that grows with the batch
and the part that does not (those weight copies), so the figure scales to the configured batch
exactly.

This is the reference the architecture formula (`architecture.py`) is checked against: it sees
what the installed torch really saves (which SDPA kernel, dropout masks, norms in fp32), at the
cost of running the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from groundup.estimate.memory import Activations, loss_transient_bytes

# run(batch_size) -> the model's outputs (logits), after computing the loss from them
ForwardLoss = Callable[[int], torch.Tensor]


@dataclass
class SavedBytes:
    """What one forward saved: in all, inside each transformer block, and the block inputs."""

    total: int
    blocks: list[int]  # saved inside each block (recomputed under activation checkpointing)
    block_inputs: list[int]  # what checkpointing keeps of each block: its input
    outputs: int  # numel of the model's outputs (the logits the loss reads)
    output_bytes: int  # bytes of one output element


def measure_saved(run: ForwardLoss, model: nn.Module, batch_size: int) -> SavedBytes:
    """Run `run(batch_size)` once with gradients on and count what autograd saved.

    Side effects are undone: the RNG (dropout) is forked, buffers (BatchNorm statistics) are
    restored, and the graph is dropped before returning, so a run that follows is unchanged.
    """
    from groundup.distributed import transformer_blocks

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    blocks = transformer_blocks(model)
    seen: dict[int, int] = {}
    per_block = [0] * len(blocks)
    inputs = [0] * len(blocks)
    current: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in params and ptr not in seen:
            seen[ptr] = storage.nbytes()
            if current:
                per_block[current[-1]] += storage.nbytes()
        return t

    hooks = []
    for i, block in enumerate(blocks):
        hooks.append(block.register_forward_pre_hook(_enter(i, current, inputs)))
        hooks.append(block.register_forward_hook(_leave(current)))
    try:
        with _no_side_effects(model), torch.enable_grad():
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = run(batch_size)
            outputs, size = out.numel(), out.element_size()
            del out
    finally:
        for h in hooks:
            h.remove()
    return SavedBytes(sum(seen.values()), per_block, inputs, outputs, size)


def measure_activations(
    run: ForwardLoss, model: nn.Module, sizes: tuple[int, int] = (2, 3)
) -> Activations:
    """Activations per sample and fixed, from two measured batch sizes (see the module doc)."""
    small, large = sizes
    a, b = measure_saved(run, model, small), measure_saved(run, model, large)
    span = large - small

    def per_sample(x: int, y: int) -> float:
        return max(0.0, (y - x) / span)

    def fixed(x: int, slope: float) -> float:
        return max(0.0, x - slope * small)

    total = per_sample(a.total, b.total)
    outputs = per_sample(a.outputs, b.outputs)
    blocks_a, blocks_b = sum(a.blocks), sum(b.blocks)
    block_slope = per_sample(blocks_a, blocks_b)
    biggest = max(
        (per_sample(x, y) for x, y in zip(a.blocks, b.blocks)), default=0.0
    )  # the block recomputed during backward
    kept = per_sample(sum(a.block_inputs), sum(b.block_inputs))
    ckpt = total - block_slope + kept if a.blocks else None
    fixed_total = fixed(a.total, total)
    fixed_ckpt = None
    if a.blocks:  # weight copies inside checkpointed blocks are re-made in the recompute
        fixed_blocks = fixed(blocks_a, block_slope)
        fixed_ckpt = fixed_total - fixed_blocks + fixed_blocks / max(1, len(a.blocks))
    return Activations(
        per_sample=total,
        fixed=fixed_total,
        transient_per_sample=loss_transient_bytes(outputs, a.output_bytes),
        per_sample_ckpt=ckpt,
        recompute_per_sample=biggest if a.blocks else None,
        fixed_ckpt=fixed_ckpt,
        source="measured",
    )


def _enter(index: int, current: list[int], inputs: list[int]) -> Callable:
    def hook(module: nn.Module, args: tuple) -> None:
        current.append(index)
        if args and isinstance(args[0], torch.Tensor):
            inputs[index] += args[0].untyped_storage().nbytes()

    return hook


def _leave(current: list[int]) -> Callable:
    def hook(module: nn.Module, args: tuple, output: object) -> None:
        current.pop()

    return hook


@contextlib.contextmanager
def _no_side_effects(model: nn.Module) -> Iterator[None]:
    """Train mode (dropout on, as in a step), a forked RNG, and afterwards the buffers and
    the mode as they were: measuring must not change the run after it."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            model.train(was_training)
            with torch.no_grad():
                for name, b in model.named_buffers():
                    if name in buffers:
                        b.copy_(buffers[name])


def measure_flops(run: ForwardLoss, model: nn.Module, batch_size: int = 2) -> float:
    """Forward + backward FLOPs per sample: the matmuls and attention of one forward,
    counted by torch's FlopCounterMode, times 3 (backward costs about twice the forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with _no_side_effects(model), torch.enable_grad(), counter:
        run(batch_size)
    return 3.0 * counter.get_total_flops() / batch_size
