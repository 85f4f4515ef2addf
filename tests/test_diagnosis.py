"""Run diagnosis: right on real tiny runs made to over-fit, under-fit and diverge, silent on a
healthy one; each detector checked on synthetic records, including old runs' sparse ones."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import groundup as gu
from groundup.config import to_dict
from groundup.errors import DataError, MissingFileError, TrainingError
from groundup.jobs.finetune import BaseConfig, FinetuneConfig, FinetuneDataConfig
from groundup.jobs.pretrain import PretrainConfig
from groundup.jobs.train_tabular import TrainJobConfig
from groundup.report import Finding, diagnose, diagnose_run, format_findings


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _classification(n_train: int, n_val: int, label_noise: float, seed: int = 0):
    """A linear rule on 10 features, with Gaussian noise added before thresholding."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_val, 10)).astype("float32")
    score = x @ rng.normal(size=10) + rng.normal(scale=label_noise, size=n_train + n_val)
    y = (score > 0).astype("int64")
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _fit(tmp_path, data, units, optimizer, epochs, batch_size) -> list[dict]:
    x, y, xv, yv = data
    torch.manual_seed(0)
    layers = [gu.layers.Dense(units[0], activation="relu", input_shape=(10,))]
    layers += [gu.layers.Dense(u, activation="relu") for u in units[1:]]
    model = gu.Sequential([*layers, gu.layers.Dense(2, activation="softmax")])
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        run_dir=tmp_path,
        log_every=5,
    )
    model.fit(x, y, batch_size=batch_size, epochs=epochs, validation_data=(xv, yv), verbose=0)
    return _records(tmp_path)


def _kinds(findings: list[Finding], severity: str | None = None) -> set[str]:
    return {f.kind for f in findings if severity is None or f.severity == severity}


# ---------------------------------------------------------------- real runs


def test_overfitting_run_names_the_turn_and_the_best_step(tmp_path):
    # a wide MLP on 80 noisy samples for 60 epochs: validation loss turns while training falls
    records = _fit(
        tmp_path, _classification(80, 400, 1.0), [256, 256], {"name": "adam", "lr": 1e-3}, 60, 20
    )
    findings = diagnose(records)
    over = [f for f in findings if f.kind == "overfitting"]
    assert len(over) == 1 and over[0].severity == "warning"
    val = [(r["val_loss"], r["step"]) for r in records if r["event"] == "epoch"]
    best_step = min(val)[1]
    assert over[0].step == best_step
    assert val[0][1] < best_step < val[-1][1]  # it improved first, then turned
    assert f"step {best_step:,}" in over[0].evidence and "checkpoints/best" in over[0].advice
    assert "optim.weight_decay" in over[0].keys
    assert not _kinds(findings) & {"underfitting", "divergence", "lr_too_high"}


def test_underfitting_run_is_still_improving(tmp_path):
    # plain SGD at lr 1e-3 for 10 short epochs: both losses crawl down, far from done
    records = _fit(
        tmp_path, _classification(600, 300, 0.0), [32], {"name": "sgd", "lr": 1e-3}, 10, 32
    )
    kinds = _kinds(diagnose(records))
    assert "underfitting" in kinds  # lr_too_low may come with it: it is the cause here
    assert not kinds & {"overfitting", "divergence", "nan_steps", "lr_too_high", "loss_spikes"}


def test_diverging_run_with_skipped_steps(tmp_path):
    # SGD at lr 1.0 on an MSE regression blows up; nan_policy skip drops the updates
    rng = np.random.default_rng(0)
    x = rng.normal(size=(900, 10)).astype("float32")
    y = (x @ rng.normal(size=10)).astype("float32")[:, None]
    torch.manual_seed(0)
    model = gu.Sequential(
        [gu.layers.Dense(32, activation="relu", input_shape=(10,)), gu.layers.Dense(1)]
    )
    model.compile(
        optimizer={"name": "sgd", "lr": 1.0},
        loss="mse",
        run_dir=tmp_path,
        log_every=5,
        nan_policy="skip",
    )
    model.fit(x[:600], y[:600], batch_size=32, epochs=5, validation_data=(x[600:], y[600:]))
    findings = diagnose(_records(tmp_path), config={"optim": {"lr": 1.0}})
    kinds = _kinds(findings)
    assert {"divergence", "nan_steps", "lr_too_high"} <= kinds
    assert not kinds & {"overfitting", "underfitting"}
    nan = next(f for f in findings if f.kind == "nan_steps")
    assert "optim.lr (now 1)" in nan.advice and "train.clip_grad_norm" in nan.keys


