"""The Keras-style facade: the seed example, stable cross-entropy, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import groundup as gu
from groundup.errors import ConfigError, DataError, ShapeError


@pytest.fixture(scope="module")
def digits():
    x, y, _ = gu.data.load_dataset("digits")
    train_idx, _, test_idx = gu.data.split_indices(len(x), y, test_size=0.2, stratify=True, seed=0)
    x = x / 16.0
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def seed_model(width: int = 64) -> gu.Sequential:
    return gu.Sequential(
        [
            gu.layers.Dense(128, activation="relu", input_shape=(width,)),
            gu.layers.Dense(64, activation="relu"),
            gu.layers.Dense(10, activation="softmax"),
        ]
    )


def test_seed_example_reaches_95_percent_on_digits(digits) -> None:
    x_train, y_train, x_test, y_test = digits
    gu.set_seed(0)
    model = seed_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(
        x_train,
        y_train,
        epochs=10,
        batch_size=32,
        validation_split=0.1,
        verbose=0,
        callbacks=[gu.callbacks.EarlyStopping(patience=3, restore_best_weights=True)],
    )
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert accuracy >= 0.95
    assert history.history["val_accuracy"][-1] > 0.9
    probs = model.predict(x_test[:5])
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_softmax_output_trains_on_logits_stably() -> None:
    """A softmax head with huge logits: log(softmax) would give inf, log-softmax does not."""
    model = gu.Sequential([gu.layers.Dense(3, activation="softmax", input_shape=(2,))])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", device="cpu")
    with torch.no_grad():
        model.layers[0].kernel.copy_(torch.tensor([[1000.0, -1000.0, 0.0], [0.0, 0.0, 0.0]]))
    x = np.array([[1.0, 0.0]], dtype=np.float32)
    y = np.array([1])
    loss = model.evaluate(x, y, verbose=0)
    assert np.isfinite(loss)
    assert loss == pytest.approx(2000.0, rel=1e-4)  # -log_softmax(logits)[1] = 1000 - (-1000)
    assert model.trainer.loss_fn.from_logits


def test_binary_sigmoid_head_and_class_weight() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.8).astype(np.float32)  # imbalanced
    gu.set_seed(0)
    model = gu.Sequential([gu.layers.Dense(1, activation="sigmoid", input_shape=(4,))])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"], lr=0.05)
    model.fit(x, y, epochs=20, verbose=0, class_weight={0: 1.0, 1: 3.0})
    out = model.predict(x)
    assert out.min() >= 0 and out.max() <= 1
    assert model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"] > 0.85


def test_class_weight_changes_the_loss() -> None:
    x = np.eye(4, dtype=np.float32)
    y = np.array([0, 1, 1, 1])
    gu.set_seed(0)
    model = gu.Sequential([gu.layers.Dense(2, activation="softmax", input_shape=(4,))])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", device="cpu")
    gu.set_seed(1)
    weighted = gu.Sequential([gu.layers.Dense(2, activation="softmax", input_shape=(4,))])
    weighted.load_state_dict(model.state_dict())
    weighted.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", device="cpu")
    h1 = model.fit(x, y, epochs=1, batch_size=4, verbose=0, shuffle=False)
    h2 = weighted.fit(
        x, y, epochs=1, batch_size=4, verbose=0, shuffle=False, class_weight={0: 10.0, 1: 1.0}
    )
    assert h1.history["loss"][0] != pytest.approx(h2.history["loss"][0])


def test_lazy_build_from_first_batch_and_summary() -> None:
    model = gu.Sequential([gu.layers.Dense(5, activation="relu"), gu.layers.Dense(2)])
    assert not model.built
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 7), np.float32), np.zeros((8, 2), np.float32), verbose=0)
    assert model.built and model.input_shape == (7,)
    text = model.summary(print_fn=None)
    assert "Total params: 52" in text  # 7*5+5 + 5*2+2
    assert "(None, 5)" in text


def test_save_and_load_round_trip(tmp_path, digits) -> None:
    x_train, y_train, x_test, _ = digits
    gu.set_seed(0)
    model = seed_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train[:200], y_train[:200], epochs=1, verbose=0)
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    loaded = gu.load_model(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict(x_test), model.predict(x_test), rtol=1e-6)
    assert loaded.trainer is not None  # re-compiled from the saved names


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="architecture.json"):
        gu.load_model(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "architecture.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        gu.load_model(tmp_path / "bad")


def test_bad_input_messages() -> None:
    model = seed_model(width=4)
    with pytest.raises(ConfigError, match="before fit"):
        model.fit(np.ones((4, 4)), np.zeros(4))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(DataError, match="4 .*3|3 .*4"):
        model.fit(np.ones((4, 4)), np.zeros(3))
    bad = np.ones((4, 4))
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        model.fit(bad, np.zeros(4))
    with pytest.raises(ShapeError, match=r"\(4,\).*\(5,\)"):
        model.fit(np.ones((4, 5)), np.zeros(4))
    with pytest.raises(ConfigError, match="unknown loss 'sparse_crossentropy'.*valid names"):
        model.compile(optimizer="adam", loss="sparse_crossentropy")
    with pytest.raises(ConfigError, match="unknown metric 'acuracy'.*did you mean"):
        model.compile(optimizer="adam", loss="mse", metrics=["acuracy"])
    with pytest.raises(ConfigError, match="unknown optimizer 'adamx'.*valid names"):
        model.compile(optimizer="adamx", loss="mse")  # caught at compile, before any data
    with pytest.raises(ConfigError, match="lr"):
        model.compile(optimizer="adam", loss="mse", lr=-1.0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ConfigError, match="validation_split"):
        model.fit(np.ones((4, 4)), np.zeros(4), validation_split=1.5)
    with pytest.raises(ConfigError, match="add layers"):
        gu.Sequential().compile(optimizer="adam", loss="mse")
    with pytest.raises(ConfigError, match="gu.layers"):
        gu.Sequential([torch.nn.Linear(2, 2)])


def test_conv_model_on_digit_images() -> None:
    x, y, _ = gu.data.load_dataset("digits", as_images=True)
    x = x[:256] / 16.0
    y = y[:256]
    gu.set_seed(0)
    model = gu.Sequential(
        [
            gu.layers.Conv2D(8, 3, activation="relu", padding="same", input_shape=(8, 8, 1)),
            gu.layers.MaxPool2D(2),
            gu.layers.Flatten(),
            gu.layers.Dropout(0.1),
            gu.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=20, verbose=0)
    assert history.history["accuracy"][-1] > 0.8


def test_fit_twice_continues_training() -> None:
    x = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    model = gu.Sequential([gu.layers.Dense(1, input_shape=(3,))])
    model.compile(optimizer="adam", loss="mse", lr=0.05)
    h1 = model.fit(x, y, epochs=3, verbose=0)
    h2 = model.fit(x, y, epochs=3, verbose=0)
    assert len(h2.history["loss"]) == 3
    assert h2.history["loss"][-1] < h1.history["loss"][0]


def test_keras_style_input_and_build() -> None:
    model = gu.Sequential([gu.Input(shape=(4,)), gu.layers.Dense(3)])
    assert model.built and model.input_shape == (4,) and len(model.layers) == 1
    assert model.count_params() == 15
    lazy = gu.Sequential([gu.layers.Dense(3), gu.layers.BatchNormalization()])
    lazy.build((None, 4))  # Keras' shape with its batch axis
    assert lazy.input_shape == (4,)
    text = lazy.summary(print_fn=None)
    assert "Total params: 27" in text and "Non-trainable params: 6" in text  # moving mean/var


def test_sequential_is_a_model_with_the_shared_facade(tmp_path) -> None:
    ids = np.random.default_rng(0).integers(0, 10, (32, 3)).astype(np.float32)  # ids as floats
    y = (ids.sum(axis=1, keepdims=True) / 10).astype(np.float32)
    gu.set_seed(0)
    model = gu.Sequential(
        [
            gu.Input(shape=(3,), dtype="int64"),  # cast to ids before the Embedding
            gu.layers.Embedding(10, 2),
            gu.layers.Flatten(),
            gu.layers.Dense(1),
        ]
    )
    assert isinstance(model, gu.Model)
    model.compile(optimizer="adam", loss="mse", lr=0.05, device="cpu")
    history = model.fit(ids, y, epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    model.save(tmp_path / "m")
    loaded = gu.load_model(tmp_path / "m")
    assert isinstance(loaded, gu.Sequential) and loaded._input_dtype == "int64"
    np.testing.assert_allclose(loaded.predict(ids), model.predict(ids), rtol=1e-6)
    with pytest.raises(DataError, match="declared int64 but holds fractions"):
        model.predict(ids + 0.5)
