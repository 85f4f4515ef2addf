"""The LR finder's suggestion against the best learning rate of a small grid, on the same
config: the digits MLP (configs/digits-mlp.yaml, Adam, 10 epochs with early stopping) and the
char-level GPT on tinyshakespeare (configs/pretrain-shakespeare-char.yaml cut to 300 steps).

For each: `groundup lr-find` (its suggestion), then a full training run at each grid LR and at
the suggested LR (the digits MLP for several seeds, averaged), compared by the best
validation loss of the run. Printed: one row per LR and the verdict (the suggestion's loss
against the grid's best, and where the suggestion falls in the grid).

    python benchmarks/lr_find_vs_grid.py [--data data/tinyshakespeare.txt] [--seeds 3]

About 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DEFAULT_DATA = Path("data") / "tinyshakespeare.txt"  # see configs/pretrain-shakespeare-char.yaml
GRID = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


def best_val_loss(run_dir: Path) -> float:
    """The lowest val_loss of the run's evaluations (epoch or eval records)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    values = [r["val_loss"] for r in rows if "val_loss" in r and math.isfinite(r["val_loss"])]
    return min(values) if values else math.inf


def compare(
    name: str, config: Path, overrides: list[str], seeds: list[int], out: Path, **finder: float
) -> dict:
    from groundup.jobs.lr_find import run_lr_find
    from groundup.sweep.commands import config_data, detect_command, run_job

    command = detect_command(config_data(config, overrides))
    started = time.perf_counter()
    base = [*overrides, f"run_dir={out / name}"]
    suggestion = run_lr_find(config, base, verbose=0, **finder).suggestion
    found_in = time.perf_counter() - started
    print(f"=== {name}: lr-find suggests {suggestion:.2e} ({found_in:.0f} s) ===", flush=True)
    rows = {}
    for lr in sorted({*GRID, suggestion}):
        losses = []
        for seed in seeds:
            run_dir = out / f"{name}-lr{lr:.2e}-seed{seed}"
            run_job(
                command,
                config,
                [*overrides, f"run_dir={run_dir}", f"optim.lr={lr!r}", f"seed={seed}"],
                overwrite=True,
                verbose=0,
            )
            losses.append(best_val_loss(run_dir))
        rows[lr] = statistics.fmean(losses)
        tag = "  <- suggestion" if lr == suggestion else ""
        print(
            f"  lr {lr:9.2e}  best val_loss {rows[lr]:.4f} (mean of {len(seeds)}){tag}", flush=True
        )
    grid = {lr: v for lr, v in rows.items() if lr in GRID}
    best_lr = min(grid, key=grid.get)
    ratio = rows[suggestion] / grid[best_lr]
    below = sum(lr < suggestion for lr in GRID)
    print(
        f"  grid best {best_lr:.0e} (val_loss {grid[best_lr]:.4f}); suggestion {suggestion:.2e} "
        f"gives {rows[suggestion]:.4f} = {ratio:.3f}x the grid best, {abs(math.log10(suggestion / best_lr)):.2f} "
        f"decades from it (between grid points {below} and {below + 1} of {len(GRID)}); "
        f"{time.perf_counter() - started:.0f} s in all\n",
        flush=True,
    )
    return {
        "suggestion": suggestion,
        "grid": grid,
        "suggested_loss": rows[suggestion],
        "grid_best_lr": best_lr,
        "ratio": ratio,
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare text")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per LR for the digits MLP")
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (kept)")
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"no corpus at {args.data}: see configs/pretrain-shakespeare-char.yaml")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = args.out or Path(tempfile.mkdtemp(prefix="lr-find-vs-grid-"))
    results = {
        "digits-mlp": compare(
            "digits-mlp", CONFIGS / "digits-mlp.yaml", [], list(range(args.seeds)), out
        ),
        "shakespeare-char": compare(
            "shakespeare-char",
            CONFIGS / "pretrain-shakespeare-char.yaml",
            [
                f"data.source={args.data.resolve()}",
                f"data.shards_dir={out / 'shakespeare-shards'}",
                "train.max_steps=300",
                "optim.warmup_steps=30",
                "train.eval_every=50",
                "train.eval_batches=10",
                "sample.max_new_tokens=20",
            ],
            [1337],
            out,
            min_lr=1e-5,
            max_lr=1.0,
        ),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
