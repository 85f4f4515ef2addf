"""Two sweeps of 12 trials, each killed with SIGKILL mid-trial and rerun to the end: the
digits MLP (configs/digits-mlp.yaml with configs/sweep-digits-mlp.yaml) and the char-level
GPT on tinyshakespeare (configs/pretrain-shakespeare-char.yaml made small: 150 steps, an
evaluation every 30, with configs/sweep-shakespeare-char.yaml).

Each sweep runs in a subprocess; once 4 trials have finished and the next trial has saved its
first checkpoint, the process gets SIGKILL; the same sweep is then run again and finishes.
Printed: the rerun's output (the interrupted trial resuming, the comparison table), then
checks: 12 trials finished, one interrupted and resumed in its own folder, no duplicate or
orphan trial folders.

    python benchmarks/sweep_demo.py [--data data/tinyshakespeare.txt] [--out DIR] [--trials 12]

The digits sweep takes about 30 s on 2 CPU cores; the GPT sweep about 20 s a trial when the
cores are free (its 6-layer, 192-wide trials are the slow ones).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DEFAULT_DATA = Path("data") / "tinyshakespeare.txt"  # see configs/pretrain-shakespeare-char.yaml
SWEEP = (
    "import sys\n"
    "from groundup.jobs.sweep import run_sweep\n"
    "run_sweep(sys.argv[1], sys.argv[4:], sys.argv[2], trials=int(sys.argv[3]))\n"
)
KILL_AFTER = 4  # finished trials before the kill


def finished(sweep_dir: Path) -> int:
    try:
        summary = json.loads((sweep_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(t["state"] in ("complete", "pruned") for t in summary["trials"])


def running_trial(sweep_dir: Path) -> Path | None:
    """A trial folder with a checkpoint and no results yet: a trial in the middle of its run."""
    for folder in sorted(sweep_dir.glob("trial-*"), reverse=True):
        if (folder / "checkpoints" / "latest").is_file() and not (folder / "results.json").exists():
            return folder
    return None


def sweep(name: str, config: Path, space: Path, overrides: list[str], trials: int) -> dict:
    """Run, SIGKILL mid-trial, rerun; returns the final summary."""
    run_dir = Path(next(o for o in overrides if o.startswith("run_dir=")).split("=", 1)[1])
    sweep_dir = Path(f"{run_dir}-sweep")
    cmd = [sys.executable, "-c", SWEEP, str(config), str(space), str(trials), *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"=== {name}: {trials} trials, killed after {KILL_AFTER} ===", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed_in = None
    while proc.poll() is None:
        if finished(sweep_dir) >= KILL_AFTER:
            killed_in = running_trial(sweep_dir)
            if killed_in is not None:
                proc.kill()
                break
        time.sleep(0.05)
    first = proc.communicate()[0].decode(errors="replace")
    print(first.rstrip())
    print(
        f"--- SIGKILL during {killed_in.name if killed_in else '(no trial: it ended first)'} "
        f"after {time.perf_counter() - started:.0f} s; the same sweep again ---",
        flush=True,
    )
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print(again.stdout.rstrip())
    if again.returncode != 0:
        raise SystemExit(f"the rerun failed:\n{again.stderr[-3000:]}")
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    done = [t for t in summary["trials"] if t["state"] in ("complete", "pruned")]
    folders = [Path(t["run_dir"]).name for t in done]
    on_disk = sorted(p.name for p in sweep_dir.glob("trial-*"))
    resumed = [t for t in done if t["resume_of"] is not None]
    checks = {
        f"{trials} trials finished": len(done) == trials,
        "one trial interrupted": [t["state"] for t in summary["trials"]].count("interrupted") == 1,
        "it resumed in its own folder": bool(killed_in)
        and any(Path(t["run_dir"]).name == killed_in.name for t in resumed),
        "one folder per trial, no orphan": len(set(folders)) == trials
        and on_disk == sorted(folders),
    }
    for what, ok in checks.items():
        print(f"check: {what}: {'yes' if ok else 'NO'}")
    print(
        f"{name}: {time.perf_counter() - started:.0f} s in all; best {summary['best']['values']} "
        f"val_loss {summary['best']['best_val_loss']:.4f}\n",
        flush=True,
    )
    summary["checks"] = checks
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare text")
    parser.add_argument("--out", type=Path, default=None, help="where the sweeps go (kept)")
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"no corpus at {args.data}: see configs/pretrain-shakespeare-char.yaml")
    out = args.out or Path(tempfile.mkdtemp(prefix="sweep-demo-"))
    results = {
        "digits-mlp": sweep(
            "digits MLP",
            CONFIGS / "digits-mlp.yaml",
            CONFIGS / "sweep-digits-mlp.yaml",
            [f"run_dir={out / 'digits'}", "train.epochs=20"],
            args.trials,
        ),
        "shakespeare-char": sweep(
            "char-level GPT",
            CONFIGS / "pretrain-shakespeare-char.yaml",
            CONFIGS / "sweep-shakespeare-char.yaml",
            [
                f"run_dir={out / 'shakespeare'}",
                f"data.source={args.data.resolve()}",
                f"data.shards_dir={out / 'shakespeare-shards'}",  # encoded once, for all trials
                "data.val_fraction=0.05",  # the final whole-split evaluation of each trial
                "train.max_steps=150",
                "train.eval_every=30",
                "train.eval_batches=5",
                "sample.max_new_tokens=40",
            ],
            args.trials,
        ),
    }
    ok = all(all(r["checks"].values()) for r in results.values())
    print(f"sweeps in {out}; all checks {'passed' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
