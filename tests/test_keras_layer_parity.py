"""Parity with Keras 3: parameter counts, output shapes, numerics with copied weights, the
initializers' ranges and the constructor defaults.

Keras is the reference where it is importable (`KERAS_BACKEND=torch`); the tables below were
made from it (Keras 3.15, torch backend) by `python tests/test_keras_layer_parity.py`, which
prints them again, and the live tests check that Keras still gives them. Without Keras the
stored tables are the reference, so the file runs anywhere. Weights and inputs come from
NumPy's RandomState (the same numbers on every machine); outputs are compared with tolerances
far above float32 rounding.

Not compared live: StringLookup, IntegerLookup and TextVectorization (Keras runs them on
TensorFlow only); tests/test_layers.py checks them against hand-computed results.
"""

from __future__ import annotations

import inspect
import os
import textwrap

import numpy as np
import pytest
import torch

from groundup.errors import ShapeError
from groundup.keras import layers as L
from groundup.keras.layers import LAYERS


def _import_keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception:  # not installed, or a backend that does not import here
        return None
    return keras if keras.backend.backend() == "torch" else None


keras = _import_keras()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras' NumPy 2 notes
needs_keras = pytest.mark.skipif(keras is None, reason="keras (torch backend) not installed")

# (id, factory taking the layers module: ours or keras.layers, call style, input shape(s))
# Call styles: "one" tensor, a "list" of tensors (merges), several positional "args" (MHA).
CASES = [
    ("dense", lambda m: m.Dense(5), "one", (3,)),
    ("dense-3d-nobias", lambda m: m.Dense(4, use_bias=False), "one", (6, 3)),
    ("activation", lambda m: m.Activation("relu"), "one", (4,)),
    ("dropout", lambda m: m.Dropout(0.3), "one", (4,)),
    ("flatten", lambda m: m.Flatten(), "one", (3, 4, 2)),
    ("reshape", lambda m: m.Reshape((3, -1)), "one", (12,)),
    ("rescaling", lambda m: m.Rescaling(1 / 255), "one", (5,)),
    ("lambda", lambda m: m.Lambda(lambda x: x * 2), "one", (5,)),
    ("embedding", lambda m: m.Embedding(50, 8), "one", (7,)),
    ("embedding-mask", lambda m: m.Embedding(50, 8, mask_zero=True), "one", (7,)),
    ("conv2d", lambda m: m.Conv2D(8, 3), "one", (9, 8, 3)),
    ("conv2d-same-s2", lambda m: m.Conv2D(4, (3, 2), strides=2, padding="same"), "one", (9, 8, 3)),
    ("conv2d-groups", lambda m: m.Conv2D(4, 3, groups=2), "one", (9, 8, 6)),
    ("maxpool2d", lambda m: m.MaxPooling2D(), "one", (9, 8, 3)),
    ("avgpool2d-same", lambda m: m.AveragePooling2D(3, 2, padding="same"), "one", (9, 8, 3)),
    ("gap2d", lambda m: m.GlobalAveragePooling2D(), "one", (5, 4, 3)),
    ("gmp2d-keep", lambda m: m.GlobalMaxPooling2D(keepdims=True), "one", (5, 4, 3)),
    ("conv1d", lambda m: m.Conv1D(6, 3), "one", (10, 4)),
    ("conv1d-causal", lambda m: m.Conv1D(6, 3, padding="causal", dilation_rate=2), "one", (10, 4)),
    ("conv1d-s2-groups", lambda m: m.Conv1D(6, 3, 2, "same", groups=2), "one", (11, 4)),
    ("maxpool1d", lambda m: m.MaxPooling1D(), "one", (11, 4)),
    ("avgpool1d-same", lambda m: m.AveragePooling1D(3, 2, padding="same"), "one", (11, 4)),
    ("gap1d", lambda m: m.GlobalAveragePooling1D(), "one", (11, 4)),
    ("gmp1d-keep", lambda m: m.GlobalMaxPooling1D(keepdims=True), "one", (11, 4)),
    ("conv2dT", lambda m: m.Conv2DTranspose(5, 3), "one", (4, 5, 3)),
    ("conv2dT-same-s2", lambda m: m.Conv2DTranspose(5, 3, 2, "same"), "one", (4, 5, 3)),
    ("conv2dT-valid-s3-k2", lambda m: m.Conv2DTranspose(2, 2, strides=3), "one", (4, 5, 3)),
    ("conv2dT-same-s2-k4", lambda m: m.Conv2DTranspose(2, 4, 2, "same"), "one", (4, 5, 3)),
    ("conv2dT-outpad", lambda m: m.Conv2DTranspose(2, 3, 2, "same", 1), "one", (4, 5, 3)),
    ("separable", lambda m: m.SeparableConv2D(6, 3, depth_multiplier=2), "one", (7, 6, 3)),
    ("separable-same-s2", lambda m: m.SeparableConv2D(6, 3, 2, "same"), "one", (7, 6, 3)),
    ("depthwise", lambda m: m.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), "one",
     (7, 6, 3)),
    ("upsampling2d", lambda m: m.UpSampling2D((2, 3)), "one", (3, 4, 2)),
    ("upsampling2d-bilinear", lambda m: m.UpSampling2D(2, interpolation="bilinear"), "one",
     (3, 4, 2)),
    ("upsampling1d", lambda m: m.UpSampling1D(3), "one", (4, 2)),
    ("zeropad2d", lambda m: m.ZeroPadding2D(((1, 2), (0, 3))), "one", (3, 4, 2)),
    ("zeropad1d", lambda m: m.ZeroPadding1D((2, 1)), "one", (4, 2)),
    ("cropping2d", lambda m: m.Cropping2D(((1, 0), (1, 2))), "one", (5, 6, 2)),
    ("repeatvector", lambda m: m.RepeatVector(4), "one", (3,)),
    ("permute", lambda m: m.Permute((2, 1)), "one", (4, 3)),
    ("masking", lambda m: m.Masking(), "one", (5, 3)),
    ("batchnorm", lambda m: m.BatchNormalization(), "one", (5,)),
    ("batchnorm-image", lambda m: m.BatchNormalization(), "one", (4, 4, 3)),
    ("layernorm", lambda m: m.LayerNormalization(), "one", (6, 5)),
    ("layernorm-axes", lambda m: m.LayerNormalization(axis=[1, 2], center=False), "one", (6, 5)),
    ("simplernn", lambda m: m.SimpleRNN(4), "one", (5, 3)),
    ("simplernn-seq-state", lambda m: m.SimpleRNN(4, return_sequences=True, return_state=True),
     "one", (5, 3)),
    ("lstm", lambda m: m.LSTM(16), "one", (10, 8)),
    ("lstm-nobias", lambda m: m.LSTM(4, use_bias=False), "one", (5, 3)),
    ("lstm-state", lambda m: m.LSTM(4, return_state=True), "one", (5, 3)),
    ("gru", lambda m: m.GRU(4), "one", (5, 3)),
    ("gru-seq-state", lambda m: m.GRU(4, return_sequences=True, return_state=True), "one",
     (None, 3)),
    ("bidirectional-lstm", lambda m: m.Bidirectional(m.LSTM(4)), "one", (5, 3)),
    ("bidirectional-gru-sum", lambda m: m.Bidirectional(m.GRU(4, return_sequences=True),
                                                         merge_mode="sum"), "one", (5, 3)),
    ("bidirectional-state", lambda m: m.Bidirectional(m.LSTM(4, return_state=True)), "one",
     (5, 3)),
    ("timedistributed-dense", lambda m: m.TimeDistributed(m.Dense(3)), "one", (5, 4)),
    ("timedistributed-conv", lambda m: m.TimeDistributed(m.Conv2D(2, 3)), "one", (4, 6, 6, 1)),
    ("mha", lambda m: m.MultiHeadAttention(num_heads=2, key_dim=3), "args", [(5, 6), (7, 4)]),
    ("mha-vdim-out", lambda m: m.MultiHeadAttention(4, 2, value_dim=3, output_shape=5), "args",
     [(5, 6), (5, 6)]),
    ("mha-key-nobias", lambda m: m.MultiHeadAttention(2, 3, use_bias=False), "args",
     [(5, 6), (7, 4), (7, 2)]),
    ("add", lambda m: m.Add(), "list", [(4, 3), (4, 3)]),
    ("subtract", lambda m: m.Subtract(), "list", [(3,), (3,)]),
    ("multiply-3", lambda m: m.Multiply(), "list", [(3,), (3,), (3,)]),
    ("average", lambda m: m.Average(), "list", [(2, 3), (2, 3)]),
    ("maximum", lambda m: m.Maximum(), "list", [(3,), (3,)]),
    ("minimum", lambda m: m.Minimum(), "list", [(3,), (3,)]),
    ("concatenate", lambda m: m.Concatenate(), "list", [(4, 3), (4, 5)]),
    ("concatenate-axis1", lambda m: m.Concatenate(axis=1), "list", [(4, 3), (2, 3)]),
    ("normalization", lambda m: m.Normalization(), "one", (5,)),
    ("normalization-fixed", lambda m: m.Normalization(mean=1.0, variance=4.0), "one", (5,)),
    ("normalization-image", lambda m: m.Normalization(axis=-1), "one", (4, 4, 3)),
    ("random-flip", lambda m: m.RandomFlip(), "one", (6, 6, 3)),
    ("random-rotation", lambda m: m.RandomRotation(0.1), "one", (6, 6, 3)),
    ("random-zoom", lambda m: m.RandomZoom(0.2), "one", (6, 6, 3)),
    ("random-translation", lambda m: m.RandomTranslation(0.1, 0.2), "one", (6, 6, 3)),
    ("random-crop", lambda m: m.RandomCrop(4, 5), "one", (6, 6, 3)),
]  # fmt: skip

