"""Loggers (TensorBoard, W&B, MLflow, CSV) read back with each library's own reader, and the
console: the plain line's rounding and the rich bar on a terminal."""

from __future__ import annotations

import csv
import importlib.machinery
import io
import json
import os
import pty
import select
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_pretrain import interrupt_at  # Ctrl-C at a chosen step

import groundup as gu
from groundup.cli import main
from groundup.errors import ConfigError, DependencyError
from groundup.train.console import format_line, short_number
from groundup.train.loggers import (
    MetricsCSV,
    TensorBoardLogger,
    build_loggers,
    check_loggers,
)
from groundup.train.tracker_loggers import WandbLogger, flatten_config

ROOT = Path(__file__).resolve().parents[1]


# tiny matmuls: threads only contend on a shared machine (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- helpers
def pretrain_config(folder: Path, name: str, loggers: list[str], **train) -> Path:
    corpus = folder / "corpus.txt"
    if not corpus.exists():
        words = ["the cat", "a dog", "sat on", "ran to", "the mat", "a tree", "the river"]
        rng = np.random.default_rng(0)
        lines = [" ".join(rng.choice(words, 3)) + "." for _ in range(200)]
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = {
        "run_dir": str(folder / name),
        "seed": 0,
        "data": {"source": str(corpus), "val_fraction": 0.1},
        "tokenizer": {"kind": "char"},
        "model": {"preset": "gpt2-tiny", "block_size": 16},
        "optim": {"name": "adamw", "lr": 3e-3, "schedule": "cosine", "warmup_steps": 3},
        "train": {
            "max_steps": 30,
            "batch_size": 4,
            "eval_every": 10,
            "eval_batches": 2,
            "log_every": 1,
            "device": "cpu",
            "loggers": loggers,
            **train,
        },
        "sample": {"prompt": "the", "max_new_tokens": 4},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def train_config(folder: Path, name: str, loggers: list[str]) -> Path:
    cfg = {
        "run_dir": str(folder / name),
        "seed": 0,
        "data": {"dataset": "digits", "test_size": 0.2, "val_size": 0.1},
        "layers": [
            {"type": "Dense", "units": 16, "activation": "relu"},
            {"type": "Dense", "units": 10, "activation": "softmax"},
        ],
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 2, "batch_size": 64, "log_every": 5, "device": "cpu"},
    }
    cfg["train"]["loggers"] = loggers
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def records(run_dir: Path, event: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one tag, as TensorBoard itself reads the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def expected(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows if key in r]


def interrupted_then_resumed(tmp_path: Path, monkeypatch, loggers: list[str]) -> Path:
    """A pretraining run stopped at step 13 (newest checkpoint: step 10), then resumed."""
    config = pretrain_config(tmp_path, "run", loggers, checkpoint_every=10)
    with monkeypatch.context() as m:
        interrupt_at(m, 13)
        assert main(["pretrain", str(config)]) == 130
    assert [r["step"] for r in records(tmp_path / "run", "train")][-1] == 13
    assert main(["pretrain", str(config), "--resume"]) == 0
    return tmp_path / "run"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ---------------------------------------------------------------- names and packages
def test_logger_names_are_checked_with_did_you_mean() -> None:
    assert check_loggers(["TensorBoard", "csv", "jsonl"]) == ["tensorboard", "csv", "jsonl"]
    with pytest.raises(
        ConfigError, match=r"unknown logger 'tensorbord'.*did you mean 'tensorboard'"
    ):
        check_loggers(["tensorbord"])
    with pytest.raises(ConfigError, match="twice"):
        check_loggers(["csv", "CSV"])
    with pytest.raises(ConfigError, match="needs a run directory"):
        build_loggers(["csv"], None)
    assert build_loggers(["jsonl"], "unused") == []  # metrics.jsonl is always written


def test_unknown_logger_is_one_line_before_any_folder(tmp_path, capsys) -> None:
    config = pretrain_config(tmp_path, "run", ["tensorbord"])
    assert main(["pretrain", str(config)]) == 2
    line = one_line_error(capsys)
    assert "unknown logger 'tensorbord'" in line and "did you mean 'tensorboard'" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["wandb", "mlflow", "tensorboard"])
