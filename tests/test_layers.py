"""Keras-style layers: one harness for the contract, then numerics against torch and by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from groundup.errors import ConfigError, DataError, ShapeError
from groundup.keras import activations as A
from groundup.keras import layers as L
from groundup.keras import regularizers as R
from groundup.keras.layers import layer_from_config


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def layer_test(layer, input_shape, expected_output_shape, *, make_input=None):
    """Check the whole layer contract in one call.

    Shapes include the batch axis. Builds `layer` lazily (first call) and a twin eagerly from
    its JSON config, checks output shapes against `compute_output_shape`, loads the state_dict
    into the twin and compares outputs, and runs a backward pass.
    """
    x = make_input(input_shape) if make_input else torch.randn(input_shape)
    sample, expected = tuple(input_shape[1:]), tuple(expected_output_shape)
    assert tuple(layer.compute_output_shape(sample)) == expected[1:]

    assert not layer.built
    y = layer(x)  # lazy build
    assert layer.built and layer.build_input_shape == sample
    assert tuple(y.shape) == expected
    assert tuple(layer.forward_logits(x).shape) == expected

    config = json.loads(json.dumps(layer.get_config()))  # must be JSON-serializable
    twin = layer_from_config(config)
    assert type(twin) is type(layer) and twin.name == layer.name and not twin.built
    assert twin.get_config() == config
    twin.build(sample)  # eager build, as Sequential does with input_shape
    assert twin.built
    assert [(n, p.shape) for n, p in twin.named_parameters()] == [
        (n, p.shape) for n, p in layer.named_parameters()
    ]
    twin.load_state_dict(layer.state_dict())
    layer.eval(), twin.eval()
    torch.testing.assert_close(twin(x), layer(x))
    assert tuple(twin(x).shape) == expected

    layer.train()
    x = x.clone().requires_grad_(x.is_floating_point())
    out = layer(x)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if x.is_floating_point():
        assert x.grad is not None
    return layer


def _ids(shape):
    return torch.randint(0, 10, shape)


# (id, layer factory, input shape, expected output shape); shapes include the batch axis.
CONTRACT_CASES = [
    ("dense", lambda: L.Dense(5), (4, 3), (4, 5)),
    ("dense-softmax-nobias", lambda: L.Dense(5, "softmax", use_bias=False), (4, 3), (4, 5)),
    ("dense-3d-l2", lambda: L.Dense(5, "relu", kernel_regularizer="l2"), (2, 6, 3), (2, 6, 5)),
    ("conv", lambda: L.Conv2D(4, 3), (2, 7, 6, 3), (2, 5, 4, 4)),
    (
        "conv-same",
        lambda: L.Conv2D(4, 3, padding="same", activation="relu"),
        (2, 7, 6, 3),
        (2, 7, 6, 4),
    ),
    (
        "conv-same-s2",
        lambda: L.Conv2D(4, (3, 2), strides=2, padding="same"),
        (2, 7, 6, 3),
        (2, 4, 3, 4),
    ),
    (
        "conv-dilated",
        lambda: L.Conv2D(4, 2, padding="same", dilation_rate=2),
        (2, 5, 5, 1),
        (2, 5, 5, 4),
    ),
    ("conv-nchw", lambda: L.Conv2D(4, 3, data_format="channels_first"), (2, 3, 7, 6), (2, 4, 5, 4)),
    ("maxpool", lambda: L.MaxPool2D(), (2, 7, 6, 3), (2, 3, 3, 3)),
    ("maxpool-same", lambda: L.MaxPooling2D(3, 2, padding="same"), (2, 7, 6, 3), (2, 4, 3, 3)),
    ("avgpool", lambda: L.AvgPool2D(), (2, 7, 6, 3), (2, 3, 3, 3)),
    ("avgpool-same", lambda: L.AveragePooling2D(2, padding="same"), (2, 7, 6, 3), (2, 4, 3, 3)),
    ("global-avg", lambda: L.GlobalAveragePooling2D(), (2, 5, 4, 3), (2, 3)),
    ("global-max-keep", lambda: L.GlobalMaxPooling2D(keepdims=True), (2, 5, 4, 3), (2, 1, 1, 3)),
    ("flatten", lambda: L.Flatten(), (2, 4, 3, 2), (2, 24)),
    ("flatten-1d", lambda: L.Flatten(), (2, 5), (2, 5)),
    ("dropout", lambda: L.Dropout(0.5), (4, 6), (4, 6)),
    ("batchnorm", lambda: L.BatchNormalization(), (8, 5), (8, 5)),
    (
        "batchnorm-image",
        lambda: L.BatchNormalization(gamma_regularizer="l1"),
        (4, 3, 3, 2),
        (4, 3, 3, 2),
    ),
    ("batchnorm-axis1", lambda: L.BatchNormalization(axis=1, center=False), (4, 3, 5), (4, 3, 5)),
    ("layernorm", lambda: L.LayerNormalization(), (4, 3, 5), (4, 3, 5)),
    ("layernorm-axes", lambda: L.LayerNormalization(axis=[1, 3]), (4, 3, 2, 5), (4, 3, 2, 5)),
    ("simplernn", lambda: L.SimpleRNN(4), (2, 5, 3), (2, 4)),
    ("simplernn-seq", lambda: L.SimpleRNN(4, "relu", return_sequences=True), (2, 5, 3), (2, 5, 4)),
    ("lstm", lambda: L.LSTM(4), (2, 5, 3), (2, 4)),
    ("lstm-seq", lambda: L.LSTM(4, return_sequences=True, use_bias=False), (2, 5, 3), (2, 5, 4)),
    ("gru", lambda: L.GRU(4), (2, 5, 3), (2, 4)),
    ("gru-seq", lambda: L.GRU(4, return_sequences=True), (2, 5, 3), (2, 5, 4)),
    ("activation", lambda: L.Activation("softmax"), (3, 4), (3, 4)),
    ("reshape", lambda: L.Reshape((3, -1)), (2, 12), (2, 3, 4)),
    ("reshape-eager", lambda: L.Reshape([2, 2, 3], input_shape=(12,)), (2, 12), (2, 2, 2, 3)),
    ("input", lambda: L.Input(shape=(4, 3)), (2, 4, 3), (2, 4, 3)),
    ("input-free-axis", lambda: L.Input(shape=(None, 3)), (2, 6, 3), (2, 6, 3)),
    ("rescaling", lambda: L.Rescaling(1 / 255, offset=-1.0), (2, 3), (2, 3)),
]


@pytest.mark.parametrize(
    ("make", "in_shape", "out_shape"),
    [case[1:] for case in CONTRACT_CASES],
    ids=[case[0] for case in CONTRACT_CASES],
)
def test_layer_contract(make, in_shape, out_shape):
    layer_test(make(), in_shape, out_shape)


def test_embedding_contract():
    layer = layer_test(L.Embedding(10, 4), (2, 6), (2, 6, 4), make_input=_ids)
    assert layer.embeddings.abs().max() <= 0.05  # Keras' uniform(-0.05, 0.05) default


# ---- numerics ----------------------------------------------------------------------------------


def test_dense_equals_matmul_plus_bias():
    layer = L.Dense(5, bias_initializer="normal")
    x = torch.randn(4, 3)
    y = layer(x)
    assert layer.kernel.shape == (3, 5)
    torch.testing.assert_close(y, x @ layer.kernel + layer.bias)
    x3 = torch.randn(2, 7, 3)
    torch.testing.assert_close(layer(x3), x3 @ layer.kernel + layer.bias)


def test_output_activation_and_forward_logits():
    dense = L.Dense(5, activation="softmax")
    x = torch.randn(4, 3)
    assert dense.output_activation == "softmax" and dense.activation == "softmax"
    torch.testing.assert_close(dense(x), torch.softmax(dense.forward_logits(x), dim=-1))
    assert L.Dense(5).output_activation is None
    assert L.Dense(5, activation="linear").activation is None
    act = L.Activation("sigmoid")
    assert act.output_activation == "sigmoid"
    torch.testing.assert_close(act.forward_logits(x), x)
    torch.testing.assert_close(act(x), torch.sigmoid(x))
    # An internal (recurrent) activation is not an output activation.
    rnn = L.SimpleRNN(3)
    assert rnn.activation == "tanh" and rnn.output_activation is None


def test_conv2d_channels_last_equals_torch_nchw():
    layer = L.Conv2D(4, 3, strides=(1, 2), bias_initializer="normal")
    x = torch.randn(2, 9, 8, 3)  # (B, H, W, C)
    y = layer(x)
    assert layer.kernel.shape == (4, 3, 3, 3)
    ref = F.conv2d(x.permute(0, 3, 1, 2).contiguous(), layer.kernel, layer.bias, (1, 2))
    torch.testing.assert_close(y, ref.permute(0, 2, 3, 1))
    assert y.is_contiguous()  # channels-last output without a copy back


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_conv2d_same_padding_matches_tensorflow_rule():
    x = torch.randn(1, 6, 5, 2)
    # stride 2: out = ceil(6/2)=3, pad total (3-1)*2+3-6 = 1 -> (0 top, 1 bottom); width
    # out = 3, total (3-1)*2+3-5 = 2 -> (1, 1).
    layer = L.Conv2D(3, 3, strides=2, padding="same")
    y = layer(x)
    xp = F.pad(x.permute(0, 3, 1, 2), (1, 1, 0, 1))
    ref = F.conv2d(xp, layer.kernel, layer.bias, 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(y, ref)
    assert y.is_contiguous()
    # stride 1, even kernel: torch's own padding="same" puts the extra cell on the right too.
    even = L.Conv2D(3, 2, padding="same")
    y = even(x)
    ref = F.conv2d(x.permute(0, 3, 1, 2), even.kernel, even.bias, padding="same")
    torch.testing.assert_close(y, ref.permute(0, 2, 3, 1))


def test_pooling_same_hand_computed():
    x = torch.arange(1.0, 10.0).reshape(1, 3, 3, 1)  # [[1,2,3],[4,5,6],[7,8,9]]
    mx = L.MaxPool2D(2, padding="same")(x)
    torch.testing.assert_close(mx[0, :, :, 0], torch.tensor([[5.0, 6.0], [8.0, 9.0]]))
    avg = L.AvgPool2D(2, padding="same")(x)  # padded cells are not counted
    torch.testing.assert_close(avg[0, :, :, 0], torch.tensor([[3.0, 4.5], [7.5, 9.0]]))
    neg = L.MaxPool2D(2, padding="same")(-x)  # the -inf padding never wins
    torch.testing.assert_close(neg[0, :, :, 0], torch.tensor([[-1.0, -3.0], [-7.0, -9.0]]))
    valid = L.MaxPool2D(2)(x)
    torch.testing.assert_close(valid[0, :, :, 0], torch.tensor([[5.0]]))


def test_flatten_is_keras_hwc_order():
    x = torch.randn(2, 3, 4, 5)  # (B, H, W, C)
    y = L.Flatten()(x)
    torch.testing.assert_close(y[1, 5 * (4 * 1 + 2) + 3], x[1, 1, 2, 3])


def test_batchnorm_keras_momentum_and_statistics():
    layer = L.BatchNormalization(momentum=0.99, epsilon=1e-3)
    x = torch.randn(16, 4) * 3 + 2
    y = layer(x)  # training mode
    mean, var = x.mean(0), x.var(0, unbiased=False)
    torch.testing.assert_close(layer.moving_mean, 0.99 * 0 + 0.01 * mean)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + 1e-3))
    layer.eval()
    ev = layer(x)
    ref = (x - layer.moving_mean) / torch.sqrt(layer.moving_variance + 1e-3)
    torch.testing.assert_close(ev, ref)


def test_batchnorm_channels_last_images():
    layer = L.BatchNormalization()
    x = torch.randn(4, 3, 3, 2)  # (B, H, W, C): one statistic per channel
    layer(x)
    torch.testing.assert_close(layer.moving_mean, 0.01 * x.mean(dim=(0, 1, 2)))
    assert layer.gamma.shape == (2,)


def test_layernorm_matches_formula():
    x = torch.randn(2, 3, 4, 5)
    last = L.LayerNormalization(gamma_initializer="normal")
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(last(x), (x - mean) / torch.sqrt(var + 1e-3) * last.gamma)
    multi = L.LayerNormalization(axis=[1, 3], beta_initializer="normal")
    y = multi(x)
    assert multi.gamma.shape == (3, 1, 5)
    mean = x.mean(dim=(1, 3), keepdim=True)
    var = x.var(dim=(1, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + 1e-3) + multi.beta)


@pytest.mark.parametrize(
    ("ours", "ref_cls"),
    [(L.LSTM, torch.nn.LSTM), (L.GRU, torch.nn.GRU), (L.SimpleRNN, torch.nn.RNN)],
)
def test_recurrent_equals_torch(ours, ref_cls):
    x = torch.randn(3, 6, 4)
    seq, last = ours(5, return_sequences=True), ours(5)
    seq.build((6, 4)), last.build((6, 4))
    ref = ref_cls(4, 5, batch_first=True)
    ref.load_state_dict({k.removeprefix("rnn."): v for k, v in seq.state_dict().items()})
    last.load_state_dict(seq.state_dict())
    expected, _ = ref(x)
    torch.testing.assert_close(seq(x), expected)
    torch.testing.assert_close(last(x), expected[:, -1])


def test_recurrent_keras_initialization():
    lstm = L.LSTM(3)
    lstm.build((5, 2))
    b = lstm.rnn.bias_ih_l0
    torch.testing.assert_close(b[3:6], torch.ones(3))  # unit_forget_bias on the forget gate
    assert b[:3].abs().sum() == 0 and b[6:].abs().sum() == 0
    assert lstm.rnn.bias_hh_l0.abs().sum() == 0
    w_hh = lstm.rnn.weight_hh_l0  # (4*units, units): orthogonal columns
    torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(3), atol=1e-5, rtol=0)


def test_glorot_uniform_bound_and_initializer_names():
    layer = L.Dense(50)
    layer.build((30,))
    assert layer.kernel.abs().max() <= math.sqrt(6 / 80)
    assert layer.kernel.abs().max() > 0.8 * math.sqrt(6 / 80)
    he = L.Dense(400, kernel_initializer="he_normal")
    he.build((300,))
    assert abs(he.kernel.std().item() - math.sqrt(2 / 300)) < 0.05 * math.sqrt(2 / 300)
    assert he.kernel.abs().max() <= 2 * math.sqrt(2 / 300) / 0.87962566103423978 + 1e-6
    assert {"glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal"} <= set(
        L.INITIALIZERS
    )
    with pytest.raises(ConfigError, match="did you mean 'he_normal'"):
        L.Dense(3, kernel_initializer="he_nromal")


# ---- activations and regularizers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("relu", torch.relu),
        ("gelu", lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))),
        ("tanh", torch.tanh),
        ("sigmoid", torch.sigmoid),
        ("softmax", lambda x: torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)),
        ("log_softmax", lambda x: x - torch.logsumexp(x, -1, keepdim=True)),
        ("leaky_relu", lambda x: torch.where(x > 0, x, 0.2 * x)),
        ("elu", lambda x: torch.where(x > 0, x, torch.exp(x) - 1)),
        (
            "selu",
            lambda x: (
                1.0507009873554805 * torch.where(x > 0, x, 1.6732632423543772 * (torch.exp(x) - 1))
            ),
        ),  # fmt: skip
        ("silu", lambda x: x * torch.sigmoid(x)),
        ("swish", lambda x: x * torch.sigmoid(x)),
        ("softplus", lambda x: torch.log1p(torch.exp(x))),
        ("softsign", lambda x: x / (1 + x.abs())),
        ("hard_sigmoid", lambda x: torch.clamp(x + 3, 0, 6) / 6),
        ("exponential", torch.exp),
        ("linear", lambda x: x),
        ("RELU", torch.relu),
    ],
)
def test_activations_match_formulas(name, ref):
    x = torch.randn(3, 7) * 3
    torch.testing.assert_close(A.get_activation(name)(x), ref(x))


def test_get_activation_specs():
    x = torch.randn(4)
    assert A.get_activation(None)(x) is x
    assert A.get_activation(torch.tanh) is torch.tanh
    with pytest.raises(ConfigError, match="did you mean 'softmax'"):
        A.get_activation("sotfmax")
    with pytest.raises(ConfigError, match="activation must be"):
        A.get_activation(3)


def test_custom_activation_runs_but_cannot_be_saved():
    def cube(x):
        return x**3

    layer = L.Dense(2, activation=cube)
    x = torch.randn(3, 2)
    torch.testing.assert_close(layer(x), layer.forward_logits(x) ** 3)
    assert layer.activation == "cube"
    with pytest.raises(ConfigError, match="custom activation 'cube'"):
        layer.get_config()
    # A registered function passed as a callable is saved by its name.
    assert L.Dense(2, activation=A.ACTIVATIONS["gelu"]).get_config()["activation"] == "gelu"


def test_regularizer_penalties():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    torch.testing.assert_close(R.L1(0.1)(w), torch.tensor(0.1 * 6.5))
    torch.testing.assert_close(R.L2(0.1)(w), torch.tensor(0.1 * 14.25))
    torch.testing.assert_close(R.L1L2(l1=0.1, l2=0.2)(w), torch.tensor(0.65 + 0.2 * 14.25))
    assert R.get_regularizer("l2") == R.L2(0.01)
    assert R.get_regularizer("L1") == R.L1(0.01)
    assert R.get_regularizer("l1_l2") == R.L1L2(0.01, 0.01)
    assert R.get_regularizer({"type": "L2", "l2": 1e-4}) == R.L2(1e-4)
    assert R.get_regularizer({"class_name": "L1L2", "config": {"l1": 0.5}}) == R.L1L2(0.5, 0.0)
    assert R.get_regularizer(R.L2(0.3).get_config()) == R.L2(0.3)
    with pytest.raises(ConfigError, match="did you mean 'l2'"):
        R.get_regularizer({"type": "L2", "l_2": 1.0})
    with pytest.raises(ConfigError, match="unknown regularizer 'l3'"):
        R.get_regularizer("l3")
    with pytest.raises(ConfigError, match=">= 0"):
        R.L2(-1.0)


def test_layer_regularization_loss():
    assert L.Dense(3).regularization_loss() is None
    built = L.Dense(3)
    built.build((4,))
    assert built.regularization_loss() is None
    layer = L.Dense(3, kernel_regularizer=R.L2(0.1), bias_regularizer=R.L1(0.5))
    layer.build((4,))
    with torch.no_grad():
        layer.bias.fill_(-1.0)
    expected = 0.1 * layer.kernel.square().sum() + 0.5 * 3.0
    torch.testing.assert_close(layer.regularization_loss(), expected)
    layer.regularization_loss().backward()
    torch.testing.assert_close(layer.kernel.grad, 0.2 * layer.kernel.detach())
    lstm = L.LSTM(2, recurrent_regularizer="l2")
    lstm.build((3, 4))
    torch.testing.assert_close(
        lstm.regularization_loss(), 0.01 * lstm.rnn.weight_hh_l0.square().sum()
    )
    cfg = layer.get_config()
    assert cfg["kernel_regularizer"] == {"type": "L2", "l2": 0.1}
    rebuilt = layer_from_config(cfg)
    rebuilt.build((4,))
    rebuilt.load_state_dict(layer.state_dict())
    torch.testing.assert_close(rebuilt.regularization_loss(), expected)


# ---- names, configs, errors ----------------------------------------------------------------------


def test_automatic_names():
    L.reset_layer_names()
    assert [L.Dense(2).name for _ in range(3)] == ["dense", "dense_1", "dense_2"]
    assert L.Conv2D(2, 3).name == "conv2d"
    assert L.BatchNormalization().name == "batch_normalization"
    assert L.SimpleRNN(2).name == "simple_rnn"
    assert L.Dense(2, name="head").name == "head"


def test_layer_from_config_errors():
    with pytest.raises(ConfigError, match=r"unknown argument 'unit' for layer Dense \(did you mean 'units'\?\); valid arguments: units, activation"):  # fmt: skip
        layer_from_config({"type": "Dense", "unit": 64})
    with pytest.raises(ConfigError, match="did you mean 'dense'"):
        layer_from_config({"type": "Dens", "units": 64})
    with pytest.raises(ConfigError, match="'type' key"):
        layer_from_config({"units": 64})
    with pytest.raises(ConfigError, match="needs the argument 'units'"):
        layer_from_config({"type": "Dense"})
    assert isinstance(layer_from_config({"type": "maxpooling2d"}), L.MaxPool2D)
    assert layer_from_config({"type": "Dense", "units": 3, "input_shape": [4]}).input_shape == (4,)


def test_dense_width_mismatch_is_a_shape_error():
    layer = L.Dense(10, name="dense_1")
    layer(torch.randn(2, 784))
    with pytest.raises(
        ShapeError, match="Dense 'dense_1' expects inputs of width 784, got width 100"
    ):
        layer(torch.randn(2, 100))
    with pytest.raises(ShapeError, match="expects inputs of width 784"):
        layer(torch.randn(784))


def test_shape_errors():
    with pytest.raises(
        ShapeError, match=r"expects images of shape \(batch, height, width, channels\)"
    ):
        L.Conv2D(2, 3)(torch.randn(2, 784))
    conv = L.Conv2D(2, 3)
    conv(torch.randn(1, 5, 5, 3))
    with pytest.raises(ShapeError, match="expects images"):
        conv(torch.randn(5, 5, 3))
    with pytest.raises(ShapeError, match="expects 3 input channels, got 1"):
        conv(torch.randn(1, 5, 5, 1))
    with pytest.raises(ShapeError, match="smaller than the window 3x3"):
        L.Conv2D(2, 3).build((2, 2, 1))
    with pytest.raises(ShapeError, match=r"sequences of shape \(batch, time, features\)"):
        L.LSTM(2)(torch.randn(2, 3))
    with pytest.raises(ShapeError, match="cannot reshape"):
        L.Reshape((5, -1)).build((12,))
    with pytest.raises(ShapeError, match="expects inputs of shape"):
        L.Input(shape=(4,))(torch.randn(2, 5))
    with pytest.raises(ShapeError, match="needs a known input width"):
        L.Dense(3).build((None,))
    with pytest.raises(DataError, match="integer token ids"):
        L.Embedding(10, 3)(torch.randn(2, 4))
    bn = L.BatchNormalization()
    bn(torch.randn(4, 3))
    with pytest.raises(ShapeError, match="3 features"):
        bn(torch.randn(4, 5))


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: L.Dense(0), "units must be a positive integer"),
        (lambda: L.Dense(-3), "units must be a positive integer"),
        (lambda: L.Dropout(1.0), r"rate must be a number in \[0, 1\)"),
        (lambda: L.Dropout(-0.1), "rate must be"),
        (
            lambda: L.Conv2D(4, 3, padding="vaild"),
            "unknown padding 'vaild' \\(did you mean 'valid'",
        ),
        (lambda: L.MaxPool2D(padding="full"), "valid values: valid, same"),
        (lambda: L.Conv2D(4, (3, 3, 3)), "kernel_size must be"),
        (lambda: L.Conv2D(4, 3, data_format="nhwc"), "unknown data_format"),
        (lambda: L.BatchNormalization(momentum=1.5), "momentum must be"),
        (lambda: L.LayerNormalization(epsilon=0), "epsilon must be a number > 0"),
        (lambda: L.Reshape((-1, -1)), "at most one -1"),
        (lambda: L.SimpleRNN(3, activation="sigmoid"), "not supported"),
        (lambda: L.LSTM(3, activation="relu"), "not supported"),
        (lambda: L.Dense(3, activation="rleu"), "did you mean 'relu'"),
        (lambda: L.Dense(3, input_shape=(0,)), "input_shape must hold positive ints"),
        (lambda: L.Embedding(0, 3), "input_dim must be a positive integer"),
    ],
)
def test_config_errors(make, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make()


def test_batchnorm_axis_error_names_the_axis():
    with pytest.raises(ShapeError, match="axis 0 is not a feature axis"):
        L.BatchNormalization(axis=0).build((3,))


def test_build_is_idempotent_and_recorded():
    layer = L.Dense(3, input_shape=(4,))
    assert layer.input_shape == (4,) and not layer.built
    layer.build((4,))
    kernel = layer.kernel
    layer.build((4,))
    assert layer.kernel is kernel and layer.count_params() == 15
    assert layer.get_config()["input_shape"] == [4]
