"""The functional and subclassed `gu.Model`: graphs of layer calls, several inputs and outputs,
shared layers, masks, save/load, and the one-line errors of a badly wired model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import groundup as gu
from groundup import layers
from groundup.errors import ConfigError, DataError, ShapeError


def _data(n: int = 96, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    xa = rng.standard_normal((n, 4)).astype(np.float32)
    xb = rng.standard_normal((n, 3)).astype(np.float32)
    classes = (xa[:, 0] > 0).astype(np.int64) + (xb[:, 0] > 0)  # 3 classes
    values = (xa[:, 1:2] - xb[:, 1:2]).astype(np.float32)
    return xa, xb, classes, values


def _two_in_two_out() -> gu.Model:
    a = gu.Input(shape=(4,), name="a")
    b = gu.Input(shape=(3,), name="b")
    h = layers.Concatenate()([a, b])
    h = layers.Dense(16, activation="relu")(h)
    cls = layers.Dense(3, activation="softmax", name="cls")(h)
    reg = layers.Dense(1, name="reg")(h)
    return gu.Model(inputs=[a, b], outputs=[cls, reg])


def test_functional_equals_sequential_in_fp64() -> None:
    gu.set_seed(0)
    seq = gu.Sequential(
        [
            layers.Dense(8, activation="relu", input_shape=(5,)),
            layers.Dense(6, activation="tanh"),
            layers.Dense(3, activation="softmax"),
        ]
    )
    inputs = gu.Input(shape=(5,))
    x = layers.Dense(8, activation="relu")(inputs)
    x = layers.Dense(6, activation="tanh")(x)
    func = gu.Model(inputs, layers.Dense(3, activation="softmax")(x))
    func.set_weights(seq.get_weights())
    seq.double()
    func.double()
    x = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(func(x), seq(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(func._logits_forward(x), seq.forward_logits(x), rtol=0, atol=1e-12)
    y = np.array([0, 1, 2, 1, 0, 2, 1])
    for model in (seq, func):
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", precision="fp64")
    assert func.evaluate(x, y, verbose=0) == pytest.approx(seq.evaluate(x, y, verbose=0), rel=1e-12)
    assert func.trainer.loss_fn.from_logits  # the softmax output trains on its logits


def test_two_inputs_two_outputs_fit_reduces_the_loss() -> None:
    xa, xb, classes, values = _data()
    gu.set_seed(0)
    model = _two_in_two_out()
    model.compile(
        optimizer="adam",
        loss=["sparse_categorical_crossentropy", "mse"],
        metrics=[["accuracy"], ["mae"]],
        loss_weights=[1.0, 0.5],
        lr=0.01,
        device="cpu",
    )
    history = model.fit([xa, xb], [classes, values], epochs=8, batch_size=16, verbose=0,
                        validation_split=0.25)  # fmt: skip
    h = history.history
    assert set(h) >= {"loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_mae", "val_loss"}
    assert h["loss"][-1] < 0.7 * h["loss"][0]
    # Keras' total: the weighted sum of the outputs' mean losses
    logs = model.evaluate({"a": xa, "b": xb}, {"cls": classes, "reg": values}, verbose=0,
                          return_dict=True)  # fmt: skip
    assert logs["loss"] == pytest.approx(logs["cls_loss"] + 0.5 * logs["reg_loss"], rel=1e-5)
    listed = model.evaluate([xa, xb], [classes, values], verbose=0)
    assert listed == pytest.approx(
        [logs["loss"], logs["cls_loss"], logs["reg_loss"], logs["cls_accuracy"], logs["reg_mae"]]
    )
    probs, reg = model.predict([xa, xb])
    assert probs.shape == (len(xa), 3) and reg.shape == (len(xa), 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_losses_and_metrics_by_output_name() -> None:
    xa, xb, classes, values = _data(48)
    a = gu.Input(shape=(4,), name="a")
    b = gu.Input(shape=(3,), name="b")
    h = layers.Dense(8, activation="relu")(layers.Concatenate()([a, b]))
    model = gu.Model(
        inputs={"a": a, "b": b},
        outputs={"cls": layers.Dense(3, activation="softmax")(h), "reg": layers.Dense(1)(h)},
    )
    model.compile(optimizer="adam", loss={"cls": "sparse_categorical_crossentropy"},
                  metrics={"cls": ["accuracy"]}, device="cpu")  # fmt: skip
    history = model.fit({"a": xa, "b": xb}, {"cls": classes}, epochs=1, verbose=0)
    assert "cls_accuracy" in history.history and "reg_loss" not in history.history
    out = model.predict({"b": xb, "a": xa})
    assert set(out) == {"cls", "reg"} and out["reg"].shape == (48, 1)


def test_shared_layer_shares_its_weights() -> None:
    left, right = gu.Input(shape=(4,), name="left"), gu.Input(shape=(4,), name="right")
    shared = layers.Dense(3, name="shared")
    model = gu.Model([left, right], layers.Subtract()([shared(left), shared(right)]))
    assert len(list(model.parameters())) == 2 and model.count_params() == 15
    x = torch.randn(5, 4)
    assert torch.equal(model([x, x]), torch.zeros(5, 3))  # the same weights on both branches
    model([x, torch.randn(5, 4)]).sum().backward()
    assert shared.kernel.grad is not None
    row = next(r for r in model.summary(print_fn=None).splitlines() if r.startswith("shared"))
    assert "left[0][0], right[0][0]" in row  # one layer, called twice


def test_summary_has_connected_to() -> None:
    text = _two_in_two_out().summary(print_fn=None)
    assert "Connected to" in text
    line = next(r for r in text.splitlines() if r.startswith("concatenate"))
    assert "a[0][0], b[0][0]" in line
    assert "Total params: 196" in text  # 7*16+16 + 16*3+3 + 16*1+1


def test_save_and_load_round_trip(tmp_path) -> None:
    xa, xb, classes, values = _data(32)
    gu.set_seed(0)
    model = _two_in_two_out()
    model.compile(optimizer="adam", loss=["sparse_categorical_crossentropy", "mse"],
                  metrics=[["accuracy"], []], device="cpu")  # fmt: skip
    model.fit([xa, xb], [classes, values], epochs=1, verbose=0)
    model.save(tmp_path / "m")
    loaded = gu.load_model(tmp_path / "m")
    assert isinstance(loaded, gu.Model) and loaded.input_names == ["a", "b"]
    for got, want in zip(loaded.predict([xa, xb]), model.predict([xa, xb])):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert loaded.trainer is not None  # re-compiled from the saved names
    assert loaded.evaluate([xa, xb], [classes, values], verbose=0) == pytest.approx(
        model.evaluate([xa, xb], [classes, values], verbose=0), rel=1e-5
    )


def test_model_inside_a_model_saves_and_loads(tmp_path) -> None:
    gu.set_seed(0)
    enc_in = gu.Input(shape=(6,))
    encoder = gu.Model(enc_in, layers.Dense(2, activation="tanh")(enc_in), name="encoder")
    inputs = gu.Input(shape=(6,))
    outer = gu.Model(inputs, layers.Dense(6)(encoder(inputs)), name="autoencoder")
    x = torch.randn(4, 6)
    assert outer(x).shape == (4, 6) and outer.count_params() == 14 + 18
    outer.save(tmp_path / "ae")
    torch.testing.assert_close(gu.load_model(tmp_path / "ae")(x), outer(x))


def test_subclassed_model_fits_and_honours_training() -> None:
    class TwoLayers(gu.Model):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = layers.Dense(16, activation="relu")
            self.dropout = layers.Dropout(0.5)
            self.out = layers.Dense(3, activation="softmax")

        def call(self, inputs, training=False):
            return self.out(self.dropout(self.hidden(inputs), training=training))

    xa, _, classes, _ = _data(128)
    gu.set_seed(0)
    model = TwoLayers()
    assert not model.built and model.name == "two_layers"
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  lr=0.02, device="cpu")  # fmt: skip
    history = model.fit(xa, classes, epochs=10, verbose=0)
    assert model.built and history.history["loss"][-1] < 0.8 * history.history["loss"][0]
    assert [layer.name for layer in model.layers][-1] == model.out.name
    x = torch.as_tensor(xa[:8])
    model.eval()
    torch.testing.assert_close(model(x), model(x))  # inference: dropout off
    assert not torch.equal(model(x, training=True), model(x))  # training=True: dropout on
    assert not model.training  # the mode comes back after the call
    assert "(None, 16)" in model.summary(print_fn=None)
    with pytest.raises(ConfigError, match="subclassed"):
        model.save("unused")


class _Zeros(gu.layers.Layer):
    """Stand-in for Embedding(mask_zero=True): its mask is where the first feature is not 0."""

    def call(self, x):
        return x

    def compute_mask(self, inputs, mask=None):
        return inputs[..., 0] != 0


class _Through(gu.layers.Layer):
    supports_masking = True

    def call(self, x):
        return x * 2


class _Blocker(gu.layers.Layer):
    def call(self, x):
        return x


class _UsesMask(gu.layers.Layer):
    """Stand-in for an RNN that skips padded steps: zeroes the masked ones."""

    def forward(self, x, mask=None):
        return x if mask is None else x * mask[..., None]


def test_masks_propagate_in_functional_and_sequential() -> None:
    x = torch.tensor([[[1.0, 5.0], [2.0, 6.0], [0.0, 7.0]]])  # (1, 3, 2): the last step padded
    want = torch.tensor([[[2.0, 10.0], [4.0, 12.0], [0.0, 0.0]]])
    seq = gu.Sequential([_Zeros(), _Through(), _UsesMask()])
    torch.testing.assert_close(seq(x), want)
    inputs = gu.Input(shape=(3, 2))
    func = gu.Model(inputs, _UsesMask()(_Through()(_Zeros()(inputs))))
    torch.testing.assert_close(func(x), want)
    blocked = gu.Sequential([_Zeros(), _Blocker(), _UsesMask()])
    torch.testing.assert_close(blocked(x), x)  # a layer without supports_masking ends the mask


def test_sequential_starting_with_an_input() -> None:
    model = gu.Sequential([gu.Input(shape=(4,)), layers.Dense(3)])
    assert model.built and model.input_shape == (4,) and len(model.layers) == 1
    assert model.count_params() == 15


def test_an_input_layer_object_stands_for_its_tensor() -> None:
    inp = layers.InputLayer((4,), name="features")  # gu.layers.Input(...), the layer
    model = gu.Model(inp, layers.Dense(2)(inp))
    assert model.input_names == ["features"] and model(torch.ones(3, 4)).shape == (3, 2)
    with pytest.raises(ShapeError, match=r"Input 'features' expects inputs of shape"):
        model(torch.ones(3, 5))


def test_layer_on_an_incompatible_shape_names_it() -> None:
    dense = layers.Dense(3, name="shared_dense")
    dense(gu.Input(shape=(4,)))
    with pytest.raises(ShapeError, match=r"shared_dense.*\(None, 4\).*\(None, 5\)"):
        dense(gu.Input(shape=(5,)))
    with pytest.raises(ShapeError, match="concatenate_bad"):
        layers.Concatenate(name="concatenate_bad")([gu.Input(shape=(4,)), gu.Input(shape=(3, 2))])


def test_disconnected_output_names_the_missing_input() -> None:
    a, c = gu.Input(shape=(4,), name="a"), gu.Input(shape=(2,), name="c")
    out = layers.Dense(2, name="head")(layers.Concatenate()([layers.Dense(2)(a), c]))
    with pytest.raises(ConfigError, match=r"'head'.*Input 'c'.*\['a'\]"):
        gu.Model(inputs=a, outputs=out)


def test_fit_data_errors_name_the_inputs() -> None:
    xa, xb, classes, values = _data(16)
    model = _two_in_two_out()
    model.compile(optimizer="adam", loss=["sparse_categorical_crossentropy", "mse"], device="cpu")
    with pytest.raises(DataError, match=r"input 'zz'.*\['a', 'b'\]"):
        model.fit({"a": xa, "zz": xb}, [classes, values], verbose=0)
    with pytest.raises(DataError, match=r"no data for input 'b'"):
        model.fit({"a": xa}, [classes, values], verbose=0)
    with pytest.raises(DataError, match=r"2 inputs \['a', 'b'\] but fit got 1 array"):
        model.fit(xa, [classes, values], verbose=0)
    with pytest.raises(DataError, match=r"2 targets \['cls', 'reg'\] but fit got 3 arrays"):
        model.fit([xa, xb], [classes, values, values], verbose=0)
    with pytest.raises(DataError, match=r"input 'b' has 15 samples but input 'a' has 16"):
        model.fit([xa, xb[:15]], [classes, values], verbose=0)
    with pytest.raises(ShapeError, match=r"input 'b' expects samples of shape \(3,\), got \(4,\)"):
        model.fit([xa, xa], [classes, values], verbose=0)
    with pytest.raises(ConfigError, match="list of lists"):
        model.compile(optimizer="adam", loss="mse", metrics=["mae"])


def test_initial_epoch_numbers_the_epochs_as_keras() -> None:
    xa, _, _, values = _data(32)
    model = gu.Sequential([layers.Dense(1, input_shape=(4,))])
    model.compile(optimizer="sgd", loss="mse", device="cpu")
    history = model.fit(xa, values, epochs=5, initial_epoch=2, verbose=0)
    assert history.epoch == [2, 3, 4] and len(history.history["loss"]) == 3
    assert model.fit(xa, values, epochs=2, verbose=0).epoch == [0, 1]


def test_the_keras_guide_multi_input_example_runs_with_the_import_changed() -> None:
    """keras.io "Training & evaluation with the built-in methods", several inputs and outputs
    (smaller arrays), with `import groundup as keras` as its only change."""
    import groundup as keras

    keras.utils.set_random_seed(0)
    image_input = keras.Input(shape=(8, 8, 3), name="img_input")
    timeseries_input = keras.Input(shape=(None, 10), name="ts_input")
    x1 = layers.GlobalMaxPooling2D()(layers.Conv2D(3, 3)(image_input))
    x2 = layers.GlobalMaxPooling1D()(layers.Conv1D(3, 3)(timeseries_input))
    x = layers.Concatenate()([x1, x2])
    score_output = layers.Dense(1, name="score_output")(x)
    class_output = layers.Dense(5, name="class_output")(x)
    model = keras.Model(
        inputs=[image_input, timeseries_input], outputs=[score_output, class_output]
    )
    model.compile(
        optimizer=keras.optimizers.RMSprop(1e-3),
        loss={
            "score_output": keras.losses.MeanSquaredError(),
            "class_output": keras.losses.CategoricalCrossentropy(),
        },
        metrics={"score_output": ["mae"], "class_output": ["accuracy"]},
        loss_weights={"score_output": 2.0, "class_output": 1.0},
    )
    rng = np.random.default_rng(0)
    img_data = rng.random((40, 8, 8, 3))
    ts_data = rng.random((40, 20, 10))
    score_targets = rng.random((40, 1))
    class_targets = keras.utils.to_categorical(rng.integers(0, 5, 40), 5)
    history = model.fit([img_data, ts_data], [score_targets, class_targets], batch_size=32,
                        epochs=1, verbose=0)  # fmt: skip
    assert {"score_output_mae", "class_output_accuracy"} <= set(history.history)
    model.compile(optimizer="rmsprop", loss=[None, keras.losses.CategoricalCrossentropy()])
    history = model.fit(
        {"img_input": img_data, "ts_input": ts_data},
        {"score_output": score_targets, "class_output": class_targets},
        batch_size=32,
        epochs=1,
        verbose=0,
    )
    assert history.history["loss"] == history.history["class_output_loss"]