# KERAS_TABLE (at the end of the file): Keras' count_params() and per-sample output shape(s)
# of each case.

# Layers with no Keras counterpart to compare here (Input is a function in Keras; the string
# layers need TensorFlow).
NOT_IN_TABLE = {L.Input, L.StringLookup, L.IntegerLookup, L.TextVectorization}


def _our_layer(case):
    _, make, style, shapes = case
    layer = make(L)
    args = (list(shapes),) if style == "list" else tuple(shapes) if style == "args" else (shapes,)
    layer.build(*args)
    out = layer.compute_output_shape(*args)
    return layer, (layer.count_params(), [tuple(o) for o in out] if isinstance(out, list) else out)


def _keras_reference(case):
    _, make, style, shapes = case
    layer = make(keras.layers)
    if style == "one":
        out = layer(keras.Input(shapes))
    elif style == "list":
        out = layer([keras.Input(s) for s in shapes])
    else:
        out = layer(*[keras.Input(s) for s in shapes])
    if isinstance(out, (list, tuple)):
        return layer, (layer.count_params(), [tuple(o.shape[1:]) for o in out])
    return layer, (layer.count_params(), tuple(out.shape[1:]))


def _batch(shape, rng):
    return torch.as_tensor(
        rng.randn(2, *[5 if d is None else d for d in shape]), dtype=torch.float32
    )


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_counts_and_shapes_equal_keras_table(case):
    layer, ours = _our_layer(case)
    assert ours == KERAS_TABLE[case[0]]
    # a real batch through a lazily built twin gives those shapes too
    _, make, style, shapes = case
    rng = np.random.RandomState(0)
    twin = make(L)
    if case[0].startswith("embedding"):
        inputs = (torch.as_tensor(rng.randint(0, 50, (2, *shapes))),)
    elif style == "one":
        inputs = (_batch(shapes, rng),)
    else:
        tensors = [_batch(s, rng) for s in shapes]
        inputs = (tensors,) if style == "list" else tuple(tensors)
    if isinstance(twin, L.Normalization) and twin._mean_arg is None:
        twin.adapt(inputs[0])
    out = twin(*inputs)
    got = [tuple(o.shape[1:]) for o in out] if isinstance(out, list) else tuple(out.shape[1:])
    expected = KERAS_TABLE[case[0]][1]
    free = lambda s: tuple(5 if d is None else d for d in s)  # noqa: E731
    assert got == ([free(s) for s in expected] if isinstance(expected, list) else free(expected))
    assert twin.count_params() == ours[0]


