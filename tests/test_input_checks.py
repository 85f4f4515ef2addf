"""Input that used to be accepted and then failed late or scored nonsense: each is now refused
(or converted) before any training work, with a typed error naming the problem and the fix.

- NumPy arrays and lists given to `gu.TensorBatches` (a float64 array crashed in `linear()`).
- A cross-entropy by name on a plain module: it returns logits, as in PyTorch (it was taken
  for probabilities); a Sequential with a softmax/sigmoid output keeps Keras' behaviour.
- Class metrics (accuracy, f1, ...) on regression targets or with a regression loss (a
  regression run printed `test_accuracy 1.0000`), also through `groundup train`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import groundup as gu
from groundup.cli import main
from groundup.errors import ConfigError, DataError
from groundup.train.losses import get_loss
from groundup.train.metrics import check_metrics_fit_loss, get_metric

CLASS_METRICS = ["accuracy", "top_k_accuracy", "precision", "recall", "f1"]


def _trainer(model: nn.Module, **kwargs) -> gu.Trainer:
    return gu.Trainer(model, optimizer="sgd", lr=0.1, device="cpu", verbose=0, **kwargs)


# --- 1. TensorBatches takes tensors, NumPy arrays and lists of numbers --------------------------


def test_numpy_arrays_become_float32_features_and_int64_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4))  # float64, as NumPy makes it
    y = rng.integers(0, 3, size=12).astype(np.int32)
    batches = gu.TensorBatches(x, y, np.ones(12, dtype=np.int64), batch_size=4, shuffle=False)
    xb, yb, wb = next(iter(batches))
    assert (xb.dtype, yb.dtype, wb.dtype) == (torch.float32, torch.int64, torch.float32)
    assert torch.equal(xb, torch.from_numpy(x[:4]).float())
    # the reported crash: a float64 array reached nn.Linear's float32 weights
    history = _trainer(nn.Linear(4, 3), loss="sparse_categorical_crossentropy").fit(batches)
    assert np.isfinite(history.history["loss"][-1])


def test_lists_and_bool_arrays_are_converted():
    batches = gu.TensorBatches([[0.5, 1], [2, 3]], [True, False], batch_size=2, shuffle=False)
    xb, yb = next(iter(batches))
    assert xb.dtype == torch.float32 and yb.dtype == torch.float32
    assert yb.tolist() == [1.0, 0.0]
    ids = gu.TensorBatches([[1, 2], [3, 4]], [[2, 3], [4, 5]], batch_size=2).tensors
    assert ids[0].dtype == torch.int64 and ids[1].dtype == torch.int64  # token ids stay ids


def test_tensors_are_used_as_given():
    x = torch.randn(6, 2, dtype=torch.float64)
    assert gu.TensorBatches(x, torch.zeros(6)).tensors[0] is x


@pytest.mark.parametrize(
    "x, fragment",
    [
        ("not data", "x must be a torch.Tensor, a NumPy array or a list of numbers, got str"),
        ({"a": [1, 2]}, "got dict"),
        (np.array(["a", "b"]), "x must hold numbers, got dtype <U1"),
        ([[1.0, 2.0], [3.0]], "ragged"),
        (np.array(3.0), "x is a single value"),
        (torch.tensor(3.0), "at least 1-D"),
    ],
)
def test_bad_x_is_a_data_error(x, fragment):
    with pytest.raises(DataError, match=fragment):
        gu.TensorBatches(x, batch_size=2)


def test_bad_y_and_sample_weight_are_data_errors():
    x = np.zeros((4, 2))
    with pytest.raises(DataError, match="y is a single value"):
        gu.TensorBatches(x, np.array(1))
    with pytest.raises(DataError, match="sample_weight must be a torch.Tensor.*got float"):
        gu.TensorBatches(x, np.zeros(4), 0.5)
    with pytest.raises(DataError, match="x has 4 samples but y has 3"):
        gu.TensorBatches(x, [0, 1, 2])


# --- 2. a cross-entropy by name takes logits on a plain module -------------------------------


def test_names_keep_keras_probabilities_without_a_model():
    for name in ("sparse_categorical_crossentropy", "categorical_crossentropy", "bce"):
        assert get_loss(name).from_logits is False


@pytest.mark.parametrize(
    "name, targets, reference",
    [
        ("sparse_categorical_crossentropy", torch.tensor([0, 2, 1, 2]), F.cross_entropy),
        (
            "categorical_crossentropy",
            F.one_hot(torch.tensor([0, 2, 1, 2]), 3).float(),
            F.cross_entropy,
        ),
        ("binary_crossentropy", torch.tensor([[1.0], [0.0], [1.0], [0.0]]), None),
    ],
)
def test_trainer_names_take_logits_like_pytorch(name, targets, reference):
    torch.manual_seed(0)
    out_features = 1 if targets.dim() == 2 and targets.shape[1] == 1 else 3
    model = nn.Linear(5, out_features)
    trainer = _trainer(model, loss=name)
    assert trainer.loss_fn.from_logits is True
    x = torch.randn(4, 5)
    loss, logits = trainer.compute_loss((x, targets))
    if reference is None:
        reference = F.binary_cross_entropy_with_logits
    assert torch.allclose(loss, reference(logits, targets))


def test_explicit_losses_and_arguments_keep_what_they_say():
    model = nn.Linear(5, 3)
    probs = gu.losses.SparseCategoricalCrossentropy(from_logits=False)
    assert _trainer(model, loss=probs).loss_fn is probs
    assert get_loss("bce", model=model, from_logits=False).from_logits is False
    assert get_loss("mse", model=model).name == "mean_squared_error"  # no from_logits to set


def _sequential(activation: str | None) -> gu.Sequential:
    return gu.Sequential(
        [
            gu.layers.Dense(8, activation="relu", input_shape=(5,)),
            gu.layers.Dense(3, activation=activation),
        ]
    )


def test_a_sequential_with_a_softmax_output_gets_probabilities():
    model = _sequential("softmax")
    trainer = _trainer(model, loss="sparse_categorical_crossentropy")  # its forward: softmax
    assert trainer.loss_fn.from_logits is False
    x, y = torch.randn(4, 5), torch.tensor([0, 2, 1, 2])
    loss, probs = trainer.compute_loss((x, y))
    assert torch.allclose(probs.sum(-1), torch.ones(4))
    assert torch.allclose(loss, F.nll_loss(probs.log(), y), atol=1e-6)


def test_sequential_compile_is_unchanged():
    model = _sequential("softmax")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", device="cpu")
    # trained on its logits (stable log-softmax), predicting probabilities
    assert model.trainer.loss_fn.from_logits is True
    assert model.trainer.output_transform is not None
    linear = _sequential(None)
    linear.compile(optimizer="adam", loss="sparse_categorical_crossentropy", device="cpu")
    assert linear.trainer.loss_fn.from_logits is False  # Keras' default, as before


# --- 3. class metrics refuse regression ---------------------------------------------------


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
@pytest.mark.parametrize("metric", CLASS_METRICS)
def test_regression_loss_with_a_class_metric_is_refused(loss, metric, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=f"metric '{metric}'.*use metrics mse, mae or r2"):
        _trainer(nn.Linear(3, 1), loss=loss, metrics=[metric], run_dir=run_dir)
    assert not run_dir.exists()


def test_check_metrics_fit_loss_allows_what_fits():
    check_metrics_fit_loss("mse", ["mse", "mae", "r2", lambda o, t: (o - t).abs()])
    check_metrics_fit_loss("sparse_categorical_crossentropy", CLASS_METRICS)
    check_metrics_fit_loss(lambda o, t: (o - t).square().mean(), ["accuracy"])  # unknown: allowed
    with pytest.raises(ConfigError, match="metric 'acc'.*loss 'mean_absolute_error'"):
        check_metrics_fit_loss(get_loss("mae"), [get_metric("acc")])


def test_sequential_compile_refuses_mse_with_accuracy():
    model = _sequential(None)
    with pytest.raises(ConfigError, match="metric 'accuracy'.*regression loss"):
        model.compile(optimizer="adam", loss="mse", metrics=["accuracy"], device="cpu")


@pytest.mark.parametrize("metric", CLASS_METRICS)
def test_class_metrics_refuse_fractional_targets(metric):
    m = get_metric(metric, **({"k": 1} if metric == "top_k_accuracy" else {}))
    outputs = torch.rand(4, 3) if metric == "top_k_accuracy" else torch.rand(4, 1)
    targets = torch.tensor([0.37, 1.5, 2.0, 0.0])
    with pytest.raises(DataError, match=f"metric '{metric}'.*fractions.*0.37.*mse, mae or r2"):
        m.update(outputs, targets)


def test_class_metrics_take_whole_float_labels_and_soft_one_hot():
    acc = get_metric("accuracy")
    acc.update(torch.tensor([[0.9], [0.2]]), torch.tensor([1.0, 0.0]))  # BCE targets
    acc.update(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([[0.3, 0.7], [0.6, 0.4]]))
    f1 = get_metric("f1")
    f1.update(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([[0.2, 0.8], [0.9, 0.1]]))
    assert acc.compute() == 1.0 and f1.compute() == 1.0


def test_fractional_labels_stop_fit_before_the_first_update():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _trainer(model, loss="bce", metrics=["accuracy"])
    x, y = torch.randn(8, 3), torch.rand(8)  # regression-like values given as labels
    with pytest.raises(DataError, match="metric 'accuracy'.*fractions"):
        trainer.fit(gu.TensorBatches(x, y, batch_size=4))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# --- 4. `groundup train` with a regression target and accuracy -------------------------------


@pytest.fixture
def regression_config(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=60), rng.normal(size=60)
    y = 0.37 * a - 1.3 * b + rng.normal(scale=0.1, size=60)
    rows = [f"{ai:.4f},{bi:.4f},{yi:.4f}" for ai, bi, yi in zip(a, b, y)]
    (tmp_path / "reg.csv").write_text("a,b,y\n" + "\n".join(rows) + "\n", encoding="utf-8")
    run_dir = tmp_path / "runs" / "reg"
    config = {
        "run_dir": str(run_dir),
        "data": {"path": str(tmp_path / "reg.csv"), "target": "y"},
        "layers": [
            {"type": "Dense", "units": 8, "activation": "relu"},
            {"type": "Dense", "units": 1},
        ],
        "loss": "mse",
        "metrics": ["accuracy"],
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu"},
    }
    path = tmp_path / "reg.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path, run_dir


def test_groundup_train_refuses_accuracy_on_a_regression_target(regression_config, capsys):
    path, run_dir = regression_config
    code = main(["train", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("error: metric 'accuracy'") and "use metrics mse, mae or r2" in err
    # refused before training: no history, checkpoints, model or results
    for name in ("history.csv", "checkpoints", "model", "results.json"):
        assert not (run_dir / name).exists()


def test_groundup_train_refusal_leaves_no_run_folder(regression_config):
    from groundup.jobs.train_tabular import run_train

    path, run_dir = regression_config
    with pytest.raises(ConfigError, match="metric 'accuracy'"):
        run_train(path, verbose=0)
    assert not run_dir.exists()


def test_binary_accuracy_of_a_logit_model_thresholds_the_probability() -> None:
    """A plain module trained with "bce" by name returns logits; accuracy must read them as
    sigmoid(logit) >= 0.5, i.e. logit >= 0 (not logit >= 0.5)."""
    import torch
    from torch import nn

    import groundup as gu

    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    x = torch.tensor([[0.25], [-0.25], [0.75], [-0.75]])  # logits 0.25: positive, under 0.5
    y = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    trainer = gu.Trainer(model, loss="bce", metrics=["accuracy"], device="cpu", verbose=0)
    logs = trainer.evaluate(gu.TensorBatches(x, y, batch_size=4, shuffle=False))
    assert logs["accuracy"] == 1.0
    assert torch.equal(trainer.predict(x), model(x).detach())  # predict: the model's outputs
