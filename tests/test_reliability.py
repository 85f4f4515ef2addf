"""Reliability: kill -9 at any step (even mid-save) and --resume gives the uninterrupted run's
losses exactly; SIGINT saves and exits 130; non-finite losses are stopped, skipped or rolled
back; old checkpoints are pruned behind an atomic `latest` pointer.

The CLI runs go through a subprocess (a real SIGKILL). They skip the matmul peak measurement
(about 2 s per process, used only for the logged MFU, seeded around) to keep the file fast.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import groundup as gu
from groundup.checkpoint import find_latest, save_step_checkpoint
from groundup.errors import CheckpointError, TrainingError, TrainingInterrupted
from groundup.train.run_log import TIMING_KEYS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_pretrain import write_config  # noqa: E402

LAUNCH = (
    "import sys, groundup.train.hardware as h; h.measured_peak_flops = lambda *a, **k: 1e12; "
    "from groundup.cli import main; sys.exit(main(sys.argv[1:]))"
)
SLOW_SAVE = "0.05"  # seconds each checkpoint save sleeps: gives the poller time to kill mid-run


def start(args: list[str], slow_save: str = SLOW_SAVE) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GROUNDUP_TEST_SLOW_SAVE": slow_save}
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def train_records(run: Path) -> list[dict]:
    if not (run / "metrics.jsonl").is_file():
        return []
    out = []
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if record.get("event") == "train":
            out.append(record)
    return out


def send_when(actions: list[tuple[subprocess.Popen, object, int]], timeout: float = 60.0) -> None:
    """Poll several runs at once; send each its signal as soon as its condition holds."""
    pending = list(actions)
    deadline = time.monotonic() + timeout
    while pending:
        for item in list(pending):
            proc, done, sig = item
            if done():
                proc.send_signal(sig)
                pending.remove(item)
            else:
                assert proc.poll() is None, f"run ended before its signal: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting for the kill points"
        time.sleep(0.005)


def at_step(run: Path, step: int):
    return lambda: any(r["step"] >= step for r in train_records(run))


TIMING = TIMING_KEYS  # wall-clock figures: differ run to run


def log_records(run: Path) -> list[dict]:
    """Every metrics.jsonl record but its wall-clock figures."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in train_records(run)]


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out + err


# ---------------------------------------------------------------- pretrain: kill and resume
PRETRAIN_TRAIN = {
    "max_steps": 40,
    "batch_size": 8,
    "eval_every": 20,
    "eval_batches": 2,
    "log_every": 1,
    "checkpoint_every": 5,
    "precision": "fp32",
    "device": "cpu",
}


