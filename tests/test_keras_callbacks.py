"""Keras's callbacks on the one Trainer: ReduceLROnPlateau, LearningRateScheduler,
TerminateOnNaN, LambdaCallback, TensorBoard, BackupAndRestore, Keras-signature callback
classes through `adapt_callbacks`, and the History that fit returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import groundup as gu
from groundup.errors import ConfigError, TrainingError
from groundup.keras.callbacks import Callback as KerasCallback
from groundup.keras.callbacks import KerasCallbackAdapter, adapt_callbacks, run_keras_hook
from groundup.train.run_log import TIMING_KEYS
from groundup.train.schedules import build_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- helpers
def _regression(n: int = 16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-1.0], [2.0]])


def _trainer(callbacks, **kw) -> gu.Trainer:
    torch.manual_seed(0)
    options = {"loss": "mse", "optimizer": "sgd", "lr": 0.1, "device": "cpu", "verbose": 0}
    return gu.Trainer(nn.Linear(3, 1), callbacks=callbacks, **{**options, **kw})


def _fit(trainer: gu.Trainer, epochs: int, **kw) -> gu.History:
    x, y = _regression()
    train = gu.TensorBatches(x, y, batch_size=4, shuffle=False)  # 4 steps an epoch
    return trainer.fit(train, gu.TensorBatches(x, y, batch_size=16), epochs=epochs, **kw)


def _classes(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # 3 classes


def _classifier(seed: int = 0, **compile_options) -> gu.Sequential:
    gu.set_seed(seed)
    model = gu.Sequential(
        [
            gu.layers.Dense(8, activation="relu", input_shape=(4,)),
            gu.layers.Dropout(0.2),
            gu.layers.Dense(3, activation="softmax"),
        ]
    )
    options = {"optimizer": "adam", "metrics": ["accuracy"], "device": "cpu"}
    model.compile(loss="sparse_categorical_crossentropy", **{**options, **compile_options})
    return model


class FlatVal(gu.callbacks.Callback):
    """A validation loss that never moves."""

    def on_eval_end(self, trainer, logs):
        logs["val_loss"] = 1.0


class LrAfterStep(gu.callbacks.Callback):
    """The lr the optimizer holds after each step (the one the next step trains with)."""

    def __init__(self):
        self.lrs: dict[int, float] = {}

    def on_step_end(self, trainer, step):
        self.lrs[step] = trainer.optimizer.param_groups[0]["lr"]


class CrashAt(gu.callbacks.Callback):
    """A fit killed at step `step` (before that step's checkpoints are saved)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, step):
        if step == self.step:
            raise RuntimeError(f"killed at step {step}")


def _messages(run_dir: Path) -> list[str]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r["text"] for r in map(json.loads, lines) if r["event"] == "message"]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


# ---------------------------------------------------------------- ReduceLROnPlateau
@pytest.mark.parametrize(
    ("options", "lrs", "final"),
    [
        # evaluations 0..5: best at 0; waits 1, 2 -> reduce after epoch 2; 1, 2 -> after epoch 4
        ({}, [0.1, 0.1, 0.1, 0.05, 0.05, 0.025], 0.025),
        # cooldown 2 holds the count for two evaluations; min_lr floors the second reduction
        ({"cooldown": 2, "min_lr": 0.03}, [0.1, 0.1, 0.1, 0.05, 0.05, 0.05], 0.03),
    ],
)
def test_reduce_lr_on_plateau_after_patience_of_a_flat_val_loss(
    tmp_path, options, lrs, final
) -> None:
    rlr = gu.callbacks.ReduceLROnPlateau(factor=0.5, patience=2, **options)
    trainer = _trainer([FlatVal(), rlr], run_dir=tmp_path)
    history = _fit(trainer, epochs=6)
    assert history.history["learning_rate"] == pytest.approx(lrs)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(final)
    logged = [m for m in _messages(tmp_path) if m.startswith("ReduceLROnPlateau")]
    assert len(logged) == 2 and "val_loss did not improve for 2 evaluations" in logged[0]