@needs_keras
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_keras_still_gives_the_table(case):
    layer, reference = _keras_reference(case)
    assert reference == KERAS_TABLE[case[0]]
    ours, _ = _our_layer(case)
    assert ours.supports_masking == layer.supports_masking


def test_every_layer_is_in_the_table():
    covered = {type(make(L)) for _, make, _, _ in CASES}
    missing = {cls.__name__ for cls in LAYERS.values()} - {c.__name__ for c in covered}
    assert missing == {c.__name__ for c in NOT_IN_TABLE}


# ---- numerics with the same weights ----------------------------------------------------------


def _gru_to_keras(w):  # torch's gate blocks (r, z, n) -> Keras' (z, r, h), on the first axis
    r, z, n = np.split(w, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def _rnn_to_keras(sd, prefix=""):
    get = lambda k: sd[prefix + k]  # noqa: E731
    if prefix + "rnn.bias_hh_l0" in sd:  # GRU: gates reordered, two bias rows
        rows = [_gru_to_keras(get(k)) for k in ("rnn.weight_ih_l0", "rnn.weight_hh_l0")]
        bias = np.stack(
            [_gru_to_keras(get("rnn.bias_ih_l0")), _gru_to_keras(get("rnn.bias_hh_l0"))]
        )
        return [rows[0].T, rows[1].T, bias]
    return [get("rnn.weight_ih_l0").T, get("rnn.weight_hh_l0").T, get("rnn.bias_ih_l0")]


def _depthwise_to_keras(w, kh_kw):  # (in*dm, 1, kh, kw) -> (kh, kw, in, dm)
    return w[:, 0].transpose(1, 2, 0).reshape(*kh_kw, -1, 1)


# Our state_dict (NumPy) -> Keras' get_weights() list, by layer type.
TO_KERAS = {
    "Dense": lambda sd, layer: [sd["kernel"], sd["bias"]],
    "Conv2D": lambda sd, layer: [sd["kernel"].transpose(2, 3, 1, 0), sd["bias"]],
    "Conv1D": lambda sd, layer: [sd["kernel"].transpose(2, 1, 0), sd["bias"]],
    "Conv2DTranspose": lambda sd, layer: [sd["kernel"].transpose(2, 3, 1, 0), sd["bias"]],
    "DepthwiseConv2D": lambda sd, layer: [
        sd["depthwise_kernel"][:, 0]
        .transpose(1, 2, 0)
        .reshape(*layer.kernel_size, layer.in_channels, layer.depth_multiplier),
        sd["bias"],
    ],
    "SeparableConv2D": lambda sd, layer: [
        sd["depthwise_kernel"][:, 0]
        .transpose(1, 2, 0)
        .reshape(*layer.kernel_size, layer.in_channels, layer.depth_multiplier),
        sd["pointwise_kernel"].transpose(2, 3, 1, 0),
        sd["bias"],
    ],
    "LayerNormalization": lambda sd, layer: [sd["gamma"], sd["beta"]],
    "LSTM": lambda sd, layer: _rnn_to_keras(sd),
    "GRU": lambda sd, layer: _rnn_to_keras(sd),
    "SimpleRNN": lambda sd, layer: _rnn_to_keras(sd),
    "Bidirectional": lambda sd, layer: (
        _rnn_to_keras(sd, "forward_layer.") + _rnn_to_keras(sd, "backward_layer.")
    ),
    "TimeDistributed": lambda sd, layer: [sd["layer.kernel"], sd["layer.bias"]],
    "MultiHeadAttention": lambda sd, layer: [
        sd[f"{part}_{kind}"]
        for part in ("query", "key", "value", "output")
        for kind in ("kernel", "bias")
    ],
}

MASK_HOLES = [[1, 1, 0, 1], [0, 1, 1, 0]]
MASK_RIGHT = [[1, 1, 1, 0], [1, 1, 0, 0]]
MASK_LEFT = [[0, 1, 1, 1], [0, 0, 0, 1]]
ATTEND = [[[1, 0], [1, 1], [0, 0]]]  # (1, Tq=3, Tv=2): the last query attends nowhere

# (id, factory(module), input shapes, call keyword arguments): small, so outputs can be stored.
NUMERIC_CASES = [
    ("dense", lambda m: m.Dense(3), [(2, 4)], {}),
    ("conv2d-same-s2", lambda m: m.Conv2D(2, 3, strides=2, padding="same"), [(1, 5, 4, 2)], {}),
    ("conv1d-causal", lambda m: m.Conv1D(2, 3, padding="causal", dilation_rate=2), [(1, 6, 2)],
     {}),
    ("conv2dT-same-s2", lambda m: m.Conv2DTranspose(1, 3, 2, "same"), [(1, 2, 3, 2)], {}),
    ("conv2dT-valid-s3-k2", lambda m: m.Conv2DTranspose(1, 2, strides=3), [(1, 2, 1, 2)], {}),
    ("separable", lambda m: m.SeparableConv2D(2, 3, padding="same", depth_multiplier=2),
     [(1, 3, 3, 2)], {}),
    ("depthwise", lambda m: m.DepthwiseConv2D(2, 2, "same", depth_multiplier=2), [(1, 3, 4, 2)],
     {}),
    ("layernorm-axes", lambda m: m.LayerNormalization(axis=[1, 2]), [(2, 3, 2)], {}),
    ("avgpool2d-same", lambda m: m.AveragePooling2D(3, 1, "same"), [(1, 3, 3, 1)], {}),
    ("upsampling2d-bilinear", lambda m: m.UpSampling2D(2, interpolation="bilinear"),
     [(1, 2, 2, 1)], {}),
    ("lstm", lambda m: m.LSTM(2), [(2, 4, 3)], {}),
    ("lstm-mask-holes", lambda m: m.LSTM(2, return_sequences=True, return_state=True),
     [(2, 4, 3)], {"mask": MASK_HOLES}),
    ("gru-backwards-mask", lambda m: m.GRU(2, return_sequences=True, go_backwards=True),
     [(2, 4, 3)], {"mask": MASK_RIGHT}),
    ("simplernn-mask-left", lambda m: m.SimpleRNN(2, return_state=True), [(2, 4, 3)],
     {"mask": MASK_LEFT}),
    ("bidirectional-mask", lambda m: m.Bidirectional(m.LSTM(2, return_sequences=True)),
     [(2, 4, 3)], {"mask": MASK_RIGHT}),
    ("timedistributed", lambda m: m.TimeDistributed(m.Dense(2)), [(1, 3, 2)], {}),
    ("mha-mask-scores", lambda m: m.MultiHeadAttention(2, 2), [(1, 3, 4), (1, 2, 3)],
     {"attention_mask": ATTEND, "return_attention_scores": True}),
    ("mha-causal", lambda m: m.MultiHeadAttention(2, 2), [(1, 3, 4), (1, 3, 4)],
     {"use_causal_mask": True}),
]  # fmt: skip


def _numeric_setup(case):
    """Our layer with seeded weights, the inputs, and the keyword arguments (NumPy)."""
    _, make, shapes, kwargs = case
    rng = np.random.RandomState(sum(map(ord, case[0])))
    inputs = [rng.randn(*s).astype(np.float32) for s in shapes]
    layer = make(L)
    layer.build(*[s[1:] for s in shapes])
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.as_tensor(rng.uniform(-0.5, 0.5, p.shape)))
    layer.eval()
    kw = {k: np.asarray(v, dtype=bool) if isinstance(v, list) else v for k, v in kwargs.items()}
    return layer, inputs, kw