def pretrain_config(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(
        folder,
        f"{name}.yaml",
        run_dir=str(folder / name),
        model={"preset": "gpt2-tiny", "block_size": 32, "dropout": 0.1},
        train=PRETRAIN_TRAIN,
        sample={"prompt": "the", "max_new_tokens": 5},
    )


def test_pretrain_survives_kill_mid_run_mid_save_and_sigint(tmp_path) -> None:
    rng = random.Random(1234)
    kill_steps = [rng.randrange(7, 33)]  # with the mid-save kill and SIGINT: 3 interruptions
    names = ["base", "kill0", "midsave", "sigint"]
    configs = {n: pretrain_config(tmp_path, n) for n in names}
    runs = {n: tmp_path / n for n in names}
    # every first leg at once (2 cores, one thread each): the file stays fast
    procs = {
        n: start(["pretrain", str(configs[n])], slow_save="0.5" if n == "midsave" else SLOW_SAVE)
        for n in names
    }
    ckpts = runs["midsave"] / "checkpoints"

    def half_written() -> bool:  # step-10 in its temp dir: model.safetensors, no state.json
        temps = list(ckpts.glob(".step-00000010.tmp-*")) if ckpts.is_dir() else []
        return any((t / "model.safetensors").is_file() for t in temps)

    send_when(
        [
            # (a) SIGKILL at a random step
            *[
                (procs[f"kill{i}"], at_step(runs[f"kill{i}"], step), signal.SIGKILL)
                for i, step in enumerate(kill_steps)
            ],
            # (b) SIGKILL while a checkpoint is half written
            (procs["midsave"], half_written, signal.SIGKILL),
            # (c) SIGINT: checkpoint at the next step boundary, one line, exit code 130
            (procs["sigint"], at_step(runs["sigint"], 12), signal.SIGINT),
        ]
    )

    assert finish(procs["base"])[0] == 0
    for n in ("kill0", "midsave"):
        assert finish(procs[n])[0] == -signal.SIGKILL
    code, output = finish(procs["sigint"])
    assert code == 130, output
    line = output.strip().splitlines()[-1]
    assert line.startswith("interrupted at step ") and "checkpoint saved in" in line, line
    assert line.endswith(f"resume with: groundup pretrain --resume {runs['sigint']}"), line
    interrupted_at = int(line.split()[3].rstrip(";"))
    assert find_latest(runs["sigint"] / "checkpoints").name == f"step-{interrupted_at:08d}"

    # the half-written checkpoint is never picked up: the previous complete one is, and loads
    assert list(ckpts.glob(".step-00000010.tmp-*")) and not (ckpts / "step-00000010").exists()
    latest = find_latest(ckpts)
    assert latest == ckpts / "step-00000005"
    state = json.loads((latest / "state.json").read_text())  # the resume below loads it
    assert state["step"] == 5 and state["config"]["train"]["checkpoint_every"] == 5

    resumes = {n: start(["pretrain", str(configs[n]), "--resume"]) for n in names[1:-1]}
    resumes["sigint"] = start(["pretrain", "--resume", str(runs["sigint"])])  # the hint's form
    for n, proc in resumes.items():
        code, output = finish(proc)
        assert code == 0, (n, output)
    base = losses(runs["base"])
    assert [s for s, _ in base] == list(range(1, 41))
    for n in names[1:]:
        assert losses(runs[n]) == base, n  # exact: fp32, CPU, one thread
        assert log_records(runs[n]) == log_records(runs["base"]), n  # every record
    assert find_latest(runs["midsave"] / "checkpoints").name == "step-00000040"
    # the crashed save's temp dir was cleaned up by a later save
    assert not list(ckpts.glob(".step-*.tmp-*"))


# ---------------------------------------------------------------- groundup train: kill, resume
def train_config(folder: Path, name: str) -> Path:
    cfg = {
        "run_dir": str(folder / name),
        "seed": 0,
        "data": {"dataset": "digits", "test_size": 0.2, "val_size": 0.1},
        "layers": [
            {"type": "Dense", "units": 32, "activation": "relu"},
            {"type": "Dense", "units": 10, "activation": "softmax"},
        ],
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {
            "epochs": 2,
            "batch_size": 32,
            "log_every": 1,
            "checkpoint_every": 10,
            "device": "cpu",
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_train_job_resumes_exactly_after_kill(tmp_path) -> None:
    rng = random.Random(99)
    kill_steps = sorted(rng.sample(range(12, 70), 2))
    names = ["base", "kill0", "kill1"]
    configs = {n: train_config(tmp_path, n) for n in names}
    procs = {n: start(["train", str(configs[n])]) for n in names}
    send_when(
        [
            (procs[f"kill{i}"], at_step(tmp_path / f"kill{i}", step), signal.SIGKILL)
            for i, step in enumerate(kill_steps)
        ]
    )
    assert finish(procs["base"])[0] == 0
    for n in names[1:]:
        assert finish(procs[n])[0] == -signal.SIGKILL
    resumes = {n: start(["train", str(configs[n]), "--resume"]) for n in names[1:]}
    for n, proc in resumes.items():
        code, output = finish(proc)
        assert code == 0, (n, output)
    base = losses(tmp_path / "base")
    assert len(base) > 70 and [s for s, _ in base] == list(range(1, len(base) + 1))
    for n in names[1:]:
        assert losses(tmp_path / n) == base, n
        assert log_records(tmp_path / n) == log_records(tmp_path / "base"), n
        history = (tmp_path / n / "history.csv").read_text()
        assert history == (tmp_path / "base" / "history.csv").read_text(), n
    results = [json.loads((tmp_path / n / "results.json").read_text()) for n in names]
    assert results[1] == results[0] and results[2] == results[0]


# ---------------------------------------------------------------- in-process: NaN policies
def _bad_data(bad_batch: int, n_batches: int = 8, batch: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * batch, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-1.0], [2.0]])
    x[bad_batch * batch] = float("inf")  # one row of that batch: the loss is not finite
    return x, y


def _nan_trainer(policy: str, run_dir: Path | None = None, **kw) -> gu.Trainer:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    return gu.Trainer(
        model,
        loss="mse",
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        device="cpu",
        verbose=0,
        nan_policy=policy,
        run_dir=run_dir,
        **kw,
    )


def _sgd_reference(x, y, batches: list[list[int]]) -> dict[str, torch.Tensor]:
    """Plain SGD over the given batches of indices (what the policy must amount to)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for idx in batches:
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.state_dict()


def _batch(i: int, size: int = 4) -> list[int]:
    return list(range(i * size, (i + 1) * size))


def test_nan_policy_skip_drops_only_the_bad_step() -> None:
    x, y = _bad_data(bad_batch=2)
    trainer = _nan_trainer("skip")
    trainer.fit(gu.TensorBatches(x, y, batch_size=4, shuffle=False), epochs=1)
    assert trainer.skipped_steps == 1 and trainer.step == 8
    expected = _sgd_reference(x, y, [_batch(i) for i in range(8) if i != 2])
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(v, expected[k])


def test_nan_policy_stop_saves_and_raises(tmp_path) -> None:
    x, y = _bad_data(bad_batch=3)
    trainer = _nan_trainer("stop", run_dir=tmp_path)
    with pytest.raises(TrainingError, match="non-finite loss nan at step 4") as info:
        trainer.fit(gu.TensorBatches(x, y, batch_size=4, shuffle=False), epochs=1)
    assert "clip_grad_norm" in str(info.value) and "lower the learning rate" in str(info.value)
    saved = find_latest(tmp_path / "checkpoints")
    assert saved is not None and json.loads((saved / "state.json").read_text())["step"] == 3
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nan_policy_rollback_restores_the_newest_checkpoint(tmp_path) -> None:
    x, y = _bad_data(bad_batch=4)  # step 5 is bad; checkpoints at steps 3 and 6
    trainer = _nan_trainer("rollback", run_dir=tmp_path)
    trainer.fit(gu.TensorBatches(x, y, batch_size=4, shuffle=False), epochs=1, checkpoint_every=3)
    assert trainer.rollbacks == 1 and trainer.step == 8
    # weights go back to step 3 (batch 3 is lost); the data moves on to batches 5, 6, 7
    expected = _sgd_reference(x, y, [_batch(i) for i in (0, 1, 2, 5, 6, 7)])
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(v, expected[k])
    # without any checkpoint, rollback behaves like stop
    x, y = _bad_data(bad_batch=1)
    with pytest.raises(TrainingError, match="step 2"):
        _nan_trainer("rollback", run_dir=tmp_path / "none").fit(
            gu.TensorBatches(x, y, batch_size=4, shuffle=False), epochs=1
        )


def test_bad_nan_policy_is_a_config_error() -> None:
    with pytest.raises(gu.errors.ConfigError, match="nan_policy must be one of"):
        _nan_trainer("ignore")


# ---------------------------------------------------------------- in-process: signals
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_in_process_saves_and_restores_handlers(tmp_path, sig, code) -> None:
    class SendSigint(gu.callbacks.Callback):
        def on_step_end(self, trainer, step):
            if step == 3:
                os.kill(os.getpid(), sig)

    before = signal.getsignal(sig)
    x, y = _bad_data(bad_batch=0)
    x[0] = 0.0
    trainer = _nan_trainer("stop", run_dir=tmp_path, callbacks=[SendSigint()])
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit(gu.TensorBatches(x, y, batch_size=4, shuffle=False), epochs=1)
    assert info.value.step == 3 and info.value.exit_code == code
    assert info.value.checkpoint == tmp_path / "checkpoints" / "step-00000003"
    assert signal.getsignal(sig) is before


# ---------------------------------------------------------------- in-process: layout
def test_keep_last_prunes_and_latest_points_at_the_newest(tmp_path) -> None:
    x, y = _bad_data(bad_batch=0)
    x[0] = 0.0
    trainer = _nan_trainer("stop", run_dir=tmp_path, keep_last=2)
    folder = tmp_path / "checkpoints"
    (folder / "best").mkdir(parents=True)
    trainer.fit(gu.TensorBatches(x, y, batch_size=4, shuffle=False), epochs=1, checkpoint_every=2)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["best", "latest", "step-00000006", "step-00000008"]
    assert (folder / "latest").read_text().strip() == "step-00000008"
    assert find_latest(folder) == folder / "step-00000008"

    # incomplete dirs are never picked up; a stale or missing pointer falls back
    (folder / "step-00000010").mkdir()
    (folder / "step-00000010" / "model.safetensors").write_bytes(b"")
    (folder / ".step-00000012.tmp-1").mkdir()
    assert find_latest(folder) == folder / "step-00000008"
    (folder / "latest").write_text("step-00000002\n")  # pruned long ago
    assert find_latest(folder) == folder / "step-00000008"
    (folder / "latest").unlink()
    assert find_latest(folder) == folder / "step-00000008"
    assert find_latest(tmp_path / "nowhere") is None


def test_resume_with_another_config_names_the_fields(tmp_path) -> None:
    from groundup.runs import plan_run

    save_step_checkpoint(
        tmp_path / "checkpoints",
        5,
        nn.Linear(3, 1),
        None,
        {"step": 5, "config": {"seed": 0, "optim": {"lr": 0.1}}},
    )
    with pytest.raises(CheckpointError, match=r"fields differ: optim\.lr, seed"):
        plan_run(tmp_path, {"seed": 1, "optim": {"lr": 0.2}}, resume=True)
    # the folder it was found in, and max_steps, may change; nothing was written
    plan = plan_run(
        tmp_path, {"seed": 0, "optim": {"lr": 0.1}, "run_dir": "elsewhere"}, resume=True
    )
    assert plan.mode == "resume" and plan.step == 5 and not (tmp_path / "config.yaml").exists()


def test_resume_auto_continues_from_the_newest_complete_checkpoint(tmp_path) -> None:
    from groundup.config import load_config
    from groundup.jobs.train_tabular import TrainJobConfig, run_train

    path = train_config(tmp_path, "auto")
    overrides = ["resume=auto", "train.max_steps=6", "train.checkpoint_every=3"]
    cfg = load_config(TrainJobConfig, path, overrides)
    run = tmp_path / "auto"
    run_train(None, config=cfg, verbose=0)  # nothing to resume yet: starts
    first = losses(run)
    assert [s for s, _ in first] == list(range(1, 7))
    # lose the newest checkpoint (latest still names it): auto falls back to step 3
    for p in (run / "checkpoints" / "step-00000006").iterdir():
        p.unlink()
    (run / "checkpoints" / "step-00000006").rmdir()
    kept = (run / "checkpoints" / "step-00000003" / "state.json").stat().st_ino
    run_train(None, config=load_config(TrainJobConfig, path, overrides), verbose=0)
    assert losses(run) == first
    # resumed, not restarted: a fresh run would have rewritten step-3 (a new file)
    assert (run / "checkpoints" / "step-00000003" / "state.json").stat().st_ino == kept
    assert (run / "checkpoints" / "step-00000006" / "state.json").is_file()


def test_starting_a_run_over_moves_its_old_checkpoints_aside(tmp_path) -> None:
    """A re-run of the same config must not resume later from the old run's newer checkpoints."""
    from groundup.checkpoint import find_latest
    from groundup.jobs.train_tabular import TrainJobConfig
    from groundup.runs import Run, plan_run

    def prepare_run_dir(path, cfg):
        return Run.begin(plan_run(path, cfg)).path

    cfg = TrainJobConfig(run_dir=str(tmp_path / "run"), layers=[{"type": "Dense", "units": 2}])
    run = prepare_run_dir(cfg.run_dir, cfg)
    old = run / "checkpoints" / "step-00000800"
    old.mkdir(parents=True)
    (old / "model.safetensors").write_bytes(b"x")
    (old / "state.json").write_text("{}")
    prepare_run_dir(cfg.run_dir, cfg)  # the same config again: starts over
    assert find_latest(run / "checkpoints") is None
    assert (run / "checkpoints.previous" / "step-00000800" / "state.json").is_file()