def test_reduce_lr_on_plateau_composes_with_the_schedule_and_resumes(tmp_path) -> None:
    spec = {"name": "cosine", "min_lr_ratio": 0.1}

    def run(run_dir, extra, **fit_options):
        probe = LrAfterStep()
        rlr = gu.callbacks.ReduceLROnPlateau(factor=0.5, patience=2)
        trainer = _trainer([FlatVal(), rlr, probe, *extra], schedule=spec, run_dir=run_dir)
        _fit(trainer, epochs=6, checkpoint_every=2, **fit_options)
        return trainer, probe.lrs

    trainer, lrs = run(tmp_path / "a", [])
    cosine = build_schedule(spec, 24)
    # reductions after the evaluations of steps 12 and 20; the schedule's shape goes on
    for step, lr in lrs.items():
        base = 0.1 if step <= 12 else 0.05 if step <= 20 else 0.025
        assert lr == pytest.approx(base * cosine.factor(step), rel=1e-12), step

    with pytest.raises(RuntimeError, match="killed at step 15"):
        run(tmp_path / "b", [CrashAt(15)])
    resumed, resumed_lrs = run(tmp_path / "c", [], resume_from=tmp_path / "b" / "checkpoints")
    assert min(resumed_lrs) == 15  # went on from the checkpoint of step 14
    assert resumed_lrs == {s: lr for s, lr in lrs.items() if s >= 15}
    assert torch.equal(resumed.model.weight, trainer.model.weight)


# ---------------------------------------------------------------- LearningRateScheduler
@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (lambda epoch, lr: lr if epoch < 2 else lr * 0.5, [0.1, 0.1, 0.05, 0.025]),
        (lambda epoch: 0.01 * (epoch + 1), [0.01, 0.02, 0.03, 0.04]),
    ],
)
def test_learning_rate_scheduler_sets_the_lr_of_each_epoch(schedule, expected) -> None:
    seen: list[float] = []

    class AtEpochBegin(gu.callbacks.Callback):
        def on_epoch_begin(self, trainer, epoch):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    probe = LrAfterStep()
    sched = gu.callbacks.LearningRateScheduler(schedule)
    history = _fit(_trainer([sched, AtEpochBegin(), probe]), epochs=4)
    assert seen == pytest.approx(expected)
    assert history.history["learning_rate"] == pytest.approx(expected)
    assert [probe.lrs[s] for s in (4, 8, 12, 16)] == pytest.approx(expected)


def test_learning_rate_scheduler_bad_schedule_is_one_line_before_training() -> None:
    trainer = _trainer([gu.callbacks.LearningRateScheduler(lambda epoch, lr: "fast")])
    with pytest.raises(ConfigError) as exc:
        _fit(trainer, epochs=2)
    assert "returned 'fast'" in _one_line(exc) and "a number >= 0" in str(exc.value)
    assert trainer.step == 0
    with pytest.raises(ConfigError, match="needs a function"):
        gu.callbacks.LearningRateScheduler(0.1)


# ---------------------------------------------------------------- TerminateOnNaN
class NaNAtCall(nn.Module):
    """A linear model whose `at`-th forward returns NaN."""

    def __init__(self, at: int):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.at, self.calls = at, 0

    def forward(self, x):
        self.calls += 1
        out = self.lin(x)
        return out * float("nan") if self.calls == self.at else out