def test_diverging_run_stopped_by_nan_policy_stop(tmp_path):
    # a linear regression with SGD past its stability limit: the loss grows every step
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = x @ torch.randn(8, 1)
    trainer = gu.Trainer(
        torch.nn.Linear(8, 1), loss="mse", optimizer="sgd", lr=3.0, run_dir=tmp_path,
        log_every=1, verbose=0,
    )  # fmt: skip
    with pytest.raises(TrainingError):
        trainer.fit(gu.TensorBatches(x, y, batch_size=64), epochs=30)
    kinds = _kinds(diagnose(_records(tmp_path)))
    assert {"divergence", "lr_too_high"} <= kinds
    # the folder as a killed run leaves it: a last line cut short, no results.json
    (tmp_path / "config.yaml").write_text("optim: {lr: 3.0}\ntrain: {max_steps: 200}\n")
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"event": "train", "st')
    findings = diagnose_run(tmp_path)
    assert {"divergence", "lr_too_high"} <= _kinds(findings)
    assert any("optim.lr (now 3)" in f.advice for f in findings)


def test_diagnose_run_needs_a_run_folder(tmp_path):
    with pytest.raises(MissingFileError, match="metrics.jsonl"):
        diagnose_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "config.yaml").write_text("optim: [unclosed\n")
    with pytest.raises(DataError, match="config.yaml"):
        diagnose_run(tmp_path)


def test_healthy_run_is_silent(tmp_path):
    # a small model, plenty of data and a plateau reached well before the end
    records = _fit(
        tmp_path, _classification(3000, 2000, 0.5), [4], {"name": "adam", "lr": 3e-3}, 40, 64
    )
    findings = diagnose(records)
    assert _kinds(findings, "warning") == set(), format_findings(findings)
    assert format_findings([f for f in findings if f.severity == "warning"]) == ""


# ---------------------------------------------------------------- synthetic records


def _train(steps, losses, **extra) -> list[dict]:
    return [
        {"event": "train", "step": s, "epoch": 0, "loss": y, "lr": 1e-3, **extra}
        for s, y in zip(steps, losses)
    ]


def _evals(steps, losses, **extra) -> list[dict]:
    return [{"event": "eval", "step": s, "val_loss": y, **extra} for s, y in zip(steps, losses)]


