"""SIGKILL at seeded random moments, then `--resume RUN_DIR`: is the run the uninterrupted one?

For `groundup pretrain`, `groundup train` and `groundup finetune` (LoRA classification) on tiny
configs, each trial starts a run, kills it with SIGKILL at a seeded random step plus a random
moment after it (every other trial with slow checkpoint saves, so the kill often lands
mid-write), resumes it with
the command the interrupt hint prints (starting over when no checkpoint was complete yet), and
compares the weights, every metrics.jsonl record (less its wall-clock figures) and
history.csv with the uninterrupted run's, and looks for debris in checkpoints/.

    python benchmarks/kill_resume.py --trials 21 --seed 0

Prints one line per trial and the count of identical runs; exits 1 unless all are.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from groundup.train.run_log import TIMING_KEYS as TIMING  # clock figures differ run to run

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = (
    "import sys, groundup.train.hardware as h; h.measured_peak_flops = lambda *a, **k: 1e12; "
    "from groundup.cli import main; sys.exit(main(sys.argv[1:]))"
)


def write_configs(folder: Path) -> dict[str, dict]:
    """One config per command, tiny enough for seconds, with frequent checkpoints."""
    from groundup.data.tokenizers import Tokenizer
    from groundup.models.folders import save_model_dir
    from groundup.models.gpt import GPT, GPTConfig

    corpus = folder / "corpus.txt"
    words = "the cat sat on the mat while the dog slept by the warm door".split()
    corpus.write_text(" ".join(words[i % len(words)] for i in range(6000)), encoding="utf-8")
    tok = Tokenizer.train(None, kind="bytes")
    torch.manual_seed(1234)
    base_cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=tok.vocab_size)
    save_model_dir(folder / "base" / "model", GPT(base_cfg), tok)
    rows = ["text,label"] + [
        f'"it was {("good", "bad", "fine", "poor")[i % 4]} really",{("pos", "neg")[i % 2]}'
        for i in range(96)
    ]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    loop = {"device": "cpu", "precision": "fp32", "log_every": 1}
    return {
        "pretrain": {
            "seed": 0,
            "data": {"source": str(corpus), "shards_dir": str(folder / "shards")},
            "tokenizer": {"kind": "char"},
            "model": {"preset": "gpt2-tiny", "block_size": 32, "dropout": 0.1},
            "optim": {"name": "adamw", "lr": 3e-3, "schedule": "cosine", "warmup_steps": 5},
            "train": {
                **loop,
                "max_steps": 60,
                "batch_size": 8,
                "eval_every": 10,
                "eval_batches": 2,
                "checkpoint_every": 3,
                "keep_last": 2,
            },
            "sample": {"prompt": "the", "max_new_tokens": 5},
        },
        "train": {
            "seed": 0,
            "data": {"dataset": "digits", "test_size": 0.2, "val_size": 0.1},
            "layers": [
                {"type": "Dense", "units": 32, "activation": "relu"},
                {"type": "Dense", "units": 10, "activation": "softmax"},
            ],
            "optim": {"name": "adam", "lr": 1e-3},
            "early_stopping": {"patience": 2},
            "train": {**loop, "epochs": 4, "batch_size": 32, "checkpoint_every": 7},
        },
        "finetune": {
            "seed": 0,
            "task": "classification",
            "method": "lora",
            "base": {"path": str(folder / "base")},
            "lora": {"targets": ["*.attn.qkv", "*.attn.proj"]},
            "data": {"train": str(folder / "labels.csv"), "max_len": 16},
            "optim": {"name": "adamw", "lr": 1e-2},
            "train": {**loop, "epochs": 3, "batch_size": 8, "checkpoint_every": 4},
        },
    }


def cli(args: list[str], slow: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if slow:
        env["GROUNDUP_TEST_SLOW_SAVE"] = "0.2"
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def start(command: str, config: dict, run_dir: Path, slow: bool = False) -> subprocess.Popen:
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump({**config, "run_dir": str(run_dir)}), encoding="utf-8")
    return cli([command, str(path)], slow)


def records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def reached(run: Path) -> int:
    """The newest step a run has logged (0 before its first record)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [0]
    for line in lines:
        try:
            steps.append(int(json.loads(line).get("step", 0)))
        except (json.JSONDecodeError, ValueError, AttributeError):
            pass  # a line being written
    return max(steps)


def weights(run: Path) -> dict[str, torch.Tensor]:
    folder = run / "model"
    name = (
        "model.safetensors" if (folder / "model.safetensors").is_file() else "adapter.safetensors"
    )
    return load_file(str(folder / name))


def debris(run: Path) -> list[str]:
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] + [
        p.name for p in folder.glob("step-*") if not (p / "state.json").is_file()
    ]


def identical(run: Path, ref: Path) -> list[str]:
    """What differs between a resumed run and the reference (empty: nothing)."""
    problems = []
    if records(run) != records(ref):
        problems.append("metrics.jsonl")
    for name in ("history.csv",):
        if (ref / name).is_file() and (run / name).read_text() != (ref / name).read_text():
            problems.append(name)
    a, b = weights(run), weights(ref)
    if sorted(a) != sorted(b) or not all(torch.equal(a[k], b[k]) for k in a):
        problems.append("weights")
    if debris(run):
        problems.append(f"debris {debris(run)}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=21)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    folder = Path(args.out or tempfile.mkdtemp(prefix="kill-resume-"))
    folder.mkdir(parents=True, exist_ok=True)
    configs = write_configs(folder)
    last_step = {}
    for command, config in configs.items():  # the uninterrupted references
        proc = start(command, config, folder / f"ref-{command}")
        if proc.wait() != 0:
            print(proc.stderr.read(), file=sys.stderr)
            return 1
        last_step[command] = reached(folder / f"ref-{command}")
    rng = random.Random(args.seed)
    commands = list(configs)
    ok = 0
    for trial in range(args.trials):
        command = commands[trial % len(commands)]
        run = folder / f"trial-{trial:02d}-{command}"
        slow = trial % 2 == 1
        target = rng.randrange(1, last_step[command])  # a seeded random step of the run
        extra = rng.uniform(0.0, 0.2)  # and a moment inside the step (or its save) after it
        proc = start(command, configs[command], run, slow)
        while proc.poll() is None and reached(run) < target:
            time.sleep(0.005)
        time.sleep(extra)
        mid_save = bool(list((run / "checkpoints").glob(".*tmp-*"))) if run.is_dir() else False
        proc.send_signal(signal.SIGKILL)
        killed = proc.wait() == -signal.SIGKILL
        step = (
            max((r.get("step", 0) for r in records(run)), default=0)
            if (run / "metrics.jsonl").is_file()
            else 0
        )
        for _ in range(3):  # resume as the hint says; start over if nothing was saved yet
            has_checkpoint = (run / "checkpoints" / "latest").is_file()
            again = (
                cli([command, "--resume", str(run)], False)
                if has_checkpoint
                else start(command, configs[command], run)
            )
            if again.wait() == 0:
                break
        problems = (
            identical(run, folder / f"ref-{command}")
            if again.returncode == 0
            else ["did not finish"]
        )
        ok += not problems
        print(
            f"trial {trial:2d} {command:8s} killed={'yes' if killed else 'finished first'} "
            f"at step {step:3d}{' mid-save' if mid_save else ''}: "
            f"{'identical' if not problems else 'DIFFERS: ' + ', '.join(problems)}",
            flush=True,
        )
    print(
        f"{ok}/{args.trials} resumed runs identical to the uninterrupted run "
        "(weights, metrics.jsonl records, history.csv; no debris)"
    )
    return 0 if ok == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
