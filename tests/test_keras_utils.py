"""Keras' utilities: get/set_weights, count_params (against Keras), save/load_weights by order
and by name, to_categorical (against Keras)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

import groundup as gu
from groundup import layers
from groundup.errors import CheckpointError, ConfigError, DataError

HAVE_KERAS = importlib.util.find_spec("keras") is not None

# Keras 3's count_params() of `_mixed_model` (conv 40 + batch norm 16 with its moving stats +
# embedding 60 + dense 4,352 + layer norm 32 + dense 51), stored so the check runs without keras.
KERAS_MIXED_PARAMS = 4551


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    return keras


def _mixed_model(lib):
    """The same small model in groundup (lib=gu) or Keras (lib=keras)."""
    image = lib.Input(shape=(8, 8, 1))
    x = lib.layers.Conv2D(4, 3, padding="same", activation="relu")(image)
    x = lib.layers.Flatten()(lib.layers.BatchNormalization()(x))
    tokens = lib.Input(shape=(5,), dtype="int64")
    e = lib.layers.Flatten()(lib.layers.Embedding(20, 3)(tokens))
    h = lib.layers.Dense(16, activation="relu")(lib.layers.Concatenate()([x, e]))
    out = lib.layers.Dense(3, activation="softmax")(lib.layers.LayerNormalization()(h))
    return lib.Model([image, tokens], out)


def test_count_params_matches_keras() -> None:
    model = _mixed_model(gu)
    assert model.count_params() == KERAS_MIXED_PARAMS
    assert "Non-trainable params: 8" in model.summary(print_fn=None)  # the moving mean/var
    if HAVE_KERAS:
        assert _mixed_model(_keras()).count_params() == model.count_params()


def test_get_and_set_weights_round_trip() -> None:
    gu.set_seed(0)
    model = _mixed_model(gu)
    weights = model.get_weights()
    assert [w.shape for w in weights][:2] == [(4, 1, 3, 3), (4,)]
    assert sum(w.size for w in weights) == model.count_params()
    gu.set_seed(1)
    other = _mixed_model(gu)
    x = [np.random.default_rng(0).random((3, 8, 8, 1)), np.arange(15).reshape(3, 5) % 20]
    assert not np.allclose(other.predict(x), model.predict(x))
    other.set_weights(weights)
    np.testing.assert_array_equal(other.predict(x), model.predict(x))
    weights[0][...] = 0.0  # get_weights gives copies
    assert not np.all(model.get_weights()[0] == 0)
    dense = model.get_layer(index=-1)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 2, bias])
    np.testing.assert_array_equal(dense.get_weights()[0], kernel * 2)


def test_set_weights_errors_are_one_line() -> None:
    model = gu.Sequential([layers.Dense(2, input_shape=(3,), name="d")])
    with pytest.raises(ConfigError, match="got 1 arrays but it has 2 weights"):
        model.set_weights([np.zeros((3, 2))])
    with pytest.raises(ConfigError, match=r"array 1 \(layers.0.bias\) has shape \(3,\).*\(2,\)"):
        model.set_weights([np.zeros((3, 2)), np.zeros(3)])
    with pytest.raises(ConfigError, match="not built"):
        gu.Sequential([layers.Dense(2)]).count_params()


def test_save_and_load_weights_by_order_and_by_name(tmp_path) -> None:
    gu.set_seed(0)

    def model(width: int, last: str) -> gu.Sequential:
        return gu.Sequential(
            [layers.Dense(4, input_shape=(3,), name="hidden"), layers.Dense(width, name=last)]
        )

    source = model(2, "head")
    path = source.save_weights(tmp_path / "w.weights.h5")
    same = model(2, "other_name")
    same.load_weights(path)  # by order: the names may differ
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(same.predict(x), source.predict(x))

    wider = model(5, "head")
    before = wider.get_weights()[2]
    with pytest.raises(CheckpointError, match=r"'head'.*\(4, 2\).*\(4, 5\).*skip_mismatch"):
        wider.load_weights(path, by_name=True)
    with pytest.warns(UserWarning, match="skipped 1 layer"):
        wider.load_weights(path, by_name=True, skip_mismatch=True)
    np.testing.assert_array_equal(wider.get_weights()[0], source.get_weights()[0])  # hidden
    np.testing.assert_array_equal(wider.get_weights()[2], before)  # head left as it was

    renamed = model(2, "new_head")
    renamed.load_weights(path, by_name=True)  # only "hidden" is in both
    np.testing.assert_array_equal(renamed.get_weights()[0], source.get_weights()[0])
    deeper = gu.Sequential([layers.Dense(4, input_shape=(3,)), layers.Dense(4), layers.Dense(2)])
    with pytest.raises(CheckpointError, match="2 layers.*3 layers"):
        deeper.load_weights(path)


def test_to_categorical() -> None:
    labels = np.array([0, 2, 1, 2])
    got = gu.utils.to_categorical(labels)
    np.testing.assert_array_equal(got, np.eye(3)[labels])
    assert gu.utils.to_categorical(labels.reshape(-1, 1), num_classes=4).shape == (4, 4)
    assert gu.utils.to_categorical(np.array([[1, 2], [0, 1]])).shape == (2, 2, 3)
    tensor = gu.utils.to_categorical(torch.tensor([1, 0]))
    assert isinstance(tensor, torch.Tensor) and tensor.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    with pytest.raises(DataError, match="class id 3 is outside 0..2"):
        gu.utils.to_categorical([0, 3], num_classes=3)
    with pytest.raises(DataError, match="integer class ids"):
        gu.utils.to_categorical([0.5, 1.0])
    if HAVE_KERAS:
        keras = _keras()
        for y, n in (
            (labels, None),
            (labels.reshape(-1, 1), 5),
            (np.array([[1, 2], [0, 1]]), None),
        ):
            np.testing.assert_array_equal(
                gu.utils.to_categorical(y, n), keras.utils.to_categorical(y, n)
            )