def _flat(out):
    outs = out if isinstance(out, (list, tuple)) else [out]
    return np.concatenate([np.asarray(o, dtype=np.float64).reshape(-1) for o in outs])


def _run_ours(layer, inputs, kw):
    tensors = [torch.as_tensor(x) for x in inputs]
    kw = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    with torch.no_grad():
        return _flat([o.numpy() for o in _as_list(layer(*tensors, **kw))])


def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _run_keras(case, layer, inputs, kw):
    k_layer = case[1](keras.layers)
    k_layer(*inputs, **kw)  # builds it
    sd = {k: v.numpy() for k, v in layer.state_dict().items()}
    convert = TO_KERAS.get(type(layer).__name__, lambda sd, layer: [])  # none: no weights
    k_layer.set_weights(convert(sd, layer))
    out = k_layer(*inputs, **kw)
    return _flat([keras.ops.convert_to_numpy(o) for o in _as_list(out)])


@pytest.mark.parametrize("case", NUMERIC_CASES, ids=[c[0] for c in NUMERIC_CASES])
def test_outputs_equal_stored_keras_outputs(case):
    layer, inputs, kw = _numeric_setup(case)
    np.testing.assert_allclose(_run_ours(layer, inputs, kw), KERAS_OUTPUTS[case[0]], atol=2e-5)


