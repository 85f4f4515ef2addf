"""groundup pretrain vs a minimal nanoGPT-style PyTorch loop, measured in the same run.

1. nanoGPT's CPU "baby" config on tinyshakespeare, character level (4 layers, 4 heads, 128
   embedding, block 64, batch 12, 2000 iterations): tokens/s of `groundup pretrain` (its
   defaults: bf16 autocast where the CPU supports it, fused AdamW) and of the reference loop
   (fp32, torch.optim.AdamW, random windows stacked from a NumPy array, as nanoGPT does), their
   ratio, and groundup's validation loss after 2000 iterations.
2. A larger config (6 layers, 6 heads, 384 embedding, block 256, batch 16): tokens/s and MFU
   (against the measured bf16 matmul peak) of groundup in bf16 and fp32 and of the reference
   in fp32, and the loss gap between groundup bf16 and fp32 after the same steps.

    python benchmarks/bench_gpt.py [--data data/tinyshakespeare.txt] [--iters 2000]

(tinyshakespeare: char-rnn's input.txt, as in configs/pretrain-shakespeare-char.yaml.)
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_DATA = Path("data") / "tinyshakespeare.txt"  # see configs/pretrain-shakespeare-char.yaml


# ---------------------------------------------------------------- the reference (plain PyTorch)
class RefBlock(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.out = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (
            t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v)
        )  # (B, h, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, d: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(RefBlock(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = (
                    0.02 / math.sqrt(2 * n_layer)
                    if name.endswith(("proj.weight", "out.weight"))
                    else 0.02
                )
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def reference_tokens_per_s(
    data: np.ndarray,
    vocab: int,
    shape: dict,
    batch: int,
    iters: int,
    warmup: int = 5,
    bf16: bool = False,
) -> float:
    """The reference's tokens/s; bf16=True adds what nanoGPT does on GPUs: bf16 autocast."""
    torch.manual_seed(1337)
    block = shape["block_size"]
    model = RefGPT(vocab, block, shape["n_layer"], shape["n_head"], shape["n_embd"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.99),
    )

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(data) - block, (batch,))
        x = torch.stack([torch.from_numpy(data[i : i + block].astype(np.int64)) for i in ix])
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + block].astype(np.int64)) for i in ix]
        )
        return x, y

    for i in range(warmup + iters):
        if i == warmup:
            start = time.perf_counter()
        x, y = get_batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return iters * batch * block / (time.perf_counter() - start)


