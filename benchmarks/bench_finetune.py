"""Fine-tuning figures, each against a control run in the same invocation.

  python benchmarks/bench_finetune.py minilm   # pretrained all-MiniLM-L6-v2 vs the same
                                               # architecture from scratch, same budget
  python benchmarks/bench_finetune.py sft --base runs/pydocs
                                               # LoRA vs full SFT of a groundup GPT: trainable
                                               # share, loss curve, peak memory

Every run is its own `groundup finetune` process, so peak memory (ru_maxrss) is the run's
own. Extra arguments after `--` go to every run as config overrides (e.g. train.epochs=1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def finetune(config: str, run_dir: Path, overrides: list[str]) -> tuple[dict, list[dict], float]:
    """Run one fine-tune; returns results.json, the metrics.jsonl rows and the wall time."""
    cmd = [
        sys.executable,
        "-m",
        "groundup",
        "finetune",
        str(ROOT / config),
        f"run_dir={run_dir}",
        *overrides,
        "--overwrite",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return results, rows, wall


def minilm(tmp: Path, extra: list[str]) -> None:
    config = "configs/finetune-minilm-topics.yaml"
    runs = {
        "pretrained": finetune(config, tmp / "pretrained", extra),
        "from scratch": finetune(config, tmp / "scratch", ["base.init=random", *extra]),
    }
    print(
        f"\nstdlib-topics test split ({runs['pretrained'][0]['test_examples']} docstrings, "
        f"{len(json.loads((tmp / 'pretrained' / 'model' / 'config.json').read_text())['labels'])}"
        " classes), all-MiniLM-L6-v2 architecture, same steps and settings:"
    )
    print(f"{'init':<14}{'test acc':>10}{'macro-F1':>10}{'val loss':>10}{'steps':>7}{'wall s':>8}")
    for name, (r, _, wall) in runs.items():
        print(
            f"{name:<14}{r['test_accuracy']:>10.4f}{r['test_macro_f1']:>10.4f}"
            f"{r['val_loss']:>10.4f}{r['steps']:>7}{wall:>8.0f}"
        )
    gain = runs["pretrained"][0]["test_accuracy"] - runs["from scratch"][0]["test_accuracy"]
    print(f"pretraining adds {100 * gain:+.1f} points of test accuracy")


def sft(tmp: Path, base: str, extra: list[str]) -> None:
    config = "configs/finetune-sft-lora.yaml"
    common = [f"base.path={base}", "sample=null", *extra]
    runs = {
        "lora": finetune(config, tmp / "lora", common),
        "full": finetune(config, tmp / "full", ["method=full", "optim.lr=3e-4", *common]),
    }
    print(f"\nSFT of {base} on stdlib-qa (loss on response tokens only):")
    print(
        f"{'method':<8}{'trainable':>12}{'share':>9}{'val loss':>10}{'peak RSS MiB':>14}"
        f"{'fit growth MiB':>16}{'wall s':>8}{'model folder MB':>17}"
    )
    for name, (r, _, wall) in runs.items():
        size = sum(f.stat().st_size for f in (tmp / name / "model").iterdir()) / 1e6
        print(
            f"{name:<8}{r['trainable_params']:>12,}"
            f"{100 * r['trainable_params'] / r['total_params']:>8.2f}%{r['val_loss']:>10.4f}"
            f"{r['peak_rss_mib']:>14.0f}{r.get('fit_rss_growth_mib', float('nan')):>16.0f}"
            f"{wall:>8.0f}{size:>17.2f}"
        )
    print("loss curve (val_loss at each evaluation):")
    for name, (_, rows, _) in runs.items():
        curve = [f"{row['step']}:{row['val_loss']:.3f}" for row in rows if "val_loss" in row]
        print(f"  {name:<6}" + " ".join(curve))
    lora, full = runs["lora"][0], runs["full"][0]
    print(
        f"peak RSS LoRA/full: {lora['peak_rss_mib'] / full['peak_rss_mib']:.2f}x; memory that "
        f"training adds (RSS growth during fit) LoRA/full: "
        f"{lora['fit_rss_growth_mib'] / full['fit_rss_growth_mib']:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["minilm", "sft"])
    parser.add_argument("--base", default="runs/pydocs", help="sft: the pretrained GPT run")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        if args.part == "minilm":
            minilm(Path(tmp), args.overrides)
        else:
            sft(Path(tmp), args.base, args.overrides)


if __name__ == "__main__":
    main()
