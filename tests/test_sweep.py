"""Sweeps on Optuna: the search-space checks (one clear line each), a small sweep of the
digits MLP with pruning, the files it leaves (sweep.json, best_config.yaml, one normal run
folder per trial), and a sweep killed with SIGKILL mid-trial that a rerun finishes, resuming
the killed trial's folder from its checkpoint.

Trials are tiny (a 32-unit MLP, 2-3 epochs); pruning is made certain by queueing the trials'
values (a learning rate of 1e-6 against good ones: a gap no CPU's rounding closes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna")

from groundup.config import load_config  # noqa: E402
from groundup.errors import ConfigError  # noqa: E402
from groundup.jobs.sweep import run_sweep  # noqa: E402
from groundup.jobs.train_tabular import TrainJobConfig  # noqa: E402
from groundup.sweep.commands import config_data, detect_command  # noqa: E402
from groundup.sweep.runner import PruneOnValLoss  # noqa: E402
from groundup.sweep.space import load_space  # noqa: E402
from groundup.sweep.study import SweepLock, open_study  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DIGITS = CONFIGS / "digits-mlp.yaml"
SMALL = [
    "layers=[{type: Dense, units: 32, activation: relu}, "
    "{type: Dense, units: 10, activation: softmax}]",
    "early_stopping=null",
]


# tiny matmuls: threads only contend on a shared machine (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def write_space(folder: Path, text: str) -> Path:
    path = folder / "space.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def states(summary: dict) -> list[str]:
    return [t["state"] for t in summary["trials"]]


# ---------------------------------------------------------------- the space file
@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("optim.lrr: {log_uniform: [1.0e-4, 1.0e-2]}", "did you mean 'optim.lr'"),
        ("train.epoch: {int: [1, 3]}", "did you mean 'train.epochs'"),
        ("optim.lr: {log_uniform: [1.0e-2, 1.0e-4]}", "is empty: low must be below high"),
        ("optim.lr: {uniform: [0.1, 0.1]}", "is empty: low must be below high"),
        ("optim.lr: {log_uniform: [0, 1.0e-2]}", "a log range, which needs low > 0"),
        ("train.epochs: {int: [1.5, 3]}", "needs two integers"),
        ("train.batch_size: {uniform: [16, 64]}", "makes an invalid config"),
        ("train.batch_size: {choice: []}", "non-empty list"),
        ("train.batch_size: {choice: [16, 16]}", "twice"),
        ("optim.lr: {log_unifrom: [1.0e-4, 1.0e-2]}", "did you mean 'log_uniform'"),
        ("optim.lr: [1.0e-4, 1.0e-2]", "needs one distribution"),
        ("optim.lr: {uniform: [1.0e-4]}", r"needs \[low, high\]"),
        ("run_dir: {choice: [a, b]}", "cannot be searched"),
        ("optim: {lr: 1}", "is a section"),
        ("", "names no key to search"),
    ],
)
def test_bad_space_is_one_clear_line(tmp_path, space, message) -> None:
    path = write_space(tmp_path, space)
    data = config_data(DIGITS)
    with pytest.raises(ConfigError, match=message) as caught:
        load_space(path, data, "train")
    assert "\n" not in str(caught.value)  # one line


def test_bad_input_fails_before_any_folder(tmp_path) -> None:
    space = write_space(tmp_path, "optim.lrr: {log_uniform: [1.0e-4, 1.0e-2]}")
    run_dir = tmp_path / "d"
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        run_sweep(DIGITS, [f"run_dir={run_dir}"], space, trials=2)
    good = write_space(tmp_path, "optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}")
    with pytest.raises(ConfigError, match="data.val_size > 0"):
        run_sweep(DIGITS, [f"run_dir={run_dir}", "data.val_size=0", *SMALL], good, trials=2)
    with pytest.raises(ConfigError, match="--trials must be an integer >= 1"):
        run_sweep(DIGITS, [f"run_dir={run_dir}"], good, trials=0)
    with pytest.raises(ConfigError, match="did you mean 'median'"):
        run_sweep(DIGITS, [f"run_dir={run_dir}"], good, trials=2, pruner="medain")
    assert not (tmp_path / "d-sweep").exists() and not run_dir.exists()


def test_shipped_spaces_fit_their_configs() -> None:
    for config, space in [
        ("digits-mlp.yaml", "sweep-digits-mlp.yaml"),
        ("pretrain-shakespeare-char.yaml", "sweep-shakespeare-char.yaml"),
    ]:
        data = config_data(CONFIGS / config)
        params = load_space(CONFIGS / space, data, detect_command(data))
        assert len(params) >= 3


def test_command_is_told_from_the_config() -> None:
    assert detect_command(config_data(DIGITS)) == "train"
    assert detect_command(config_data(CONFIGS / "pretrain-pydocs.yaml")) == "pretrain"
    assert detect_command(config_data(CONFIGS / "finetune-sft-lora.yaml")) == "finetune"
    with pytest.raises(ConfigError, match="cannot tell which command"):
        detect_command({"run_dir": "x", "optim": {}})
    with pytest.raises(ConfigError, match="did you mean 'layers'"):
        detect_command({"layer": []})


# ---------------------------------------------------------------- pruning
class FakeTrial:
    def __init__(self, prune_after: int) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_after = prune_after

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return len(self.reports) >= self.prune_after


class FakeTrainer:
    def __init__(self) -> None:
        self.step, self.stop_training, self.messages = 0, False, []

    def log_message(self, text: str) -> None:
        self.messages.append(text)


def test_pruning_callback_reports_each_val_loss_and_stops() -> None:
    trial, trainer = FakeTrial(prune_after=2), FakeTrainer()
    callback = PruneOnValLoss(trial)
    for step, loss in [(10, 0.9), (20, 0.8)]:
        trainer.step = step
        callback.on_eval_end(trainer, {"val_loss": loss, "val_accuracy": 0.5})
    callback.on_eval_end(trainer, {"loss": 0.1})  # no val_loss: nothing reported
    assert trial.reports == [(0.9, 10), (0.8, 20)]
    assert trainer.stop_training and callback.pruned_at == 20
    assert callback.reported == {10: 0.9, 20: 0.8}
    assert "pruned by the sweep at step 20" in trainer.messages[0]


def test_sweep_prunes_and_writes_the_best_config(tmp_path, capsys) -> None:
    space = write_space(tmp_path, "optim.lr: {log_uniform: [1.0e-6, 1.0e-2]}\n")
    sweep_dir = tmp_path / "sweep"
    # three good learning rates first, then a hopeless one the median pruner must stop
    sweep_dir.mkdir()
    study = open_study(sweep_dir, "median", 0, 5)
    for lr in (3e-3, 5e-3, 8e-3, 1e-6):
        study.enqueue_trial({"optim.lr": lr})
    overrides = [f"run_dir={tmp_path / 'digits'}", "train.epochs=3", *SMALL]
    summary = run_sweep(DIGITS, overrides, space, trials=5, sweep_dir=sweep_dir, report=False)
    assert len(summary["trials"]) == 5
    assert states(summary)[:4] == ["complete", "complete", "complete", "pruned"]
    pruned = summary["trials"][3]
    assert pruned["values"]["optim.lr"] == 1e-6 and pruned["evaluations"] == 1
    assert "pruned by the sweep" in (Path(pruned["run_dir"]) / "metrics.jsonl").read_text()
    # each trial is a normal run folder, with its sampled value in its config
    for t in summary["trials"]:
        run = Path(t["run_dir"])
        assert (run / "results.json").is_file() and (run / "model").is_dir()
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["optim"]["lr"] == t["values"]["optim.lr"]
    best = summary["best"]
    complete = [t for t in summary["trials"] if t["state"] == "complete"]
    assert best["best_val_loss"] == min(t["best_val_loss"] for t in complete)
    cfg = load_config(TrainJobConfig, sweep_dir / "best_config.yaml")
    assert cfg.optim.lr == best["values"]["optim.lr"] and cfg.run_dir == str(tmp_path / "digits")
    assert json.loads((sweep_dir / "sweep.json").read_text()) == json.loads(json.dumps(summary))
    out = capsys.readouterr().out
    assert "best val_loss" in out and f"{best['number']}*" in out  # the comparison table
    # rerunning a finished sweep runs nothing more; another space is refused
    again = run_sweep(DIGITS, overrides, space, trials=5, sweep_dir=sweep_dir, report=False)
    assert len(again["trials"]) == 5
    other = write_space(tmp_path, "optim.lr: {log_uniform: [1.0e-5, 1.0e-2]}\n")
    with pytest.raises(ConfigError, match="holds another sweep .*space.optim.lr"):
        run_sweep(DIGITS, overrides, other, trials=5, sweep_dir=sweep_dir)


def test_a_running_sweep_holds_its_folder(tmp_path) -> None:
    (tmp_path / "sweep.lock").write_text("1\n")  # PID 1 is always alive
    with pytest.raises(ConfigError, match=r"another sweep \(PID 1\) is running"):
        with SweepLock(tmp_path):
            pass
    (tmp_path / "sweep.lock").write_text(f"{2**22 + 12345}\n")  # no such process: stale
    with SweepLock(tmp_path):
        assert (tmp_path / "sweep.lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / "sweep.lock").exists()


# ---------------------------------------------------------------- SIGKILL and resume
KILLED = """
import sys, time
from pathlib import Path
from groundup.runs.hooks import run_callbacks
from groundup.train.callbacks import Callback
from groundup.jobs.sweep import run_sweep