def test_terminate_on_nan_stops_at_an_injected_nan() -> None:
    x, y = _regression()
    torch.manual_seed(0)
    weights: dict[int, torch.Tensor] = {}

    class Snap(gu.callbacks.Callback):
        def on_step_end(self, trainer, step):
            weights[step] = trainer.model.lin.weight.detach().clone()

    trainer = gu.Trainer(
        NaNAtCall(6), loss="mse", optimizer="sgd", lr=0.1, device="cpu", verbose=0,
        callbacks=[gu.callbacks.TerminateOnNaN(), Snap()],
    )  # fmt: skip
    history = trainer.fit(gu.TensorBatches(x, y, batch_size=4, shuffle=False), epochs=3)
    assert trainer.step == 6 and trainer.skipped_steps == 1
    assert history.epoch == [0, 1]  # the epoch cut short is recorded too
    assert torch.equal(trainer.model.lin.weight, weights[5])  # the NaN update never landed
    assert trainer.nan_policy == "stop"  # the trainer's own policy is back

    torch.manual_seed(0)
    plain = gu.Trainer(NaNAtCall(6), loss="mse", optimizer="sgd", device="cpu", verbose=0)
    with pytest.raises(TrainingError):  # without the callback the same NaN is an error
        plain.fit(gu.TensorBatches(x, y, batch_size=4, shuffle=False), epochs=3)


# ---------------------------------------------------------------- LambdaCallback
def test_lambda_callback_call_order_and_arguments() -> None:
    events: list[tuple] = []
    log = events.append
    cb = gu.callbacks.LambdaCallback(
        on_train_begin=lambda logs: log(("train_begin", dict(logs))),
        on_epoch_begin=lambda epoch, logs: log(("epoch_begin", epoch, dict(logs))),
        on_batch_begin=lambda batch, logs: log(("batch_begin", batch, dict(logs))),
        on_train_batch_end=lambda batch, logs: log(("batch_end", batch, dict(logs))),
        on_test_begin=lambda logs: log(("test_begin",)),
        on_test_end=lambda logs: log(("test_end", dict(logs))),
        on_epoch_end=lambda epoch, logs: log(("epoch_end", epoch, dict(logs))),
        on_train_end=lambda logs: log(("train_end", dict(logs))),
    )
    x, y = _regression(8)
    trainer = _trainer([cb])
    trainer.fit(
        gu.TensorBatches(x, y, batch_size=4, shuffle=False),
        gu.TensorBatches(x, y, batch_size=8),
        epochs=2,
    )
    names = [e[0] if e[0] in ("train_begin", "test_begin", "test_end", "train_end") else e[:2]
             for e in events]  # fmt: skip
    assert names == [
        "train_begin",
        ("epoch_begin", 0), ("batch_begin", 0), ("batch_end", 0), ("batch_begin", 1),
        ("batch_end", 1), "test_begin", "test_end", ("epoch_end", 0),
        ("epoch_begin", 1), ("batch_begin", 0), ("batch_end", 0), ("batch_begin", 1),
        ("batch_end", 1), "test_begin", "test_end", ("epoch_end", 1),
        "train_end",
    ]  # fmt: skip
    assert events[0][1] == {} and events[1][2] == {} and events[2][2] == {}
    batch_ends = [e[2] for e in events if e[0] == "batch_end"]
    epoch_ends = [e[2] for e in events if e[0] == "epoch_end"]
    test_ends = [e[1] for e in events if e[0] == "test_end"]
    assert all(set(logs) == {"loss"} for logs in batch_ends)
    assert [set(logs) for logs in epoch_ends] == [{"loss", "val_loss"}] * 2
    # the last batch's running mean is the epoch's loss; test logs drop the val_ prefix
    assert batch_ends[1]["loss"] == pytest.approx(epoch_ends[0]["loss"], rel=1e-9)
    assert test_ends[1] == {"loss": epoch_ends[1]["val_loss"]}
    assert events[-1][1] == epoch_ends[1]


def test_lambda_callback_bad_hooks_are_one_line_errors() -> None:
    with pytest.raises(ConfigError) as exc:
        gu.callbacks.LambdaCallback(on_epoch_ends=print)
    assert "no hook 'on_epoch_ends'" in _one_line(exc)
    with pytest.raises(ConfigError, match="on_epoch_end must be a function, got int"):
        gu.callbacks.LambdaCallback(on_epoch_end=3)
    with pytest.raises(ConfigError, match="twice"):
        gu.callbacks.LambdaCallback(on_batch_end=print, on_train_batch_end=print)


