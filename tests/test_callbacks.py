"""Callbacks: early stopping, checkpoints, LR monitor, CSV logger, progress output, custom hooks."""

from __future__ import annotations

import csv
import io

import pytest
import torch
from torch import nn

import groundup as gu
from groundup.errors import ConfigError


def _data(n: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-1.0], [2.0]])
    return x, y


class ScriptedVal(gu.callbacks.Callback):
    """Overwrites val_loss with a scripted sequence so early stopping is deterministic."""

    def __init__(self, values):
        self.values = list(values)

    def on_eval_end(self, trainer, logs):
        logs["val_loss"] = self.values.pop(0)


def _trainer(callbacks, **kw):
    torch.manual_seed(0)
    return gu.Trainer(
        nn.Linear(3, 1),
        loss="mse",
        optimizer="sgd",
        device="cpu",
        verbose=0,
        callbacks=callbacks,
        **kw,
    )


def test_early_stopping_patience_and_restore_best_weights() -> None:
    x, y = _data()
    snapshots = []

    class Snap(gu.callbacks.Callback):
        def on_eval_end(self, trainer, logs):
            snapshots.append(trainer.model.weight.detach().clone())

    es = gu.callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    # best at the 2nd evaluation, then two evaluations without improvement -> stop after 4
    trainer = _trainer([ScriptedVal([1.0, 0.5, 0.6, 0.7, 0.1, 0.1]), Snap(), es])
    history = trainer.fit(
        gu.TensorBatches(x, y, batch_size=16), gu.TensorBatches(x, y, batch_size=64), epochs=6
    )
    assert len(history.epoch) == 4
    assert es.stopped_epoch == 3
    assert torch.equal(trainer.model.weight, snapshots[1])


def test_early_stopping_min_delta_and_max_mode() -> None:
    es = gu.callbacks.EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.05)
    assert es.tracker.mode == "max"
    x, y = _data()
    trainer = _trainer([es])

    class Fake(gu.callbacks.Callback):
        values = [0.5, 0.52, 0.9]

        def on_eval_end(self, trainer, logs):
            logs["val_accuracy"] = self.values.pop(0)

    trainer.user_callbacks = [Fake(), es]
    history = trainer.fit(
        gu.TensorBatches(x, y, batch_size=16), gu.TensorBatches(x, y, batch_size=64), epochs=3
    )
    assert len(history.epoch) == 2  # 0.52 is not an improvement of 0.05


def test_early_stopping_without_validation_names_the_fix() -> None:
    x, y = _data()
    trainer = _trainer([gu.callbacks.EarlyStopping(monitor="val_loss")])
    with pytest.raises(ConfigError, match="no validation data.*validation_split"):
        trainer.fit(gu.TensorBatches(x, y, batch_size=16), epochs=1)


def test_early_stopping_on_training_loss() -> None:
    x, y = _data()
    es = gu.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
    trainer = _trainer([es])
    history = trainer.fit(gu.TensorBatches(x, y, batch_size=16), epochs=5)
    assert len(history.epoch) == 2  # first epoch sets the best, the second cannot improve by 1e9


def test_model_checkpoint_best_and_last(tmp_path) -> None:
    x, y = _data()
    ckpt = gu.callbacks.ModelCheckpoint(tmp_path / "ck", monitor="val_loss")
    saved = []

    class OnSave(gu.callbacks.Callback):
        def on_save(self, trainer, path):
            saved.append(path.name)

    trainer = _trainer([ScriptedVal([1.0, 0.4, 0.9]), ckpt, OnSave()])
    trainer.fit(
        gu.TensorBatches(x, y, batch_size=16), gu.TensorBatches(x, y, batch_size=64), epochs=3
    )
    assert (tmp_path / "ck" / "best" / "model.safetensors").is_file()
    latest = gu.checkpoint.find_latest(tmp_path / "ck")
    assert latest == tmp_path / "ck" / "step-00000012"
    assert (latest / "state.json").is_file()
    assert (tmp_path / "ck" / "latest").read_text().strip() == "step-00000012"
    assert saved == ["best", "step-00000004", "best", "step-00000008", "step-00000012"]
    # best holds the weights after epoch 2 (step 8): load them into a fresh model
    fresh = nn.Linear(3, 1)
    state = gu.checkpoint.load_checkpoint(tmp_path / "ck" / "best", fresh)
    assert state["step"] == 8


def test_learning_rate_monitor_and_csv_logger(tmp_path) -> None:
    x, y = _data()
    lrm = gu.callbacks.LearningRateMonitor()
    logger = gu.callbacks.CSVLogger(tmp_path / "log.csv")
    trainer = _trainer(
        [lrm, logger], lr=0.1, schedule={"name": "step", "step_size": 4, "gamma": 0.5}
    )
    trainer.fit(gu.TensorBatches(x, y, batch_size=16), epochs=3)
    assert lrm.values == pytest.approx([0.05, 0.025, 0.0125])
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert float(rows[1]["lr"]) == pytest.approx(0.025)
    assert {"loss", "step"} <= set(rows[0])


def test_progress_bar_plain_lines_when_not_a_terminal() -> None:
    x, y = _data()
    stream = io.StringIO()
    trainer = _trainer([gu.callbacks.ProgressBar(verbose=1, stream=stream)])
    trainer.fit(
        gu.TensorBatches(x, y, batch_size=16), gu.TensorBatches(x, y, batch_size=64), epochs=2
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2 - loss ") and "val_loss" in lines[0]


def test_progress_bar_rich_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self):
            return True

    x, y = _data()
    stream = Tty()
    trainer = _trainer([gu.callbacks.ProgressBar(verbose=1, stream=stream)])
    trainer.fit(gu.TensorBatches(x, y, batch_size=16), epochs=1)
    assert "epoch 1/1" in stream.getvalue()


def test_custom_callback_hook_order() -> None:
    calls = []

    class Recorder(gu.callbacks.Callback):
        def on_train_begin(self, trainer):
            calls.append("train_begin")

        def on_epoch_begin(self, trainer, epoch):
            calls.append(f"epoch_begin {epoch}")

        def on_step_end(self, trainer, step):
            calls.append(f"step {step}")

        def on_eval_end(self, trainer, logs):
            calls.append("eval")

        def on_epoch_end(self, trainer, epoch, logs):
            calls.append(f"epoch_end {epoch}")

        def on_train_end(self, trainer):
            calls.append("train_end")

    x, y = _data(32)
    trainer = _trainer([Recorder()])
    trainer.fit(
        gu.TensorBatches(x, y, batch_size=16), gu.TensorBatches(x, y, batch_size=32), epochs=2
    )
    assert calls == [
        "train_begin",
        "epoch_begin 0",
        "step 1",
        "step 2",
        "eval",
        "epoch_end 0",
        "epoch_begin 1",
        "step 3",
        "step 4",
        "eval",
        "epoch_end 1",
        "train_end",
    ]


def test_callbacks_must_be_callback_instances() -> None:
    x, y = _data()
    trainer = _trainer([object()])
    with pytest.raises(ConfigError, match="Callback"):
        trainer.fit(gu.TensorBatches(x, y, batch_size=16), epochs=1)