@needs_keras
@pytest.mark.parametrize("case", NUMERIC_CASES, ids=[c[0] for c in NUMERIC_CASES])
def test_outputs_equal_keras_with_copied_weights(case):
    layer, inputs, kw = _numeric_setup(case)
    keras_out = _run_keras(case, layer, inputs, kw)
    np.testing.assert_allclose(_run_ours(layer, inputs, kw), keras_out, atol=1e-5)
    np.testing.assert_allclose(keras_out, KERAS_OUTPUTS[case[0]], atol=2e-5)


# ---- BatchNormalization: the moving statistics after training steps ----------------------------


def _bn_batches():
    rng = np.random.RandomState(7)
    return [(rng.randn(8, 3) * [1.0, 3.0, 0.5] + [0.0, 2.0, -1.0]).astype(np.float32)
            for _ in range(3)]  # fmt: skip


def _our_bn_state():
    bn = L.BatchNormalization(momentum=0.9)
    bn.train()
    for x in _bn_batches():
        bn(torch.as_tensor(x))
    bn.eval()
    out = bn(torch.as_tensor(_bn_batches()[0][:2]))
    return _flat([bn.moving_mean, bn.moving_variance, out.detach()])


def _keras_bn_state():
    bn = keras.layers.BatchNormalization(momentum=0.9)
    for x in _bn_batches():
        bn(x, training=True)
    out = bn(_bn_batches()[0][:2], training=False)
    return _flat([keras.ops.convert_to_numpy(v) for v in (bn.moving_mean, bn.moving_variance, out)])


def test_batchnorm_moving_statistics_equal_stored_keras():
    np.testing.assert_allclose(_our_bn_state(), KERAS_BATCHNORM, rtol=1e-5, atol=1e-6)