# ---------------------------------------------------------------- TensorBoard
def test_tensorboard_event_files_have_the_keras_tags(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = _classes()
    model = _classifier()
    log_dir = tmp_path / "logs"
    tb = gu.callbacks.TensorBoard(log_dir, update_freq="batch", histogram_freq=1)
    history = model.fit(
        x, y, epochs=2, batch_size=8, validation_split=0.2, verbose=0,
        callbacks=adapt_callbacks([tb], model),
    )  # fmt: skip

    def read(sub: str) -> EventAccumulator:
        acc = EventAccumulator(str(log_dir / sub))
        acc.Reload()
        return acc

    train, val = read("train"), read("validation")
    assert {"loss", "lr", "epoch_loss", "epoch_accuracy"} <= set(train.Tags()["scalars"])
    assert {"epoch_loss", "epoch_accuracy"} <= set(val.Tags()["scalars"])
    assert train.Tags()["histograms"]  # histogram_freq=1: weights at each epoch
    assert [e.step for e in train.Scalars("loss")] == list(range(1, 9))  # every step
    assert [e.value for e in train.Scalars("epoch_loss")] == pytest.approx(
        history.history["loss"], rel=1e-6
    )
    assert [e.value for e in val.Scalars("epoch_accuracy")] == pytest.approx(
        history.history["val_accuracy"], rel=1e-6
    )


# ---------------------------------------------------------------- BackupAndRestore
@pytest.mark.parametrize("save_freq", ["epoch", 3])
def test_backup_and_restore_resumes_a_killed_fit_to_the_same_weights(tmp_path, save_freq) -> None:
    """fp64, dropout, shuffling, Adam, a per-epoch lr: a fit killed at step 7 of 12 and run
    again ends with the weights (and epoch records) of a fit that was never killed."""
    x, y = _classes()
    backup = tmp_path / "backup"

    def fit(model, callbacks, **options):
        return model.fit(
            x, y, epochs=3, batch_size=8, validation_split=0.2, verbose=0,
            callbacks=adapt_callbacks(callbacks, model), **options,
        )  # fmt: skip

    def decay():
        return gu.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)

    reference = _classifier(0, precision="fp64", run_dir=tmp_path / "ref")
    fit(reference, [decay()])

    killed = _classifier(0, precision="fp64", run_dir=tmp_path / "run")
    with pytest.raises(RuntimeError, match="killed at step 7"):
        fit(killed, [decay(), CrashAt(7), gu.callbacks.BackupAndRestore(backup, save_freq)])
    assert (backup / "latest").is_file()  # a failed fit keeps its backup

    rerun = _classifier(1, precision="fp64", run_dir=tmp_path / "run")  # another init
    restore = gu.callbacks.BackupAndRestore(backup, save_freq)
    history = fit(rerun, [decay(), restore])
    assert restore.restored_from is not None
    assert restore.restored_from.name == (
        "step-00000004" if save_freq == "epoch" else "step-00000006"
    )
    assert history.epoch == [1, 2]
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(rerun.state_dict()[name], tensor, rtol=0, atol=1e-12)
    assert not backup.exists()  # deleted once the fit ended normally

    def epochs(run_dir: Path) -> list[dict]:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [r for r in map(json.loads, lines) if r["event"] == "epoch"]
        return [{k: v for k, v in r.items() if k not in (*TIMING_KEYS, "event")} for r in rows]

    resumed, uninterrupted = epochs(tmp_path / "run"), epochs(tmp_path / "ref")
    assert [r["epoch"] for r in resumed] == [0, 1, 2]  # metrics.jsonl cut back, then rewritten
    for got, want in zip(resumed, uninterrupted):
        assert got == pytest.approx(want, rel=1e-12)


