"""GPU benchmark: tokens/s and MFU of GPT-2 124M and of the modern recipe at 124M.

bf16 autocast, torch.compile, block 1024, random tokens, through groundup's own Trainer, model
and fused AdamW. MFU is shown twice: against the bf16 matmul peak measured in the same run
(the best of several sizes, `groundup.train.hardware`) and against the GPU's dense datasheet
peak (`groundup.train.peaks`), the denominator published MFU figures use. One run takes well
under 5 minutes on one H200; it needs only torch >= 2.4 and groundup, nothing is installed.

    python benchmarks/gpu_bench.py [--steps 30] [--batch 16] [--no-compile]
    python benchmarks/gpu_bench.py --dry-run   # tiny configs on the CPU: the script still works
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

WARMUP = 5  # untimed steps: compilation and the allocator's first growth happen here
# the modern recipe at the GPT-2 124M shape (n_kv_head, the MLP and the rest are the recipe's)
SHAPE_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
SHAPE_TINY = dict(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=256)


class RandomTokens:
    """An endless stream of random (x, y) token batches already on the device."""

    def __init__(self, vocab: int, batch: int, block: int, device: torch.device) -> None:
        self.vocab, self.batch, self.block, self.device = vocab, batch, block, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator(device=self.device).manual_seed(0)
        while True:
            t = torch.randint(
                0, self.vocab, (self.batch, self.block + 1), device=self.device, generator=g
            )
            yield t[:, :-1], t[:, 1:]


@dataclass
class Row:
    name: str
    params: int
    tokens_per_s: float
    ms_per_step: float
    mfu: float
    mfu_datasheet: float | None
    memory_gib: float | None


def configs(dry_run: bool) -> dict[str, Any]:
    """name -> GPTConfig, or a string saying why that model is skipped."""
    import groundup as gu

    shape = SHAPE_TINY if dry_run else SHAPE_124M
    out: dict[str, Any] = {}
    if dry_run:
        out["gpt2-tiny"] = gu.GPTConfig(**shape)
    else:
        out["gpt2-124m"] = gu.GPTConfig.from_name("gpt2-124m")
    name = "modern-tiny" if dry_run else "modern-124m"
    if "recipe" not in {f.name for f in dataclasses.fields(gu.GPTConfig)}:
        out[name] = "skipped: this groundup's GPTConfig has no `recipe` field"
        return out
    try:
        out[name] = gu.GPTConfig(recipe="modern", **shape)
    except gu.errors.GroundupError as e:
        out[name] = f"skipped: {e}"
    return out


def bench(
    name: str,
    cfg: Any,
    args: argparse.Namespace,
    device: torch.device,
    peak: float,
    datasheet: float | None,
) -> Row:
    """Train `cfg` for WARMUP + args.steps steps; time the last args.steps."""
    import groundup as gu
    from groundup.train.callbacks import Callback
    from groundup.train.hardware import synchronize

    model = gu.GPT(cfg)
    flops_per_token = model.flops_per_token()
    params = sum(p.numel() for p in model.parameters())

    class Clock(Callback):
        """Times the steps after warm-up (compilation happens in the first steps)."""

        def on_step_end(self, trainer: Any, step: int) -> None:
            if step == WARMUP:
                synchronize(device)
                self.start = time.perf_counter()

        def on_train_end(self, trainer: Any) -> None:
            synchronize(device)
            self.elapsed = time.perf_counter() - self.start

    clock = Clock()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = gu.Trainer(
        model,
        loss=gu.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer={"name": "adamw", "lr": 6e-4, "weight_decay": 0.1, "betas": (0.9, 0.95)},
        schedule={"name": "cosine", "warmup_steps": min(10, (args.steps + WARMUP) // 2)},
        clip_grad_norm=1.0,
        precision="bf16",
        device=device,
        compile=args.compile,
        callbacks=[clock],
        log_every=10,
        verbose=1,
        flops_per_sample=flops_per_token * cfg.block_size,
        peak_flops=peak,
        datasheet_flops=datasheet,
    )
    data = RandomTokens(cfg.vocab_size, args.batch, cfg.block_size, device)
    trainer.fit(data, max_steps=args.steps + WARMUP)
    tps = args.steps * args.batch * cfg.block_size / clock.elapsed
    achieved = tps * flops_per_token
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del trainer, model
    if args.compile:
        torch._dynamo.reset()  # the next model compiles from a clean cache
    return Row(
        name,
        params,
        tps,
        1000 * clock.elapsed / args.steps,
        achieved / peak,
        achieved / datasheet if datasheet else None,
        memory,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--dry-run", action="store_true", help="tiny configs on the CPU")
    args = parser.parse_args()
    if args.dry_run:
        device = torch.device("cpu")
        args.steps, args.batch, args.compile = min(args.steps, 3), min(args.batch, 2), False
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        raise SystemExit("no CUDA GPU here: this benchmark needs one (--dry-run checks it on CPU)")

    from groundup.train.hardware import last_probe, measured_peak_flops
    from groundup.train.peaks import (
        datasheet_label,
        device_datasheet_peak,
        flops_text,
        measured_label,
    )

    started = time.perf_counter()
    peak = measured_peak_flops(device.type, torch.bfloat16)
    probe = last_probe(device.type, torch.bfloat16)
    name, datasheet = device_datasheet_peak(device, torch.bfloat16)
    sizes = ", ".join(f"N={r.size} {flops_text(r.flops)}" for r in probe.rates) if probe else ""
    print(f"{name}, torch {torch.__version__}; bf16 F.linear: {sizes}")
    print(
        f"measured peak {flops_text(peak)} (N={probe.size if probe else '?'}); datasheet "
        + (f"{flops_text(datasheet)} dense bf16" if datasheet else "unknown for this device")
    )

    rows: list[Row] = []
    for model_name, cfg in configs(args.dry_run).items():
        if isinstance(cfg, str):
            print(f"{model_name}: {cfg}")
            continue
        rows.append(bench(model_name, cfg, args, device, peak, datasheet))
    print_table(rows, args, measured_label(peak), datasheet_label(datasheet) if datasheet else "")
    print(f"total wall time {time.perf_counter() - started:.0f} s")


def print_table(rows: list[Row], args: argparse.Namespace, measured: str, datasheet: str) -> None:
    print(f"\nbatch {args.batch}, bf16 autocast, compile={args.compile}, {args.steps} timed steps")
    head = f"{'model':<14}{'params':>13}{'tokens/s':>12}{'ms/step':>9}  {measured:<34}"
    print(head + (f"  {datasheet:<30}" if datasheet else "") + "  memory")
    for r in rows:
        line = f"{r.name:<14}{r.params:>13,}{r.tokens_per_s:>12,.0f}{r.ms_per_step:>9.1f}"
        line += f"  {r.mfu:<34.1%}"
        if datasheet:
            line += f"  {r.mfu_datasheet:<30.1%}" if r.mfu_datasheet else f"  {'':<30}"
        line += f"  {r.memory_gib:.1f} GiB" if r.memory_gib is not None else "  -"
        print(line)


if __name__ == "__main__":
    main()