@needs_keras
def test_batchnorm_moving_statistics_equal_keras():
    np.testing.assert_allclose(_our_bn_state(), _keras_bn_state(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_keras_bn_state(), KERAS_BATCHNORM, rtol=1e-5, atol=1e-6)


# ---- initializers: Keras' defaults and fans ------------------------------------------------------

# (id, factory, input shape(s), our parameter, Keras' weight index, Keras' kernel bound)
# Bounds are glorot_uniform's sqrt(6 / (fan_in + fan_out)) with Keras' fans for its kernel
# layout (conv: receptive field x channels; attention: input units, heads x head size).
INIT_CASES = [
    ("dense", lambda m: m.Dense(64), [(48,)], "kernel", 0, (6 / (48 + 64)) ** 0.5),
    ("conv1d", lambda m: m.Conv1D(32, 5), [(20, 16)], "kernel", 0, (6 / (80 + 160)) ** 0.5),
    ("conv2dT", lambda m: m.Conv2DTranspose(16, 3), [(8, 8, 12)], "kernel", 0,
     (6 / (144 + 108)) ** 0.5),
    ("separable-depthwise", lambda m: m.SeparableConv2D(32, 3, depth_multiplier=4),
     [(8, 8, 16)], "depthwise_kernel", 0, (6 / (144 + 36)) ** 0.5),
    ("separable-pointwise", lambda m: m.SeparableConv2D(32, 3, depth_multiplier=4),
     [(8, 8, 16)], "pointwise_kernel", 1, (6 / (64 + 32)) ** 0.5),
    ("mha-query", lambda m: m.MultiHeadAttention(4, 16), [(10, 32), (10, 32)], "query_kernel", 0,
     (6 / (32 + 64)) ** 0.5),
    ("mha-output", lambda m: m.MultiHeadAttention(4, 16), [(10, 32), (10, 32)], "output_kernel",
     6, (6 / (64 + 32)) ** 0.5),
    ("lstm-kernel", lambda m: m.LSTM(32), [(10, 16)], "rnn.weight_ih_l0", 0,
     (6 / (16 + 128)) ** 0.5),
    ("embedding", lambda m: m.Embedding(100, 16), [(5,)], "embeddings", 0, 0.05),
]  # fmt: skip


@pytest.mark.parametrize("case", INIT_CASES, ids=[c[0] for c in INIT_CASES])
def test_default_initializers_have_keras_bounds(case):
    _, make, shapes, name, _, bound = case
    torch.manual_seed(0)
    layer = make(L)
    layer.build(*shapes)
    top = layer.get_parameter(name).abs().max().item()
    assert 0.9 * bound < top <= bound * (1 + 1e-6)  # thousands of draws reach the bound
    for pname, p in layer.named_parameters():
        if "bias" in pname and not pname.endswith("bias_ih_l0"):  # the LSTM's forget gate is 1
            assert p.abs().sum() == 0, pname


@needs_keras
@pytest.mark.parametrize("case", INIT_CASES, ids=[c[0] for c in INIT_CASES])
def test_keras_initializers_have_the_same_bounds(case):
    _, make, shapes, _, index, bound = case
    layer = make(keras.layers)
    layer(*[keras.Input(s) for s in shapes])
    top = float(np.abs(layer.get_weights()[index]).max())
    assert 0.9 * bound < top <= bound * (1 + 1e-6)


def test_recurrent_kernels_are_orthogonal_and_biases_zero():
    for make in (lambda: L.LSTM(8), lambda: L.GRU(8), lambda: L.SimpleRNN(8)):
        layer = make()
        layer.build((5, 3))
        w = layer.rnn.weight_hh_l0  # (gates*units, units): Keras' (units, gates*units) rows
        torch.testing.assert_close(w.T @ w, torch.eye(8), atol=1e-5, rtol=0)
        if not isinstance(layer, L.LSTM):
            assert layer.rnn.bias_ih_l0.abs().sum() == 0


def _normalize_default(value):
    if isinstance(value, (tuple, list)) and len(set(value)) == 1:
        return value[0]  # Keras writes (1, 1) where one int means the same
    return "channels_last" if value is None else value


@needs_keras
def test_constructor_defaults_equal_keras():
    """Every argument we share with Keras has Keras' default (data_format=None is Keras'
    "channels_last"; Keras requires a few that we default, such as AveragePooling's size)."""
    different = []
    for cls in set(LAYERS.values()):
        theirs = getattr(keras.layers, cls.__name__, None)
        if theirs is None or not inspect.isclass(theirs):
            continue
        keras_params = inspect.signature(theirs).parameters
        for name, param in inspect.signature(cls).parameters.items():
            if name not in keras_params or name in ("input_shape", "name"):
                continue
            kd = keras_params[name].default
            if kd is inspect.Parameter.empty:
                continue
            if _normalize_default(kd) != _normalize_default(param.default):
                different.append(f"{cls.__name__}.{name}: keras {kd!r}, ours {param.default!r}")
    assert different == []


# ---- bad shapes: one line naming the layer, what it expects and what it got -------------------


def _built(layer, *shapes):
    layer.build(*shapes)
    return layer


BAD_SHAPES = [
    ("conv1d", lambda: L.Conv1D(2, 3).build((5,))),
    ("conv1d-short", lambda: L.Conv1D(2, 5).build((3, 2))),
    ("conv1d-channels", lambda: _built(L.Conv1D(2, 3), (5, 2))(torch.randn(1, 5, 3))),
    ("conv2dT", lambda: L.Conv2DTranspose(2, 3).build((5, 5))),
    ("conv2dT-channels", lambda: _built(L.Conv2DTranspose(2, 3), (4, 4, 3))(
        torch.randn(1, 4, 4, 2))),
    ("separable", lambda: L.SeparableConv2D(2, 3).build((5,))),
    ("depthwise-small", lambda: L.DepthwiseConv2D(3).build((2, 2, 1))),
    ("maxpool1d", lambda: L.MaxPool1D().build((3, 4, 5))),
    ("gap1d", lambda: L.GlobalAveragePooling1D().build((3,))),
    ("upsampling2d", lambda: L.UpSampling2D().build((4,))),
    ("zeropad2d", lambda: L.ZeroPadding2D().build((4, 3))),
    ("cropping2d", lambda: L.Cropping2D(3).build((5, 5, 1))),
    ("repeatvector", lambda: L.RepeatVector(2).build((3, 4))),
    ("permute", lambda: L.Permute((2, 1)).build((3,))),
    ("add", lambda: L.Add().build([(3,), (4,)])),
    ("concatenate", lambda: L.Concatenate().build([(2, 3), (4, 3)])),
    ("mha", lambda: L.MultiHeadAttention(2, 2).build((5,), (5, 3))),
    ("mha-width", lambda: _built(L.MultiHeadAttention(2, 2), (5, 3), (5, 3))(
        torch.randn(1, 5, 4), torch.randn(1, 5, 3))),
    ("bidirectional", lambda: L.Bidirectional(L.LSTM(2)).build((5,))),
    ("timedistributed", lambda: L.TimeDistributed(L.Dense(2)).build((3,))),
    ("lstm-width", lambda: _built(L.LSTM(2), (5, 3))(torch.randn(2, 5, 4))),
    ("random-flip", lambda: L.RandomFlip().build((4, 4))),
    ("normalization", lambda: L.Normalization(axis=2).build((3,))),
    ("masking", lambda: L.Masking().build(())),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_SHAPES, ids=[c[0] for c in BAD_SHAPES])
def test_bad_shapes_are_one_line_shape_errors(case):
    L.reset_layer_names()
    with pytest.raises(ShapeError) as info:
        case[1]()
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.split(" ")[0] in {cls.__name__ for cls in LAYERS.values()}  # the layer ...
    assert "'" in message.split(" ")[1]  # ... and its name
    assert "expects" in message and "got" in message


# ---- the stored tables: `python tests/test_keras_layer_parity.py` prints them from Keras ------


def _generate() -> str:
    table = {case[0]: _keras_reference(case)[1] for case in CASES}
    outputs = {}
    for case in NUMERIC_CASES:
        layer, inputs, kw = _numeric_setup(case)
        outputs[case[0]] = [round(float(v), 6) for v in _run_keras(case, layer, inputs, kw)]
    bn = [round(float(v), 6) for v in _keras_bn_state()]

    def wrapped(key: str, values: list[float]) -> list[str]:
        body = textwrap.wrap(", ".join(repr(v) for v in values), 88)
        return [f"    {key!r}: [", *[f"        {line}" for line in body], "    ],"]

    lines = ["# fmt: off", "KERAS_TABLE = {"]
    lines += [f"    {k!r}: {v!r}," for k, v in table.items()]
    lines += ["}", "", "KERAS_OUTPUTS = {"]
    for k, v in outputs.items():
        lines += wrapped(k, v)
    lines += ["}", "", "KERAS_BATCHNORM = ["]
    lines += [f"    {line}" for line in textwrap.wrap(", ".join(map(repr, bn)), 92)]
    lines += ["]", "# fmt: on"]
    return "\n".join(lines)


if __name__ == "__main__":
    if keras is None:
        raise SystemExit("needs keras with the torch backend: pip install keras")
    print(_generate())


# fmt: off
KERAS_TABLE = {
    'dense': (20, (5,)),
    'dense-3d-nobias': (12, (6, 4)),
    'activation': (0, (4,)),
    'dropout': (0, (4,)),
    'flatten': (0, (24,)),
    'reshape': (0, (3, 4)),
    'rescaling': (0, (5,)),
    'lambda': (0, (5,)),
    'embedding': (400, (7, 8)),
    'embedding-mask': (400, (7, 8)),
    'conv2d': (224, (7, 6, 8)),
    'conv2d-same-s2': (76, (5, 4, 4)),
    'conv2d-groups': (112, (7, 6, 4)),
    'maxpool2d': (0, (4, 4, 3)),
    'avgpool2d-same': (0, (5, 4, 3)),
    'gap2d': (0, (3,)),
    'gmp2d-keep': (0, (1, 1, 3)),
    'conv1d': (78, (8, 6)),
    'conv1d-causal': (78, (10, 6)),
    'conv1d-s2-groups': (42, (6, 6)),
    'maxpool1d': (0, (5, 4)),
    'avgpool1d-same': (0, (6, 4)),
    'gap1d': (0, (4,)),
    'gmp1d-keep': (0, (1, 4)),
    'conv2dT': (140, (6, 7, 5)),
    'conv2dT-same-s2': (140, (8, 10, 5)),
    'conv2dT-valid-s3-k2': (26, (12, 15, 2)),
    'conv2dT-same-s2-k4': (98, (8, 10, 2)),
    'conv2dT-outpad': (56, (8, 10, 2)),
    'separable': (96, (5, 4, 6)),
    'separable-same-s2': (51, (4, 3, 6)),
    'depthwise': (60, (7, 6, 6)),
    'upsampling2d': (0, (6, 12, 2)),
    'upsampling2d-bilinear': (0, (6, 8, 2)),
    'upsampling1d': (0, (12, 2)),
    'zeropad2d': (0, (6, 7, 2)),
    'zeropad1d': (0, (7, 2)),
    'cropping2d': (0, (4, 3, 2)),
    'repeatvector': (0, (4, 3)),
    'permute': (0, (3, 4)),
    'masking': (0, (5, 3)),
    'batchnorm': (20, (5,)),
    'batchnorm-image': (12, (4, 4, 3)),
    'layernorm': (10, (6, 5)),
    'layernorm-axes': (30, (6, 5)),
    'simplernn': (32, (4,)),
    'simplernn-seq-state': (32, [(5, 4), (4,)]),
    'lstm': (1600, (16,)),
    'lstm-nobias': (112, (4,)),
    'lstm-state': (128, [(4,), (4,), (4,)]),
    'gru': (108, (4,)),
    'gru-seq-state': (108, [(None, 4), (4,)]),
    'bidirectional-lstm': (256, (8,)),
    'bidirectional-gru-sum': (216, (5, 4)),
    'bidirectional-state': (256, [(8,), (4,), (4,), (4,), (4,)]),
    'timedistributed-dense': (15, (5, 3)),
    'timedistributed-conv': (20, (4, 4, 4, 2)),
    'mha': (144, (5, 6)),
    'mha-vdim-out': (261, (5, 5)),
    'mha-key-nobias': (108, (5, 6)),
    'add': (0, (4, 3)),
    'subtract': (0, (3,)),
    'multiply-3': (0, (3,)),
    'average': (0, (2, 3)),
    'maximum': (0, (3,)),
    'minimum': (0, (3,)),
    'concatenate': (0, (4, 8)),
    'concatenate-axis1': (0, (6, 3)),
    'normalization': (11, (5,)),
    'normalization-fixed': (0, (5,)),
    'normalization-image': (7, (4, 4, 3)),
    'random-flip': (0, (6, 6, 3)),
    'random-rotation': (0, (6, 6, 3)),
    'random-zoom': (0, (6, 6, 3)),
    'random-translation': (0, (6, 6, 3)),
    'random-crop': (0, (4, 5, 3)),
}

KERAS_OUTPUTS = {
    'dense': [
        -0.211536, 0.313321, -0.029717, -0.115082, 0.077941, 0.31264
    ],
    'conv2d-same-s2': [
        -0.028973, 0.909479, -0.326158, 0.812195, -2.235253, -0.326891, 0.422708, -0.858356,
        -0.277242, -0.903597, 0.572475, -0.970055
    ],
    'conv1d-causal': [
        0.475061, 0.054254, 0.115352, 0.07481, 0.745118, 0.400074, -0.038567, -0.677602,
        1.317452, 0.088213, -0.585492, -0.876589
    ],
    'conv2dT-same-s2': [
        0.517941, 0.266624, 0.074768, 1.2336, 0.217121, 0.356748, -0.151662, -0.129157,
        0.272346, 0.891804, 1.756639, 1.046339, 0.068188, 0.471348, 1.296178, 0.164439,
        1.052453, -0.248076, 0.144644, 0.203213, 0.180316, 0.381587, -0.134115, -0.393575
    ],
    'conv2dT-valid-s3-k2': [
        -0.480223, -0.545878, -0.287391, -0.035008, -0.909855, -0.287391, -0.287391, -0.287391,
        -0.287391, -0.279424, -0.518961, -0.287391, -0.696893, -1.164453, -0.287391, -0.287391,
        -0.287391, -0.287391
    ],
    'separable': [
        0.330559, -0.25146, 0.555521, 0.315142, 0.203471, 0.246957, 0.318371, 0.197421,
        -0.369582, -0.202982, -0.390189, 0.153775, 0.105553, -0.294367, 1.065499, -0.035267,
        -0.170468, 0.071205
    ],
    'depthwise': [
        0.391557, -0.217604, -0.091619, 0.404938, 1.052369, -0.546015, 0.025705, -0.091369,
        0.461515, 0.922322, 0.27353, -0.053686, 0.470909, -0.15087, -0.405302, 0.851116
    ],
    'layernorm-axes': [
        0.283859, -0.738491, 0.326363, 0.021149, 0.748688, 0.098345, 0.427463, -0.567352,
        -0.224386, -0.473939, 0.338874, 0.580952
    ],
    'avgpool2d-same': [
        0.234796, 0.460992, 0.415301, -0.144789, 0.305041, 0.249388, -0.593386, -0.046635,
        -0.289141
    ],
    'upsampling2d-bilinear': [
        1.045483, 1.29475, 1.793284, 2.042552, 0.967913, 1.081459, 1.30855, 1.422096, 0.812772,
        0.654875, 0.339081, 0.181184, 0.735202, 0.441584, -0.145653, -0.439271
    ],
    'lstm': [
        -0.079402, 0.194348, -0.106442, 0.071212
    ],
    'lstm-mask-holes': [
        0.122259, -0.042296, 0.167918, -0.053277, 0.167918, -0.053277, 0.338341, -0.079123, 0.0,
        0.0, 0.063708, -0.041227, 0.026147, -0.047757, 0.026147, -0.047757, 0.338341, -0.079123,
        0.026147, -0.047757, 0.597309, -0.306217, 0.042655, -0.069196
    ],
    'gru-backwards-mask': [
        0.0, 0.0, -0.159651, -0.366923, -0.079812, -0.242401, -0.224124, -0.480672, 0.0, 0.0,
        0.0, 0.0, 0.152403, 0.267409, 0.018767, 0.492793
    ],
    'simplernn-mask-left': [
        0.021775, -0.047026, -0.074388, -0.259078, 0.021775, -0.047026, -0.074388, -0.259078
    ],
    'bidirectional-mask': [
        0.070028, 0.0793, 0.19663, 0.026865, 0.176408, 0.132776, 0.139776, 0.016936, -0.048474,
        0.090718, 0.046747, 0.000481, 0.0, 0.0, 0.0, 0.0, 0.082825, 0.082132, 0.188461,
        -0.008985, -0.002473, 0.13119, 0.184862, -0.003193, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0
    ],
    'timedistributed': [
        -0.617005, -0.011525, -0.156844, -0.060969, -0.375808, -0.034383
    ],
    'mha-mask-scores': [
        -0.540433, -0.164666, -0.190075, 0.204636, -0.389334, -0.089272, -0.386679, 0.055049,
        -0.349484, 0.095699, -0.494608, 0.06345, 1.0, 0.0, 0.411115, 0.588885, 0.0, 0.0, 1.0,
        0.0, 0.500675, 0.499325, 0.0, 0.0
    ],
    'mha-causal': [
        -0.14551, 0.670886, -0.108886, 0.241764, 0.159955, 0.240536, 0.181706, -0.457061,
        -0.030279, 0.382326, 0.035088, -0.203682
    ],
}

KERAS_BATCHNORM = [
    -0.039761, 0.300473, -0.252001, 0.946643, 3.041888, 0.80923, 1.777443, 0.172963, -0.812761,
    0.459467, -0.382508, -0.829845
]
# fmt: on