def test_backup_and_restore_bad_options_are_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        gu.callbacks.BackupAndRestore("b", save_freq="batch")
    assert "save_freq must be 'epoch' or a number of steps" in _one_line(exc)
    with pytest.raises(ConfigError, match="needs a backup_dir"):
        gu.callbacks.BackupAndRestore("")


# ---------------------------------------------------------------- Keras-signature callbacks
class Recorder(KerasCallback):
    def __init__(self):
        super().__init__()
        self.seen: list[tuple] = []

    def on_train_begin(self, logs=None):
        self.seen.append(("train_begin", self.model, dict(self.params)))

    def on_batch_end(self, batch, logs=None):  # Keras 2's name for on_train_batch_end
        self.seen.append(("batch_end", batch, set(logs)))

    def on_test_end(self, logs=None):
        self.seen.append(("test_end", set(logs)))

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(("epoch_end", epoch, set(logs)))


def test_keras_callbacks_get_keras_logs_model_and_params() -> None:
    x, y = _classes()
    model = _classifier()
    rec = Recorder()
    history = model.fit(
        x, y, epochs=2, batch_size=8, validation_split=0.2, verbose=0,
        callbacks=adapt_callbacks([rec], model),
    )  # fmt: skip
    params = {"epochs": 2, "steps": 4, "verbose": 0}
    assert rec.seen[0] == ("train_begin", model, params)
    assert history.params == params
    assert [e[1] for e in rec.seen if e[0] == "batch_end"] == [0, 1, 2, 3] * 2
    assert all(e[2] == {"loss", "accuracy"} for e in rec.seen if e[0] == "batch_end")
    assert [e[1] for e in rec.seen if e[0] == "test_end"] == [{"loss", "accuracy"}] * 2
    epoch_keys = {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert [e[1:] for e in rec.seen if e[0] == "epoch_end"] == [(0, epoch_keys), (1, epoch_keys)]


@pytest.mark.parametrize(("hook", "expected_step"), [("epoch", 8), ("batch", 2)])
def test_model_stop_training_stops_fit(hook, expected_step) -> None:
    class Stop(KerasCallback):
        def on_epoch_end(self, epoch, logs=None):
            if hook == "epoch" and epoch == 1:
                self.model.stop_training = True

        def on_train_batch_end(self, batch, logs=None):
            if hook == "batch" and batch == 1:
                self.model.stop_training = True

    x, y = _classes()
    model = _classifier()
    history = model.fit(
        x, y, epochs=5, batch_size=8, validation_split=0.2, verbose=0,
        callbacks=adapt_callbacks([Stop()], model),
    )  # fmt: skip
    assert model.trainer.step == expected_step
    assert history.epoch == ([0, 1] if hook == "epoch" else [0])


def test_engine_callbacks_pass_through_and_work_in_model_fit(tmp_path) -> None:
    x, y = _classes()
    model = _classifier()
    engine = [
        gu.callbacks.EarlyStopping(patience=1),
        gu.callbacks.ModelCheckpoint(tmp_path / "ckpt"),
        gu.callbacks.CSVLogger(tmp_path / "history.csv"),
        gu.callbacks.ReduceLROnPlateau(patience=1),
        gu.callbacks.TerminateOnNaN(),
    ]
    rec = Recorder()
    adapted = adapt_callbacks([*engine, rec], model)
    assert adapted[:5] == engine and all(a is b for a, b in zip(adapted, engine))
    assert isinstance(adapted[5], KerasCallbackAdapter) and adapted[5].callback is rec
    assert adapt_callbacks(adapted, model) == adapted  # adapting twice changes nothing
    history = model.fit(
        x, y, epochs=3, batch_size=8, validation_split=0.2, verbose=0, callbacks=adapted
    )
    rows = (tmp_path / "history.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + len(history.epoch)
    assert (tmp_path / "ckpt" / "best" / "model.safetensors").is_file()
    assert "learning_rate" in history.history


def test_evaluate_and_predict_hooks_reach_keras_callbacks() -> None:
    seen: list[tuple] = []

    class Hooks(KerasCallback):
        def on_test_end(self, logs=None):
            seen.append(("test_end", self.model, logs))

        def on_predict_begin(self, logs=None):
            seen.append(("predict_begin", self.model, logs))

    model = _classifier()
    cbs = [Hooks(), gu.callbacks.CSVLogger("unused.csv")]
    run_keras_hook(cbs, model, "on_test_end", {"loss": 0.5})
    run_keras_hook(cbs, model, "on_predict_begin", None)
    assert seen == [("test_end", model, {"loss": 0.5}), ("predict_begin", model, {})]
    with pytest.raises(ConfigError, match="run_keras_hook takes one of"):
        run_keras_hook(cbs, model, "on_epoch_end", {})


# ---------------------------------------------------------------- History
def test_history_has_keras_structure() -> None:
    x, y = _classes()
    model = _classifier()
    history = model.fit(
        x[:32], y[:32], epochs=3, batch_size=8, validation_data=(x[32:], y[32:]), verbose=0
    )
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(
        len(v) == 3 and all(isinstance(f, float) for f in v) for v in history.history.values()
    )
    assert history.epoch == [0, 1, 2]
    final = model.evaluate(x[32:], y[32:], verbose=0, return_dict=True)
    assert history.history["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(final["accuracy"])


def test_history_plot_draws_train_and_val_together(tmp_path) -> None:
    history = gu.History()
    with pytest.raises(ConfigError, match="nothing to plot"):
        history.plot()
    for epoch, (loss, val) in enumerate([(1.0, 1.2), (0.6, 0.9), (0.4, 0.8)]):
        history.record(epoch, 4 * (epoch + 1), {"loss": loss, "val_loss": val, "accuracy": 0.5})
    fig = history.plot(path=tmp_path / "plots" / "history.png")
    assert (tmp_path / "plots" / "history.png").stat().st_size > 0
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["loss", "val_loss"]
    assert list(loss_ax.get_lines()[1].get_xdata()) == [1, 2, 3]  # epochs, 1-based
    assert list(loss_ax.get_lines()[1].get_ydata()) == [1.2, 0.9, 0.8]
    assert len(acc_ax.get_lines()) == 1
    assert len(history.plot(keys=["val_loss"]).axes) == 1
    with pytest.raises(ConfigError) as exc:
        history.plot(keys=["val_acc"])
    assert "no values for ['val_acc']" in _one_line(exc)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("callbacks", "message"),
    [
        ([object()], "callbacks[0] is a object, not a callback"),
        ([gu.callbacks.CSVLogger("a.csv"), "early"], "callbacks[1] is a str, not a callback"),
        (
            [gu.callbacks.EarlyStopping],
            "is the class EarlyStopping, not a callback; pass an instance",
        ),
        (Recorder(), "callbacks must be a list of callbacks, got Recorder"),
    ],
)
def test_bad_callbacks_are_one_line_config_errors(callbacks, message) -> None:
    with pytest.raises(ConfigError) as exc:
        adapt_callbacks(callbacks, None)
    assert message in _one_line(exc)


def test_bad_lr_callback_options_fail_before_training() -> None:
    with pytest.raises(ConfigError, match=r"factor must be in \(0, 1\), got 1.5"):
        gu.callbacks.ReduceLROnPlateau(factor=1.5)
    with pytest.raises(ConfigError, match="patience must be an integer >= 0"):
        gu.callbacks.ReduceLROnPlateau(patience=-1)
    x, y = _regression()
    trainer = _trainer([gu.callbacks.ReduceLROnPlateau()])
    with pytest.raises(ConfigError) as exc:  # val_loss without validation data
        trainer.fit(gu.TensorBatches(x, y, batch_size=4), epochs=2)
    assert "no validation data" in _one_line(exc) and trainer.step == 0