class HoldAfterFirstCheckpoint(Callback):
    # trial-002 stops after its first step checkpoint, so the kill lands mid-trial
    def on_save(self, trainer, path):
        if trainer.run_dir.name == "trial-002" and path.name.startswith("step-"):
            Path(sys.argv[1]).write_text(str(path))
            time.sleep(120)

with run_callbacks(HoldAfterFirstCheckpoint()):
    run_sweep(sys.argv[2], sys.argv[5:], sys.argv[3], trials=int(sys.argv[4]), report=False)
"""


def test_sigkill_mid_trial_then_rerun_finishes_the_sweep(tmp_path) -> None:
    trials = 4
    space = write_space(tmp_path, "optim.lr: {log_uniform: [1.0e-3, 1.0e-2]}\n")
    run_dir = tmp_path / "digits"
    overrides = [f"run_dir={run_dir}", "train.epochs=3", *SMALL]
    marker, script = tmp_path / "held", tmp_path / "killed.py"
    script.write_text(KILLED)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script), str(marker), str(DIGITS), str(space), str(trials)]
    proc = subprocess.Popen(
        [*cmd, *overrides], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 90
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.kill()
    output = proc.communicate()[0].decode(errors="replace")
    assert marker.exists(), output[-3000:]
    sweep_dir = tmp_path / "digits-sweep"
    assert (sweep_dir / "trial-002" / "checkpoints" / "latest").is_file()

    summary = run_sweep(DIGITS, overrides, space, trials=trials)
    finished = [t for t in summary["trials"] if t["state"] in ("complete", "pruned")]
    assert len(finished) == trials
    assert states(summary).count("interrupted") == 1
    folders = [Path(t["run_dir"]).name for t in finished]
    assert len(set(folders)) == trials and "trial-002" in folders  # no duplicate folders
    on_disk = sorted(p.name for p in sweep_dir.iterdir() if p.name.startswith("trial-"))
    assert on_disk == sorted(folders)
    resumed = next(t for t in finished if t["resume_of"] == 2)
    assert resumed["run_dir"].endswith("trial-002") and resumed["evaluations"] == 3
    # the resumed folder holds one run: each epoch recorded once
    rows = [json.loads(x) for x in (sweep_dir / "trial-002" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows if r["event"] == "epoch"] == [0, 1, 2]
    interrupted = next(t for t in summary["trials"] if t["state"] == "interrupted")
    assert interrupted["number"] == 2 and interrupted["values"] == resumed["values"]
    assert not (sweep_dir / "sweep.lock").exists()
    try:  # the report's comparison of the trials, where that package is installed
        import groundup.report.build  # noqa: F401
    except ImportError:
        return
    assert (sweep_dir / "report.html").is_file()
