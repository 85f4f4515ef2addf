"""Time to a target loss: nanoGPT, groundup's gpt2 flavour and the modern recipe, same run.

The field now measures wall time to a validation loss, not tokens/s. The target is the loss
nanoGPT itself reaches with its README's CPU "baby" command on tinyshakespeare (character
level; 4 layers, 4 heads, 128 embedding, block 64, batch 12, 2000 iterations), measured here
over the whole validation split (non-overlapping windows, as groundup's final evaluation)
from the checkpoint nanoGPT saves at the end.

Rows:
- nanoGPT: its own train.py from a checkout you fetched (`--nanogpt DIR`; never committed),
  fp32 as it runs on CPUs. Time = the sum of its per-iteration times (its evaluations left out).
- gpt2: `groundup pretrain` with nanoGPT's hyperparameters (AdamW 1e-3, cosine to 1e-4).
- modern: `model.recipe: modern` (RoPE, RMSNorm, QK-norm, ReLU^2, untied head,
  zero-initialized output projections) trained with Muon + AdamW.
- ablations (`--ablations`): each piece of the recipe switched off alone, and logit
  soft-capping (tried, left out) switched on.
For groundup rows the training time at each evaluation is `time_s` minus the time spent in
the evaluations before it; the time to target is the first whole-split evaluation at or below
the target, interpolated linearly from the evaluation before it.

    python benchmarks/bench_time_to_loss.py --data data/tinyshakespeare.txt \
        --nanogpt /path/to/nanoGPT [--ablations] [--rows gpt2,modern]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_DATA = Path("data") / "tinyshakespeare.txt"
BABY = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}
BATCH, NANOGPT_ITERS = 12, 2000

# The modern recipe's pieces, each switched off alone in an ablation row (model overrides, or
# an optimizer in place of Muon), and a piece tried and left out, switched on.
ABLATIONS: dict[str, dict[str, Any]] = {
    "no qk_norm": {"model": {"qk_norm": False}},
    "no relu2 (SwiGLU)": {"model": {"activation": "silu"}},
    "+ logit_softcap 15": {"model": {"logit_softcap": 15.0}},  # tried, left out of the recipe
    "no zero_init_proj": {"model": {"zero_init_proj": False}},
    "tied head": {"model": {"tie_embeddings": True}},
    "AdamW, not Muon": {"optim": "adamw"},
}


# ---------------------------------------------------------------- nanoGPT, from its checkout
def run_nanogpt(checkout: Path, text_file: Path, work: Path, iters: int, threads: int) -> dict:
    """nanoGPT's README CPU command in a copy of the checkout; its training time and whole-split
    validation loss."""
    if not (checkout / "train.py").is_file() or not (checkout / "model.py").is_file():
        sys.exit(f"--nanogpt {checkout}: no train.py/model.py there; pass a nanoGPT checkout")
    repo = work / "nanogpt"
    shutil.copytree(checkout, repo, ignore=shutil.ignore_patterns(".git", "out-*"))
    data_dir = repo / "data" / "shakespeare_char"
    shutil.copy(text_file, data_dir / "input.txt")  # prepare.py downloads only when absent
    subprocess.run([sys.executable, "prepare.py"], cwd=data_dir, check=True, capture_output=True)
    cmd = [
        sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
        "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
        f"--batch_size={BATCH}", "--n_layer=4", "--n_head=4", "--n_embd=128",
        f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--dropout=0.0",
        f"--eval_interval={iters}", "--dtype=float32",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True, env=env)
    times = {
        int(m[1]): float(m[2]) / 1000
        for m in re.finditer(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", out.stdout)
    }
    # Iterations 0 and `iters` include an evaluation (and the first, warm-up): take the median
    # of the others for them, so the figure is training time only.
    inner = [t for i, t in times.items() if 0 < i < iters]
    train_s = sum(inner) + (len(times) - len(inner)) * float(np.median(inner))
    return {"train_s": train_s, "val_loss": _nanogpt_val_loss(repo, data_dir), "steps": iters}


@torch.no_grad()
def _nanogpt_val_loss(repo: Path, data_dir: Path) -> float:
    """Mean cross-entropy over non-overlapping block windows of val.bin (the whole split)."""
    sys.path.insert(0, str(repo))
    try:
        from model import GPT, GPTConfig  # nanoGPT's model.py, from the checkout
    finally:
        sys.path.pop(0)
    ckpt = torch.load(
        repo / "out-shakespeare-char" / "ckpt.pt", map_location="cpu", weights_only=True
    )  # tensors and plain dicts only: no pickled code runs
    model = GPT(GPTConfig(**ckpt["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    model.eval()
    val = np.memmap(data_dir / "val.bin", dtype=np.uint16, mode="r").astype(np.int64)
    block = BABY["block_size"]
    starts = np.arange(0, len(val) - block - 1 + 1, block)
    total, count = 0.0, 0
    for chunk in np.array_split(starts, max(1, len(starts) // 64)):
        x = torch.from_numpy(np.stack([val[s : s + block] for s in chunk]))
        y = torch.from_numpy(np.stack([val[s + 1 : s + 1 + block] for s in chunk]))
        logits, _ = model(x, y)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return total / count


# ---------------------------------------------------------------- groundup
def groundup_config(row: str, data: Path, work: Path, steps: int, eval_every: int) -> dict:
    """The pretrain config of a row: gpt2 (nanoGPT's settings), modern, or an ablation."""
    train = {
        "max_steps": steps, "batch_size": BATCH, "eval_every": eval_every,
        "eval_batches": None, "log_every": eval_every, "precision": "auto", "device": "cpu",
        "clip_grad_norm": 1.0,
    }  # fmt: skip
    common = {
        "run_dir": str(work / row.replace(" ", "_")),
        "seed": 1337,
        "data": {"source": str(data), "shards_dir": str(work / "shards-char")},
        "tokenizer": {"kind": "char"},
        "train": train,
        "sample": {"max_new_tokens": 0},
    }
    if row == "gpt2":
        model = {"flavour": "gpt2", "bias": False, "activation": "gelu", **BABY}
        optim = _adamw(steps, lr=1e-3)
        return {**common, "model": model, "optim": optim}
    ablation = ABLATIONS.get(row.removeprefix("modern, "), {}) if row != "modern" else {}
    model = {"recipe": "modern", **BABY, **ablation.get("model", {})}
    optim = _adamw(steps, lr=3e-3) if ablation.get("optim") == "adamw" else _muon(steps)
    return {**common, "model": model, "optim": optim}


def _adamw(steps: int, lr: float) -> dict:
    return {
        "name": "adamw", "lr": lr, "weight_decay": 0.1, "betas": [0.9, 0.99],
        "schedule": "cosine", "warmup_steps": min(100, steps // 10), "min_lr_ratio": 0.1,
    }  # fmt: skip


def _muon(steps: int) -> dict:
    return {
        "name": "muon", "lr": 0.02, "adamw_lr": 3e-3, "adamw_betas": [0.9, 0.99],
        "schedule": "cosine", "warmup_steps": min(50, steps // 10), "min_lr_ratio": 0.1,
    }  # fmt: skip


def run_groundup(cfg_dict: dict) -> dict:
    from groundup.config import from_dict
    from groundup.jobs.pretrain import PretrainConfig, run_pretrain

    cfg = from_dict(PretrainConfig, cfg_dict)
    results = run_pretrain(None, config=cfg, overwrite=True, verbose=0)
    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "metrics.jsonl").open()]
    return {"results": results, "curve": training_time_curve(rows)}


def training_time_curve(rows: list[dict]) -> list[tuple[float, int, float]]:
    """(training seconds, step, whole-split val loss) at each evaluation, evaluations' own
    time taken out: an evaluation's cost is its time_s minus the train record's at its step."""
    train_time = {r["step"]: r["time_s"] for r in rows if r["event"] == "train"}
    curve, spent = [], 0.0
    for r in rows:
        if r["event"] == "eval" and r["step"] in train_time:
            curve.append((train_time[r["step"]] - spent, r["step"], r["val_loss"]))
            spent += r["time_s"] - train_time[r["step"]]
    return curve


def time_to(curve: list[tuple[float, int, float]], target: float) -> float:
    """Training seconds at which the val loss first reaches target (linear between the two
    evaluations around the crossing); inf when it never does."""
    prev = (0.0, 0, math.inf)
    for t, _, loss in curve:
        if loss <= target:
            if not math.isfinite(prev[2]):
                return t
            frac = (prev[2] - target) / (prev[2] - loss)
            return prev[0] + frac * (t - prev[0])
        prev = (t, 0, loss)
    return math.inf


def loss_at(curve: list[tuple[float, int, float]], seconds: float) -> float:
    """The val loss of the last evaluation within `seconds` of training (nan if none)."""
    within = [loss for t, _, loss in curve if t <= seconds * 1.0001]
    return within[-1] if within else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (git clone)")
    parser.add_argument("--target", type=float, help="target loss without --nanogpt")
    parser.add_argument("--rows", default="gpt2,modern", help="groundup rows, comma separated")
    parser.add_argument("--ablations", action="store_true", help="add the ablation rows")
    parser.add_argument("--gpt2-steps", type=int, default=NANOGPT_ITERS)
    parser.add_argument("--modern-steps", type=int, default=800)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.nanogpt is None and args.target is None:
        sys.exit("pass --nanogpt DIR (a nanoGPT checkout) or --target LOSS")
    if not args.data.is_file():
        sys.exit(f"--data {args.data}: no such file; save tinyshakespeare's input.txt there")
    torch.set_num_threads(args.threads)
    rows = [r for r in args.rows.split(",") if r]
    if args.ablations:
        rows += [f"modern, {name}" for name in ABLATIONS]

    table: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.nanogpt is not None:
            nano = run_nanogpt(args.nanogpt, args.data, work, NANOGPT_ITERS, args.threads)
            table["nanoGPT"] = {
                "to_target_s": nano["train_s"], "total_s": nano["train_s"],
                "final": nano["val_loss"], "steps": nano["steps"],
                "curve": [(nano["train_s"], nano["steps"], nano["val_loss"])],
            }  # fmt: skip
        target = args.target if args.target is not None else table["nanoGPT"]["final"]
        for row in rows:
            steps = args.gpt2_steps if row == "gpt2" else args.modern_steps
            out = run_groundup(groundup_config(row, args.data, work, steps, args.eval_every))
            curve = out["curve"]
            table[row] = {
                "to_target_s": time_to(curve, target), "total_s": curve[-1][0],
                "final": out["results"]["final_val_loss"], "steps": steps, "curve": curve,
            }  # fmt: skip
            print(f"  {row}: {_seconds(table[row]['to_target_s'])} to target", flush=True)

    base = table.get("nanoGPT", {}).get("to_target_s")
    equal = min(r["total_s"] for r in table.values())
    print(f"\ntorch {torch.__version__}, {args.threads} threads; target val loss {target:.4f}")
    print(f"(whole validation split; 'at {equal:.0f} s' = the shortest run's training time)\n")
    print(f"{'row':28} {'steps':>6} {'to target':>10} {'ratio':>7} {'final loss':>11} "
          f"{'loss at ' + format(equal, '.0f') + ' s':>13}")  # fmt: skip
    for name, r in table.items():
        ratio = r["to_target_s"] / base if base else math.nan
        shown = f"{ratio:.2f}x" if math.isfinite(ratio) else "-"
        print(
            f"{name:28} {r['steps']:>6} {_seconds(r['to_target_s']):>10} {shown:>7} "
            f"{r['final']:>11.4f} {loss_at(r['curve'], equal):>13.4f}"
        )


def _seconds(t: float) -> str:
    """A time to target, or "never" for a run that did not reach it."""
    return f"{t:.1f}s" if math.isfinite(t) else "never"


if __name__ == "__main__":
    main()