# ---------------------------------------------------------------- groundup
def groundup_run(
    data_file: Path,
    shape: dict,
    batch: int,
    steps: int,
    precision: str,
    run_dir: Path,
    eval_every: int,
) -> dict:
    from groundup.config import from_dict
    from groundup.jobs.pretrain import PretrainConfig, run_pretrain

    cfg = from_dict(
        PretrainConfig,
        {
            "run_dir": str(run_dir),
            "seed": 1337,
            "data": {"source": str(data_file), "shards_dir": str(run_dir.parent / "shards-char")},
            "tokenizer": {"kind": "char"},
            "model": {
                "flavour": "gpt2",
                "bias": False,
                "dropout": 0.0,
                "activation": "gelu",
                **shape,
            },
            "optim": {
                "name": "adamw",
                "lr": 1e-3,
                "weight_decay": 0.1,
                "betas": [0.9, 0.99],
                "schedule": "cosine",
                "warmup_steps": min(100, steps // 10),
                "min_lr_ratio": 0.1,
            },
            "train": {
                "max_steps": steps,
                "batch_size": batch,
                "eval_every": eval_every,
                "eval_batches": 20,
                "log_every": max(1, min(50, steps // 4)),
                "precision": precision,
                "device": "cpu",
            },
            "sample": {"max_new_tokens": 0},
        },
    )
    results = run_pretrain(None, config=cfg, overwrite=True, verbose=0)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["event"] == "train"]
    results["last_train_loss"] = train_rows[-1]["loss"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--iters", type=int, default=2000, help="baby config iterations")
    parser.add_argument("--ref-iters", type=int, default=300, help="reference timing iterations")
    parser.add_argument("--large-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-baby", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from groundup.data.tokenizers import Tokenizer

    text = args.data.read_text(encoding="utf-8")
    tok = Tokenizer.train([text], kind="char")
    data = np.asarray(tok.encode_array(text), dtype=np.uint16)
    data = data[: int(0.9 * len(data))]
    print(
        f"torch {torch.__version__}, {args.threads} threads, corpus {args.data.name} "
        f"({len(text):,} chars, vocab {tok.vocab_size})"
    )

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baby = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}
        if args.skip_baby:
            _large(args, data, tok, tmp)
            return
        ref_before = reference_tokens_per_s(data, tok.vocab_size, baby, 12, args.ref_iters)
        gu = groundup_run(args.data, baby, 12, args.iters, "auto", tmp / "baby", eval_every=500)
        ref_after = reference_tokens_per_s(data, tok.vocab_size, baby, 12, args.ref_iters)
        ref = max(ref_before, ref_after)
        print("\n== baby config (4x4x128, block 64, batch 12) ==")
        print(
            f"reference loop (fp32)        {ref:9,.0f} tokens/s  ({1000 * 12 * 64 / ref:.1f} ms/iter)"
        )
        print(
            f"groundup pretrain (auto)     {gu['tokens_per_s']:9,.0f} tokens/s  "
            f"ratio {gu['tokens_per_s'] / ref:.2f}x"
        )
        print(
            f"groundup val loss after {gu['steps']} iterations: {gu['final_val_loss']:.4f} "
            f"(whole val split)"
        )

        if args.skip_large:
            return
        _large(args, data, tok, tmp)


def _large(args: argparse.Namespace, data: np.ndarray, tok: Any, tmp: Path) -> None:
    """The 6x384 config: tokens/s and MFU of groundup fp32/bf16 and the reference fp32/bf16."""
    from groundup.train.hardware import measured_peak_flops

    large = {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256}
    steps = args.large_steps
    ref_l = reference_tokens_per_s(data, tok.vocab_size, large, 16, max(5, steps // 3), warmup=2)
    ref_bf16 = reference_tokens_per_s(
        data, tok.vocab_size, large, 16, max(5, steps // 3), warmup=2, bf16=True
    )
    bf16 = groundup_run(args.data, large, 16, steps, "bf16", tmp / "large-bf16", eval_every=steps)
    fp32 = groundup_run(args.data, large, 16, steps, "fp32", tmp / "large-fp32", eval_every=steps)
    peak_bf16 = measured_peak_flops("cpu", torch.bfloat16)
    peak_fp32 = measured_peak_flops("cpu", torch.float32)
    print("\n== larger config (6x6x384, block 256, batch 16) ==")
    print(
        f"measured matmul peak: bf16 {peak_bf16 / 1e9:.0f} GFLOP/s, fp32 {peak_fp32 / 1e9:.0f} GFLOP/s"
    )
    print(f"reference loop (fp32)        {ref_l:9,.0f} tokens/s")
    print(f"reference loop (bf16 autocast) {ref_bf16:7,.0f} tokens/s")
    print(
        f"groundup fp32                {fp32['tokens_per_s']:9,.0f} tokens/s  ratio "
        f"{fp32['tokens_per_s'] / ref_l:.2f}x  MFU {fp32.get('mfu', float('nan')):.1%} of fp32 peak"
    )
    print(
        f"groundup bf16                {bf16['tokens_per_s']:9,.0f} tokens/s  ratio "
        f"{bf16['tokens_per_s'] / ref_l:.2f}x ({bf16['tokens_per_s'] / ref_bf16:.2f}x the bf16 "
        f"reference)  MFU {bf16.get('mfu', float('nan')):.1%} of bf16 peak"
    )
    print(
        f"loss after {steps} steps: bf16 {bf16['final_val_loss']:.4f}, fp32 "
        f"{fp32['final_val_loss']:.4f}, gap {abs(bf16['final_val_loss'] - fp32['final_val_loss']):.4f}"
    )


if __name__ == "__main__":
    main()