def test_missing_package_is_one_line_naming_the_extra(name, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # `import name` fails, find_spec finds nothing
    config = train_config(tmp_path, "run", [name])
    assert main(["train", str(config)]) == 2
    line = one_line_error(capsys)
    assert f'pip install "groundup[{name}]"' in line
    assert not (tmp_path / "run").exists()
    with pytest.raises(DependencyError):
        check_loggers([name])


def test_loggers_do_nothing_on_other_ranks(tmp_path) -> None:
    fake = types.SimpleNamespace(rank=1, step=1, epoch=0, resumed_from=None)
    csv_logger = MetricsCSV(tmp_path)
    for cb in [*build_loggers(["tensorboard"], tmp_path, {"a": 1}), csv_logger]:
        cb.on_train_begin(fake)
        cb.on_log(fake, {"loss": 1.0, "lr": 0.1})
        cb.on_epoch_end(fake, 0, {"loss": 1.0})
        cb.on_train_end(fake)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- TensorBoard
def test_tensorboard_through_a_pretraining_job_matches_metrics_jsonl(tmp_path) -> None:
    config = pretrain_config(tmp_path, "run", ["tensorboard", "jsonl"])
    assert main(["pretrain", str(config)]) == 0
    run = tmp_path / "run"
    train, evals = records(run, "train"), records(run, "eval")
    tb = run / "tensorboard"
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "data_wait"):
        assert scalars(tb / "train", key) == expected(train, key), key
    if "mfu" in train[0]:
        assert scalars(tb / "train", "mfu") == expected(train, "mfu")
    assert [s for s, _ in scalars(tb / "validation", "loss")] == [10, 20, 30]
    assert scalars(tb / "validation", "loss") == expected(evals, "val_loss")
    assert scalars(tb / "validation", "perplexity") == expected(evals, "val_perplexity")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb / "train"))
    acc.Reload()
    assert acc.Tags()["tensors"] == ["config/text_summary"]  # the resolved config, as text
    assert not (run / "metrics.csv").exists()  # jsonl adds nothing: metrics.jsonl is there


def test_tensorboard_and_csv_resume_without_duplicate_steps(tmp_path, monkeypatch) -> None:
    run = interrupted_then_resumed(tmp_path, monkeypatch, ["tensorboard", "csv"])
    train = records(run, "train")
    assert [r["step"] for r in train] == list(range(1, 31))
    losses = scalars(run / "tensorboard" / "train", "loss")
    assert [s for s, _ in losses] == list(range(1, 31))  # steps 11-13 purged, written once
    assert losses == expected(train, "loss")
    assert scalars(run / "tensorboard" / "validation", "loss") == expected(
        records(run, "eval"), "val_loss"
    )
    # metrics.csv is metrics.jsonl's train/eval records as a table
    rows = list(csv.DictReader(open(run / "metrics.csv", encoding="utf-8")))
    table = [(r["event"], int(r["step"]), float(r["loss"] or r["val_loss"])) for r in rows]
    jsonl = [
        (r["event"], r["step"], r.get("loss", r.get("val_loss")))
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["event"] in ("train", "eval")
    ]
    assert table == [(e, s, pytest.approx(v)) for e, s, v in jsonl]


def test_a_restarted_run_replaces_its_tensorboard_points(tmp_path) -> None:
    config = pretrain_config(tmp_path, "run", ["tensorboard"], max_steps=6, eval_every=3)
    assert main(["pretrain", str(config)]) == 0
    assert main(["pretrain", str(config)]) == 0  # same config, no --resume: a restart
    losses = scalars(tmp_path / "run" / "tensorboard" / "train", "loss")
    assert losses == expected(records(tmp_path / "run", "train"), "loss")


def test_tensorboard_through_the_train_job_epoch_records(tmp_path) -> None:
    config = train_config(tmp_path, "run", ["tensorboard", "csv"])
    assert main(["train", str(config)]) == 0
    run = tmp_path / "run"
    epochs = records(run, "epoch")
    tb = run / "tensorboard"
    assert scalars(tb / "train", "epoch_loss") == expected(epochs, "loss")
    assert scalars(tb / "train", "epoch_accuracy") == expected(epochs, "accuracy")
    assert scalars(tb / "validation", "epoch_loss") == expected(epochs, "val_loss")
    assert scalars(tb / "validation", "epoch_accuracy") == expected(epochs, "val_accuracy")
    assert scalars(tb / "train", "loss") == expected(records(run, "train"), "loss")
    header = next(csv.reader(open(run / "metrics.csv", encoding="utf-8")))
    assert header[:3] == ["event", "step", "epoch"] and "val_accuracy" in header


