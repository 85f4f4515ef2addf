"""BERT masked-language-model (objective mlm) figures, each against a control in the same invocation.

  python benchmarks/bench_mlm.py throughput   # tokens/s of MLM pretraining (bert-mini: 4 layers
                                              # x 256) vs GPT pretraining of the same size, same
                                              # corpus (pydocs), tokenizer (bpe 4096), batch 32 x 128
  python benchmarks/bench_mlm.py topics       # stdlib-topics test accuracy / macro-F1 of a BERT
                                              # pretrained with configs/pretrain-bert-pydocs.yaml
                                              # (or --bert RUN), the same architecture from random
                                              # init, and all-MiniLM-L6-v2, same fine-tuning budget

Every run is its own `python -m groundup ...` process, run one after the other. Extra arguments
after `--` go to every fine-tune as config overrides (e.g. train.epochs=1); --json FILE saves
the figures.
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
BERT_CONFIG = "configs/pretrain-bert-pydocs.yaml"
TOPICS_CONFIG = "configs/finetune-minilm-topics.yaml"
MODELS = {
    "mlm": "{preset: bert-mini, block_size: 128}",
    "clm": "{flavour: gpt2, n_layer: 4, n_head: 4, n_embd: 256, block_size: 128}",
}


def job(kind: str, config: str, run_dir: Path, overrides: list[str]) -> tuple[dict, float]:
    """Run one `groundup pretrain|finetune`; returns its results.json and the wall time."""
    cmd = [sys.executable, "-m", "groundup", kind, str(ROOT / config), f"run_dir={run_dir}"]
    cmd += [*overrides, "--overwrite"]
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads((run_dir / "results.json").read_text()), wall


def throughput(work: Path, steps: int) -> dict:
    common = [
        f"train.max_steps={steps}",
        "train.batch_size=32",
        f"train.eval_every={10 * steps}",  # only the final evaluation
        "train.log_every=10",  # tokens_per_s: the mean of the logged intervals after the first
        "train.precision=auto",
        f"optim.warmup_steps={min(60, steps // 2)}",
        "sample.max_new_tokens=0",
    ]
    runs = {}
    for objective in ("mlm", "clm"):
        overrides = [f"objective={objective}", f"model={MODELS[objective]}", *common]
        runs[objective] = job("pretrain", BERT_CONFIG, work / objective, overrides)
    print(f"\npretraining on pydocs, bpe 4096, batch 32 x 128 tokens, {steps} steps, 4 x 256:")
    print(f"{'objective':<12}{'params':>12}{'tokens/s':>10}{'MFU':>8}{'wall s':>8}")
    figures = {}
    for objective, (r, wall) in runs.items():
        name = "mlm (BERT)" if objective == "mlm" else "clm (GPT)"
        mfu = r.get("mfu", float("nan"))
        print(f"{name:<12}{r['params']:>12,}{r['tokens_per_s']:>10.0f}{mfu:>8.3f}{wall:>8.0f}")
        figures[objective] = {**r, "wall_s": wall}
    ratio = runs["mlm"][0]["tokens_per_s"] / runs["clm"][0]["tokens_per_s"]
    print(f"tokens/s MLM/GPT: {ratio:.2f}x")
    return {"steps": steps, "runs": figures, "tokens_per_s_ratio_mlm_over_gpt": ratio}


def topics(work: Path, bert: str | None, extra: list[str]) -> dict:
    pretrain_wall = None
    if bert is None:
        _, pretrain_wall = job("pretrain", BERT_CONFIG, work / "bert", [])
        bert = str(work / "bert")
    base = [f"base.path={bert}"]
    runs = {
        "bert (mlm)": job("finetune", TOPICS_CONFIG, work / "bert-ft", [*base, *extra]),
        "bert random": job(
            "finetune", TOPICS_CONFIG, work / "random-ft", [*base, "base.init=random", *extra]
        ),
        "minilm": job("finetune", TOPICS_CONFIG, work / "minilm-ft", extra),
    }
    print(f"\nstdlib-topics test split, {TOPICS_CONFIG} with {' '.join(extra) or 'no overrides'}:")
    print(f"pretrained BERT: {bert}" + (f" ({pretrain_wall:.0f} s)" if pretrain_wall else ""))
    print(f"{'model':<14}{'params':>12}{'test acc':>10}{'macro-F1':>10}{'steps':>7}{'wall s':>8}")
    figures = {}
    for name, (r, wall) in runs.items():
        print(
            f"{name:<14}{r['total_params']:>12,}{r['test_accuracy']:>10.4f}"
            f"{r['test_macro_f1']:>10.4f}{r['steps']:>7}{wall:>8.0f}"
        )
        figures[name] = {**r, "wall_s": wall}
    gain = runs["bert (mlm)"][0]["test_accuracy"] - runs["bert random"][0]["test_accuracy"]
    print(f"MLM pretraining adds {100 * gain:+.1f} points of test accuracy over random init")
    return {"bert": bert, "pretrain_wall_s": pretrain_wall, "overrides": extra, "runs": figures}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        usage="%(prog)s {throughput,topics} [options] [-- overrides]",
    )
    parser.add_argument("part", choices=["throughput", "topics"])
    parser.add_argument("--steps", type=int, default=120, help="throughput: train.max_steps")
    parser.add_argument("--bert", help="topics: an existing mlm pretrain run (else pretrain one)")
    parser.add_argument("--keep", help="write the runs here instead of a temporary folder")
    parser.add_argument("--json", help="save the figures to this file")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # after --: fine-tune overrides
    args, overrides = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    with tempfile.TemporaryDirectory(prefix="bench-mlm-") as tmp:
        work = Path(args.keep).resolve() if args.keep else Path(tmp)
        if args.part == "throughput":
            figures = throughput(work, args.steps)
        else:
            bert = str(Path(args.bert).resolve()) if args.bert else None
            figures = topics(work, bert, overrides)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
