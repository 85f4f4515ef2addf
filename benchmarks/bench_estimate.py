"""`groundup estimate` against real runs: predicted vs measured peak memory and wall time.

For each config, in fresh processes: `run_estimate` (its memory prediction, and the speed of
a few timed steps times the run's budget), then the real job, whose `Trainer.fit` is wrapped
to measure the peak memory of training (CPU: the growth of the peak RSS over the RSS when
fit starts, weights already there, so it is compared with the prediction minus the weights;
CUDA: max_memory_allocated) and the wall seconds of fit (training and its evaluations). The
job runs twice on the CPU: with glibc's default malloc (freed blocks may stay in the RSS) and
with its mmap threshold pinned at 64 KiB (freed tensors leave the RSS, as on a GPU).

Configs: the quickstart's pydocs GPT (shortened), the same with activation checkpointing, the
character-level Shakespeare GPT (when its corpus is there) and the digits MLP.

    python benchmarks/bench_estimate.py [--shakespeare data/tinyshakespeare.txt] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs inside the job's process: wrap Trainer.fit to measure what training itself costs.
JOB = r"""
import json, sys, time, torch
from groundup.estimate.speed import proc_status_bytes, reset_peak_rss
from groundup.train import trainer as trainer_module

measured = {}
original = trainer_module.Trainer.fit

def fit(self, *args, **kwargs):
    cuda = self.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(self.device); torch.cuda.reset_peak_memory_stats(self.device)
    before = reset_peak_rss()
    start = time.perf_counter()
    try:
        return original(self, *args, **kwargs)
    finally:
        if cuda:
            torch.cuda.synchronize(self.device)
            measured["peak"] = torch.cuda.max_memory_allocated(self.device)
        else:
            measured["peak"] = proc_status_bytes("VmHWM") - before
        measured["seconds"] = time.perf_counter() - start

trainer_module.Trainer.fit = fit
command, config, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if command == "train":
    from groundup.jobs.train_tabular import run_train as run
elif command == "pretrain":
    from groundup.jobs.pretrain import run_pretrain as run
run(config, overrides, overwrite=True, verbose=0)
print("RESULT " + json.dumps(measured))
"""

ESTIMATE = r"""
import json, sys
from groundup.jobs.estimate import run_estimate
s = run_estimate(sys.argv[2], json.loads(sys.argv[3]), command=sys.argv[1], verbose=0)
print("RESULT " + json.dumps(s, default=str))
"""


def python(code: str, *args: str, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not lines:
        raise SystemExit(f"failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def cases(tmp: Path, steps: int, shakespeare: Path) -> list[tuple[str, str, str, list[str]]]:
    from groundup.configs import shipped_config

    pydocs = str(shipped_config("pretrain-pydocs.yaml"))
    short = [
        f"train.max_steps={steps}",
        f"train.eval_every={steps // 2}",
        "train.eval_batches=10",
        "optim.warmup_steps=10",
        f"train.log_every={max(1, steps // 4)}",
        "sample.max_new_tokens=1",
    ]
    gpt = [f"run_dir={tmp / 'pydocs'}", *short]
    out = [
        ("pydocs GPT (quickstart)", "pretrain", pydocs, gpt),
        (
            "pydocs GPT + act. ckpt",
            "pretrain",
            pydocs,
            [*gpt, "distributed.activation_checkpointing=true"],
        ),
    ]
    if shakespeare.is_file():
        out.append(
            (
                "shakespeare char GPT",
                "pretrain",
                str(shipped_config("pretrain-shakespeare-char.yaml")),
                [f"run_dir={tmp / 'shakespeare'}", f"data.source={shakespeare}", *short],
            )
        )
    digits = [f"run_dir={tmp / 'digits'}", "early_stopping=null", "metrics=[accuracy]"]
    out.append(("digits MLP", "train", str(shipped_config("digits-mlp.yaml")), digits))
    return out


def mib(n: float) -> str:
    return f"{n / 2**20:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shakespeare", type=Path, default=Path("data/tinyshakespeare.txt"))
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of the GPT runs")
    args = parser.parse_args()
    pinned = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, command, config, overrides) in enumerate(
            cases(Path(tmp), args.steps, args.shakespeare)
        ):
            if command == "pretrain":  # one tokenizer and one set of shards for all runs
                overrides = [*overrides, f"data.shards_dir={tmp}/shards-{i}"]
                python(JOB, command, config, json.dumps(overrides))  # trains the tokenizer
                run_dir = next(o for o in overrides if o.startswith("run_dir=")).split("=", 1)[1]
                kept = Path(tmp) / f"tokenizer-{i}.json"
                shutil.copy(Path(run_dir) / "tokenizer.json", kept)
                overrides = [*overrides, f"tokenizer.path={kept}"]
            packed = json.dumps(overrides)
            est = python(ESTIMATE, command, config, packed)
            default = python(JOB, command, config, packed)
            pin = python(JOB, command, config, packed, env=pinned)
            m = est["memory"]
            gpu = est["device"].startswith("cuda")
            predicted = m["total"] if gpu else m["total"] - m["weights"]
            rows.append(
                (name, predicted, default["peak"], pin["peak"], est.get("predicted_seconds"),
                 default["seconds"], est)
            )  # fmt: skip
            print(f"done: {name}", file=sys.stderr, flush=True)
    print(
        "memory: predicted peak of a step (CPU: minus the weights, there before fit) vs the "
        "measured peak of the real run's fit\ntime: first step + steps x timed step + evaluations vs the "
        "wall seconds of the real run's fit (default malloc)\n"
    )
    head = (
        f"{'config':26s} {'pred MiB':>8s} {'RSS MiB':>8s} {'ratio':>6s} {'pinned':>8s} "
        f"{'ratio':>6s} {'pred s':>7s} {'real s':>7s} {'ratio':>6s}  activations"
    )
    print(head)
    print("-" * len(head))
    for name, pred, rss, pin, pred_s, real_s, est in rows:
        m = est["memory"]
        t = f"{pred_s:7.1f} {real_s:7.1f} {real_s / pred_s:6.2f}" if pred_s else " " * 22
        print(
            f"{name:26s} {mib(pred)} {mib(rss)} {rss / pred:6.2f} {mib(pin)} {pin / pred:6.2f} "
            f"{t}  {m['source']}, {est['precision']}"
        )
    print(
        "\nratio = measured / predicted. 'RSS': glibc's default malloc; 'pinned': "
        "MALLOC_MMAP_THRESHOLD_=65536 (freed tensors leave the RSS)."
    )


if __name__ == "__main__":
    main()