def test_keras_style_tensorboard_callback(tmp_path) -> None:
    x, y, _ = gu.data.load_dataset("digits")
    x, y = x[:300] / 16, y[:300]
    torch.manual_seed(0)
    model = gu.Sequential(
        [gu.layers.Dense(16, activation="relu", input_shape=(64,)), gu.layers.Dense(10)]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    log_dir = tmp_path / "logs"
    tb = gu.callbacks.TensorBoard(log_dir=log_dir, histogram_freq=1, update_freq="batch")
    history = model.fit(
        x, y, epochs=2, batch_size=50, validation_split=0.2, callbacks=[tb], verbose=0
    )
    steps = history.step  # one entry per epoch: 5 steps each
    assert steps == [5, 10]
    for tag, key, where in (
        ("epoch_loss", "loss", "train"),
        ("epoch_accuracy", "accuracy", "train"),
        ("epoch_loss", "val_loss", "validation"),
        ("epoch_accuracy", "val_accuracy", "validation"),
    ):
        got = scalars(log_dir / where, tag)
        assert got == [(s, pytest.approx(v, rel=1e-6)) for s, v in zip(steps, history.history[key])]
    assert [s for s, _ in scalars(log_dir / "train", "loss")] == list(range(1, 11))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir / "train"))
    acc.Reload()
    assert len(acc.Tags()["histograms"]) == 4  # two Dense layers: kernel and bias


def test_keras_tensorboard_arguments() -> None:
    with pytest.raises(ConfigError, match="update_freq"):
        gu.callbacks.TensorBoard(update_freq="step")
    with pytest.warns(UserWarning, match="profile_batch"):
        gu.callbacks.TensorBoard(profile_batch=2)
    assert gu.callbacks.TensorBoard(write_graph=True).write_graph  # accepted, ignored


