"""GPU check: the gpt2-124M preset, bf16, torch.compile, block 1024, random tokens.

Prints tokens/s and MFU against the bf16 matmul rate measured on the same GPU in the same run
(an H200 measures about 790 TFLOP/s), through groundup's own Trainer, model and fused AdamW.
Runs in well under 5 minutes on one H200-class GPU; needs only torch >= 2.4 and groundup.

    python benchmarks/gpu_bench.py [--steps 30] [--batch 16] [--no-compile]
"""

from __future__ import annotations

import argparse
import time

import torch


class RandomTokens:
    """An endless stream of random (x, y) token batches already on the GPU."""

    def __init__(self, vocab: int, batch: int, block: int, device: torch.device) -> None:
        self.vocab, self.batch, self.block, self.device = vocab, batch, block, device

    def __iter__(self):
        g = torch.Generator(device=self.device).manual_seed(0)
        while True:
            t = torch.randint(
                0, self.vocab, (self.batch, self.block + 1), device=self.device, generator=g
            )
            yield t[:, :-1], t[:, 1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this benchmark needs one")

    import groundup as gu
    from groundup.train.callbacks import Callback
    from groundup.train.hardware import measured_peak_flops

    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    peak = measured_peak_flops("cuda", torch.bfloat16)
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}: measured bf16 matmul "
        f"{peak / 1e12:.0f} TFLOP/s"
    )

    cfg = gu.GPTConfig.from_name("gpt2-124m")
    model = gu.GPT(cfg)
    flops_per_token = model.flops_per_token()
    warmup = 5

    class Clock(Callback):
        """Times the steps after warm-up (compilation happens in the first steps)."""

        def on_step_end(self, trainer, step):
            if step == warmup:
                torch.cuda.synchronize()
                self.start = time.perf_counter()

        def on_train_end(self, trainer):
            torch.cuda.synchronize()
            self.elapsed = time.perf_counter() - self.start

    clock = Clock()
    trainer = gu.Trainer(
        model,
        loss=gu.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer={"name": "adamw", "lr": 6e-4, "weight_decay": 0.1, "betas": (0.9, 0.95)},
        schedule={"name": "cosine", "warmup_steps": 10},
        clip_grad_norm=1.0,
        precision="bf16",
        device=device,
        compile=not args.no_compile,
        callbacks=[clock],
        log_every=10,
        verbose=1,
        flops_per_sample=flops_per_token * cfg.block_size,
        peak_flops=peak,
    )
    data = RandomTokens(cfg.vocab_size, args.batch, cfg.block_size, device)
    started = time.perf_counter()
    trainer.fit(data, max_steps=args.steps + warmup)
    tokens = args.steps * args.batch * cfg.block_size
    tps = tokens / clock.elapsed
    mfu = tps * flops_per_token / peak
    print(
        f"gpt2-124m, batch {args.batch} x {cfg.block_size}, bf16, "
        f"compile={not args.no_compile}: {tps:,.0f} tokens/s, "
        f"{1000 * clock.elapsed / args.steps:.1f} ms/step, MFU {mfu:.1%} of measured bf16 peak "
        f"(total wall time {time.perf_counter() - started:.0f} s, "
        f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)"
    )


if __name__ == "__main__":
    main()