def _decay(n: int, noise: float, seed: int = 0, floor: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [floor + 2.0 * math.exp(-i / (n / 5)) + rng.gauss(0, noise) for i in range(n)]


def test_spikes_are_listed_by_step():
    steps = list(range(10, 610, 10))
    losses = _decay(60, 0.01)
    clean = diagnose(_train(steps, losses))
    assert "loss_spikes" not in _kinds(clean)
    losses[25] += 0.8
    losses[44] += 0.6
    spikes = [f for f in diagnose(_train(steps, losses)) if f.kind == "loss_spikes"]
    assert len(spikes) == 1 and spikes[0].step == steps[25] and spikes[0].severity == "warning"
    assert f"{steps[25]:,}" in spikes[0].evidence and f"{steps[44]:,}" in spikes[0].evidence
    assert "divergence" not in _kinds(diagnose(_train(steps, losses)))
    losses[44] -= 0.6  # one spike the run recovered from at once: noted, not a warning
    spikes = [f for f in diagnose(_train(steps, losses)) if f.kind == "loss_spikes"]
    assert len(spikes) == 1 and spikes[0].severity == "info"


def test_noisy_plateau_is_not_overfitting():
    # validation noise around a flat level: its minimum is luck, not a turn
    rng = random.Random(1)
    steps = list(range(100, 2100, 100))
    val = [1.0 + rng.gauss(0, 0.02) for _ in steps]
    train = [1.2 - 0.01 * i for i in range(len(steps))]
    kinds = _kinds(diagnose(_train(steps, train) + _evals(steps, val)))
    assert "overfitting" not in kinds and "underfitting" not in kinds


def test_overfitting_from_sparse_old_records_and_early_stopping():
    # an old run's records: no grad_norm, time_s, tokens, val_items, data_wait
    steps = list(range(100, 1300, 100))
    val = [2.0, 1.5, 1.2, 1.05, 1.0, 1.02, 1.08, 1.15, 1.22, 1.3, 1.37, 1.45]
    train = [2.0 - 0.15 * i for i in range(12)]
    records = _train(steps, train) + _evals(steps, val)
    over = [f for f in diagnose(records) if f.kind == "overfitting"]
    assert len(over) == 1 and over[0].step == 500 and over[0].severity == "warning"
    stopped = records + [{"event": "message", "step": 1200, "text": "early stopping: ..."}]
    over = [f for f in diagnose(stopped) if f.kind == "overfitting"]
    assert over[0].severity == "info"


def test_data_bound_from_data_wait():
    steps = list(range(10, 110, 10))
    losses = _decay(10, 0.0)
    assert "data_bound" in _kinds(diagnose(_train(steps, losses, data_wait=0.55)))
    assert "data_bound" not in _kinds(diagnose(_train(steps, losses, data_wait=0.05)))
    assert "data_bound" not in _kinds(diagnose(_train(steps, losses)))  # old run: no key


def test_small_validation_from_val_items_and_from_jitter():
    steps = list(range(100, 900, 100))
    train = _decay(8, 0.0)
    val = [0.9, 0.7, 0.6, 0.55, 0.53, 0.52, 0.52, 0.51]
    accs = [0.70, 0.80, 0.84, 0.86, 0.86, 0.87, 0.86, 0.87]

    def records(items: int) -> list[dict]:
        evals = [
            {"event": "eval", "step": s, "val_loss": v, "val_accuracy": a, "val_items": items}
            for s, v, a in zip(steps, val, accs)
        ]
        return _train(steps, train) + evals

    small = [f for f in diagnose(records(90)) if f.kind == "small_validation"]
    assert len(small) == 1 and "90" in small[0].title
    assert "small_validation" not in _kinds(diagnose(records(100_000)))
    # an old run without val_items: successive val losses zigzag far more than they trend
    zigzag = [0.6 + (0.05 if i % 2 else -0.05) for i in range(12)]
    long_steps = list(range(100, 1300, 100))
    jitter = diagnose(_train(long_steps, _decay(12, 0.0)) + _evals(long_steps, zigzag))
    assert "small_validation" in _kinds(jitter)


def test_lr_finder_against_optim_lr():
    steps = list(range(10, 110, 10))
    records = _train(steps, _decay(10, 0.0))
    lr_find = {"lrs": [1e-5, 1e-3, 1e-1], "losses": [2.0, 1.0, 3.0], "suggestion": 1e-2}
    low = diagnose(records, config={"optim": {"lr": 1e-4}}, lr_find=lr_find)
    assert "lr_too_low" in _kinds(low)
    high = diagnose(records, config={"optim": {"lr": 1.0}}, lr_find=lr_find)
    assert "lr_too_high" in _kinds(high)
    fine = diagnose(records, config={"optim": {"lr": 5e-3}}, lr_find=lr_find)
    assert not _kinds(fine) & {"lr_too_low", "lr_too_high"}


def test_flat_training_loss_is_lr_too_low():
    steps = list(range(10, 210, 10))
    flat = [2.3026 - 0.0001 * i for i in range(20)]
    assert "lr_too_low" in _kinds(diagnose(_train(steps, flat)))


def test_rollback_messages_count_as_nan_steps():
    steps = list(range(10, 210, 10))
    records = _train(steps, _decay(20, 0.0)) + [
        {"event": "message", "step": 150, "text": "non-finite loss nan at step 150: rolled back"}
    ]
    nan = [f for f in diagnose(records) if f.kind == "nan_steps"]
    assert len(nan) == 1 and nan[0].step == 150


@pytest.mark.parametrize(
    "records",
    [
        [],
        [{"event": "train", "step": 1, "loss": 2.3}],
        [{"event": "eval", "step": 5, "val_loss": 1.0, "val_items": 10}],
        [{"event": "message", "text": "no step"}, {"event": "sample", "step": 3, "text": "hi"}],
        [{"event": "train", "step": 1, "loss": "oops"}, {"event": "epoch", "step": 2}],
    ],
)
def test_too_little_evidence_says_nothing(records):
    assert diagnose(records) == []
    assert format_findings(diagnose(records)) == ""


def test_advice_names_keys_that_exist_for_each_command():
    # the same over-fitting curves, read with each command's real default config
    steps = list(range(100, 1300, 100))
    val = [2.0, 1.5, 1.2, 1.05, 1.0, 1.02, 1.08, 1.15, 1.22, 1.3, 1.37, 1.45]
    records = _train(steps, [2.0 - 0.15 * i for i in range(12)]) + _evals(steps, val)
    configs = {
        "train": to_dict(TrainJobConfig(layers=[{"type": "Dense", "units": 2}])),
        "pretrain": to_dict(PretrainConfig()),
        "finetune": to_dict(
            FinetuneConfig(
                method="lora",
                base=BaseConfig(path="runs/base"),
                data=FinetuneDataConfig(builtin="stdlib-qa"),
            )
        ),
    }
    expected = {"train": "layers", "pretrain": "model.dropout", "finetune": "lora.dropout"}
    for command, config in configs.items():
        over = next(f for f in diagnose(records, config=config) if f.kind == "overfitting")
        assert expected[command] in over.keys
        for key in over.keys:
            if key.startswith("model."):  # a pretrain model is a preset plus overrides
                continue
            node = config
            for part in key.split("."):
                assert part in node, f"{command}: {key} is not a config key"
                node = node[part]
        assert "(now " in over.advice


def test_format_findings_block():
    finding = Finding(
        kind="overfitting",
        title="over-fits from step 1,200",
        evidence="val_loss rose by 0.3.",
        advice="raise optim.weight_decay (now 0).",
        keys=("optim.weight_decay",),
        step=1200,
    )
    block = format_findings([finding])
    assert block.splitlines()[0] == "diagnosis: 1 finding"
    assert "over-fits from step 1,200" in block and "fix: raise optim.weight_decay" in block