# ---------------------------------------------------------------- MLflow
def test_mlflow_file_store_resumes_the_same_run_without_duplicates(tmp_path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the logger opts in
    run = interrupted_then_resumed(tmp_path, monkeypatch, ["mlflow"])
    store = run / "mlruns"
    client = MlflowClient(store.resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "groundup"]
    (mlrun,) = client.search_runs([experiment.experiment_id])  # the resume continued it
    history = client.get_metric_history(mlrun.info.run_id, "loss")
    got = sorted((m.step, m.value) for m in history)
    assert got == expected(records(run, "train"), "loss")  # steps 11-13 once each
    evals = client.get_metric_history(mlrun.info.run_id, "val_loss")
    assert sorted((m.step, m.value) for m in evals) == expected(records(run, "eval"), "val_loss")
    assert mlrun.data.params["train.max_steps"] == "30"
    assert mlrun.info.status == "FINISHED"


def test_flatten_config_for_params() -> None:
    flat = flatten_config({"train": {"lr": 0.1, "loggers": ["csv"]}, "seed": 0, "x": {}})
    assert flat == {"train.lr": "0.1", "train.loggers": '["csv"]', "seed": "0", "x": "{}"}


# ---------------------------------------------------------------- W&B
class FakeRun:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def log(self, data, step):
        self.calls.append(("log", dict(data), step))

    def finish(self):
        self.calls.append(("finish",))


def fake_wandb(monkeypatch) -> list:
    calls: list = []
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.Settings = lambda **kw: kw
    module.init = lambda **kw: calls.append(("init", kw)) or FakeRun(calls)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_wandb_gets_the_records_offline_and_keeps_its_id(tmp_path, monkeypatch) -> None:
    calls = fake_wandb(monkeypatch)
    run = interrupted_then_resumed(tmp_path, monkeypatch, ["wandb"])
    inits = [c[1] for c in calls if c[0] == "init"]
    assert len(inits) == 2 and all(i["mode"] == "offline" and i["resume"] == "allow" for i in inits)
    assert inits[0]["id"] == inits[1]["id"]  # the resumed process continues the same run
    assert inits[0]["dir"] == str(run) and inits[0]["config"]["train"]["max_steps"] == 30
    resumed = calls[calls.index(("finish",)) + 1 :]  # what the resumed process logged
    logged = [(c[2], c[1]["loss"]) for c in resumed if c[0] == "log" and "loss" in c[1]]
    train = [r for r in records(run, "train") if r["step"] > 10]
    assert logged == [(r["step"], r["loss"]) for r in train]


def test_wandb_offline_run_folder(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(tmp_path, config={"seed": 3})
    trainer = gu.Trainer(
        torch.nn.Linear(3, 1), loss="mse", device="cpu", verbose=0, run_dir=tmp_path,
        callbacks=[logger], log_every=1,
    )  # fmt: skip
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    hooks = (sys.exit, sys.excepthook)
    trainer.fit(gu.TensorBatches(x, x.sum(1, keepdim=True), batch_size=8), epochs=2)
    assert (sys.exit, sys.excepthook) == hooks  # wandb's replacements do not outlive the run
    (folder,) = (tmp_path / "wandb").glob(f"offline-run-*-{logger.run_id}")
    # wandb's own service process writes the file; on a loaded machine it can still be
    # flushing when finish() returns, so wait for it (up to a minute) rather than race it
    deadline, data = time.monotonic() + 60, b""
    while time.monotonic() < deadline:
        path = folder / f"run-{logger.run_id}.wandb"
        data = path.read_bytes() if path.is_file() else b""
        if b"epoch_loss" in data and b"grad_norm" in data:
            break
        time.sleep(0.5)
    assert b"epoch_loss" in data and b"grad_norm" in data  # the history records are there


# ---------------------------------------------------------------- console
def test_plain_lines_round_each_figure() -> None:
    train = {
        "loss": 1.234567,
        "lr": 0.002,
        "grad_norm": 0.84,
        "skipped_steps": 2,
        "tokens_per_s": 6022.0729,
        "mfu": 0.2407,
        "data_wait": 0.031,
    }
    assert format_line("step 100/1000", train) == (
        "step 100/1000 - loss 1.2346 - lr 2.0e-03 - tok/s 6.02k - mfu 24.1% - grad 0.84"
        " - data 3% - skipped_steps 2"
    )
    assert format_line("step 200/1000", {"val_loss": 1.23454, "val_perplexity": 3.4367}) == (
        "step 200/1000 - val_loss 1.2345 - val_perplexity 3.4367"
    )
    epoch = {"loss": 0.5, "accuracy": 0.97777, "val_loss": 0.25, "val_accuracy": 0.9778}
    assert format_line("epoch 1/3", {"epoch": 0, "step": 7, **epoch}) == (
        "epoch 1/3 - loss 0.5000 - accuracy 0.9778 - val_loss 0.2500 - val_accuracy 0.9778"
    )
    assert format_line("step 3", {"samples_per_s": 950.2, "flag": True}) == "step 3 - samples/s 950"


@pytest.mark.parametrize(
    "value, text",
    [(6022.0729, "6.02k"), (60220.0, "60.2k"), (999.7, "1k"), (1.5e6, "1.5M"), (0.5, "0.5")],
)
def test_short_number(value, text) -> None:
    assert short_number(value) == text


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rich_bar_shows_lr_throughput_and_eta() -> None:
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    stream = Tty()
    trainer = gu.Trainer(
        torch.nn.Linear(3, 1), loss="mse", optimizer="sgd", lr=0.01, device="cpu", log_every=1,
        callbacks=[gu.callbacks.ProgressBar(verbose=1, stream=stream)],
    )  # fmt: skip
    trainer.fit(gu.TensorBatches(x, x.sum(1, keepdim=True), batch_size=16), epochs=2)
    out = stream.getvalue()
    assert "epoch 2/2" in out and "4/4" in out  # step/total of the epoch
    assert "lr 1.0e-02" in out and "samples/s " in out and "eta" in out
    assert "epoch 1/2 - loss " in out  # the epoch's line above the bar


def test_bar_on_a_pseudo_terminal(tmp_path) -> None:
    script = tmp_path / "fit.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch, groundup as gu
            torch.set_num_threads(1)
            x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
            trainer = gu.Trainer(torch.nn.Linear(3, 1), loss="mse", optimizer="sgd", lr=0.01,
                                 device="cpu", log_every=1)
            trainer.fit(gu.TensorBatches(x, x.sum(1, keepdim=True), batch_size=16), epochs=1)
            """
        ),
        encoding="utf-8",
    )
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=terminal, stderr=terminal, cwd=ROOT, env=env
    )
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(controller)
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert "lr 1.0e-02" in text and "samples/s" in text and "4/4" in text


def test_tensorboard_logger_rejects_bad_arguments(tmp_path) -> None:
    with pytest.raises(ConfigError, match="histogram_freq"):
        TensorBoardLogger(tmp_path, histogram_freq=-1)
    with pytest.raises(ConfigError, match="update_freq"):
        TensorBoardLogger(tmp_path, update_freq=0)
