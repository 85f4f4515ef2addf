"""Losses against torch.nn.functional and hand-computed Keras values; sum/count vs mean."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from groundup.errors import ConfigError, ShapeError
from groundup.train.losses import (
    LOSSES,
    CallableLoss,
    CategoricalCrossentropy,
    Huber,
    Loss,
    MeanSquaredError,
    SparseCategoricalCrossentropy,
    get_loss,
)


def close(a: torch.Tensor, b: torch.Tensor | float, tol: float = 1e-5) -> bool:
    return torch.allclose(
        torch.as_tensor(a, dtype=torch.float64),
        torch.as_tensor(b, dtype=torch.float64),
        rtol=tol,
        atol=tol,
    )


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --- regression losses -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, ref",
    [
        ("mse", F.mse_loss),
        ("mae", F.l1_loss),
        ("huber", F.huber_loss),
    ],
)
def test_regression_losses_match_torch(name, ref, gen):
    o = torch.randn(6, 3, generator=gen) * 2
    t = torch.randn(6, 3, generator=gen)
    loss = get_loss(name)
    assert close(loss(o, t), ref(o, t))
    assert close(loss.sum(o, t) / loss.count(t), ref(o, t))
    assert loss.count(t) == 18


def test_keras_documented_values():
    # The inputs of the Keras loss docs; CE/huber/KLD values are the ones those docs print.
    y_true = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    y_pred = torch.tensor([[0.6, 0.4], [0.4, 0.6]])
    assert close(get_loss("mse")(y_pred, y_true), (0.36 + 0.36 + 0.16 + 0.36) / 4)
    assert close(get_loss("mae")(y_pred, y_true), (0.6 + 0.6 + 0.4 + 0.6) / 4)
    assert close(get_loss("huber")(y_pred, y_true), 0.155)
    assert close(get_loss("binary_crossentropy")(y_pred, y_true), 0.815, tol=1e-3)
    assert close(get_loss("kld")(y_pred, y_true), 0.458, tol=1e-3)
    cce_true = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    cce_pred = torch.tensor([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
    assert close(get_loss("categorical_crossentropy")(cce_pred, cce_true), 1.177, tol=1e-3)
    sparse = get_loss("sparse_categorical_crossentropy")
    assert close(sparse(cce_pred, torch.tensor([1, 2])), 1.177, tol=1e-3)


def test_huber_delta_hand_computed():
    o = torch.tensor([0.0, 0.0, 0.0])
    t = torch.tensor([0.5, 2.0, -3.0])
    # delta=2: 0.5*0.25, 0.5*4 (|x| == delta), 2*(3 - 1)
    expected = (0.125 + 2.0 + 4.0) / 3
    assert close(Huber(delta=2.0)(o, t), expected)
    assert close(get_loss("huber", delta=2.0)(o, t), F.huber_loss(o, t, delta=2.0))


def test_regression_column_output_with_flat_targets_does_not_broadcast(gen):
    o = torch.randn(5, 1, generator=gen)
    t = torch.randn(5, generator=gen)
    assert close(get_loss("mse")(o, t), F.mse_loss(o.squeeze(1), t))
    # integer targets are cast, not refused
    ti = torch.tensor([1, 0, 2, 1, 0])
    assert close(get_loss("mae")(o, ti), F.l1_loss(o.squeeze(1), ti.float()))


# --- binary cross-entropy ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (7, 1), (7, 3)])
def test_binary_ce_from_logits_and_probs(shape, gen):
    logits = torch.randn(*shape, generator=gen) * 3
    t = (torch.rand(*shape, generator=gen) > 0.5).float()
    ref = F.binary_cross_entropy_with_logits(logits, t)
    assert close(get_loss("bce", from_logits=True)(logits, t), ref)
    assert close(get_loss("binary_crossentropy")(torch.sigmoid(logits), t), ref, tol=1e-4)


def test_binary_ce_column_outputs_flat_int_targets(gen):
    logits = torch.randn(6, 1, generator=gen)
    t = torch.tensor([0, 1, 1, 0, 1, 0])
    ref = F.binary_cross_entropy_with_logits(logits.squeeze(1), t.float())
    assert close(get_loss("bce", from_logits=True)(logits, t), ref)


def test_binary_ce_probabilities_are_clamped_like_keras():
    # a probability of 0 for a positive target costs -log(1e-7), not inf
    loss = get_loss("bce")(torch.tensor([0.0]), torch.tensor([1.0]))
    assert close(loss, -math.log(1e-7), tol=1e-4)
    # and 1 for a negative one is clamped to 1 - 1e-7 (rounded in float32): finite
    assert torch.isfinite(get_loss("bce")(torch.tensor([1.0]), torch.tensor([0.0])))


def test_binary_ce_label_smoothing_hand_computed():
    p = torch.tensor([0.9, 0.2])
    t = torch.tensor([1.0, 0.0])
    s = 0.2
    ts = [1 - s / 2, s / 2]  # t * (1 - s) + 0.5 * s
    expected = -sum(
        ti * math.log(pi) + (1 - ti) * math.log(1 - pi)
        for ti, pi in zip(ts, p.tolist(), strict=True)
    )
    assert close(get_loss("bce", label_smoothing=s)(p, t), expected / 2)
    logits = torch.logit(p)
    assert close(get_loss("bce", from_logits=True, label_smoothing=s)(logits, t), expected / 2)


# --- categorical cross-entropy ------------------------------------------------------------


def test_categorical_ce_matches_torch(gen):
    logits = torch.randn(8, 5, generator=gen)
    t = torch.softmax(torch.randn(8, 5, generator=gen), -1)  # probability targets
    ref = F.cross_entropy(logits, t)
    assert close(get_loss("categorical_crossentropy", from_logits=True)(logits, t), ref)
    assert close(get_loss("categorical_crossentropy")(torch.softmax(logits, -1), t), ref)


def test_categorical_ce_label_smoothing_on_one_hot_hand_computed():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    t = torch.tensor([[0.0, 1.0, 0.0]])
    s = 0.3
    smooth = [s / 3, 1 - s + s / 3, s / 3]
    log_p = torch.log_softmax(logits, -1)[0].tolist()
    expected = -sum(a * b for a, b in zip(smooth, log_p, strict=True))
    cce = CategoricalCrossentropy(from_logits=True, label_smoothing=s)
    assert close(cce(logits, t), expected)
    probs = CategoricalCrossentropy(label_smoothing=s)
    assert close(probs(torch.softmax(logits, -1), t), expected)


def test_categorical_ce_sequence_shape_and_int_one_hot(gen):
    logits = torch.randn(2, 4, 6, generator=gen)
    labels = torch.randint(0, 6, (2, 4), generator=gen)
    one_hot = F.one_hot(labels, 6)  # int64 one-hot
    loss = get_loss("categorical_crossentropy", from_logits=True)
    assert close(loss(logits, one_hot), F.cross_entropy(logits.reshape(-1, 6), labels.reshape(-1)))
    assert loss.count(one_hot) == 8


# --- sparse categorical cross-entropy -----------------------------------------------------


def test_sparse_ce_matches_torch_2d_and_3d(gen):
    logits = torch.randn(5, 7, generator=gen)
    t = torch.randint(0, 7, (5,), generator=gen)
    sparse = get_loss("sparse_categorical_crossentropy", from_logits=True)
    assert close(sparse(logits, t), F.cross_entropy(logits, t))
    seq = torch.randn(3, 4, 7, generator=gen)
    ts = torch.randint(0, 7, (3, 4), generator=gen)
    assert close(sparse(seq, ts), F.cross_entropy(seq.reshape(-1, 7), ts.reshape(-1)))
    probs = get_loss("sparse_categorical_crossentropy")
    assert close(
        probs(torch.softmax(seq, -1), ts), F.cross_entropy(seq.reshape(-1, 7), ts.reshape(-1))
    )


def test_sparse_ce_accepts_column_and_float_targets(gen):
    logits = torch.randn(4, 3, generator=gen)
    t = torch.tensor([0, 2, 1, 2])
    sparse = get_loss("sparse_categorical_crossentropy", from_logits=True)
    ref = F.cross_entropy(logits, t)
    assert close(sparse(logits, t.unsqueeze(1)), ref)
    assert close(sparse(logits, t.float()), ref)
    assert sparse.count(t.unsqueeze(1)) == 4


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_sparse_ce_ignore_index_and_label_smoothing(from_logits, smoothing, gen):
    logits = torch.randn(2, 5, 6, generator=gen)
    t = torch.randint(0, 6, (2, 5), generator=gen)
    t[0, :2] = -100
    t[1, 4] = -100
    ref = F.cross_entropy(logits.reshape(-1, 6), t.reshape(-1), label_smoothing=smoothing)
    loss = SparseCategoricalCrossentropy(from_logits=from_logits, label_smoothing=smoothing)
    outputs = logits if from_logits else torch.softmax(logits, -1)
    assert close(loss(outputs, t), ref)
    assert int(loss.count(t)) == 7
    assert close(loss.sum(outputs, t) / loss.count(t), ref)


def test_sparse_ce_label_smoothing_hand_computed():
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    t = torch.tensor([3])
    s = 0.2
    log_p = torch.log_softmax(logits, -1)[0]
    expected = -(1 - s) * log_p[3] - s * log_p.mean()
    loss = get_loss("sparse_categorical_crossentropy", from_logits=True, label_smoothing=s)
    assert close(loss(logits, t), expected)


def test_sparse_ce_custom_ignore_index_and_none(gen):
    logits = torch.randn(6, 4, generator=gen)
    t = torch.tensor([0, 3, 0, 1, 2, 0])
    pad0 = SparseCategoricalCrossentropy(from_logits=True, ignore_index=0)
    assert close(pad0(logits, t), F.cross_entropy(logits, t, ignore_index=0))
    assert int(pad0.count(t)) == 3
    keep_all = SparseCategoricalCrossentropy(from_logits=True, ignore_index=None)
    assert keep_all.count(t) == 6
    assert close(keep_all(logits, t), F.cross_entropy(logits, t))


# --- KL divergence -------------------------------------------------------------------------


def test_kld_matches_torch_and_clamps_zeros(gen):
    p = torch.softmax(torch.randn(4, 5, generator=gen), -1)
    q = torch.softmax(torch.randn(4, 5, generator=gen), -1)
    ref = F.kl_div(p.log(), q, reduction="batchmean")  # KL(q || p)
    assert close(get_loss("kl_divergence")(p, q), ref)
    # a zero in the prediction where the target has mass: finite (clamped), not inf
    pz = torch.tensor([[0.0, 1.0]])
    qz = torch.tensor([[0.5, 0.5]])
    expected = 0.5 * math.log(0.5 / 1e-7) + 0.5 * math.log(0.5)
    assert close(get_loss("kld")(pz, qz), expected, tol=1e-4)


# --- sample weights ------------------------------------------------------------------------


def test_sample_weights_keras_sum_over_batch_size(gen):
    o = torch.randn(4, 3, generator=gen)
    t = torch.randn(4, 3, generator=gen)
    w = torch.tensor([1.0, 0.0, 2.0, 0.5])
    per_sample = ((o - t) ** 2).mean(1)
    expected = (per_sample * w).sum() / 4  # divided by the unweighted count
    assert close(get_loss("mse")(o, t, weight=w), expected)


def test_sample_weights_sparse_ce_sequence_with_ignore(gen):
    logits = torch.randn(3, 4, 5, generator=gen)
    t = torch.randint(0, 5, (3, 4), generator=gen)
    t[2, 1:] = -100
    w = torch.tensor([2.0, 1.0, 0.5])
    per_tok = F.cross_entropy(logits.reshape(-1, 5), t.reshape(-1), reduction="none").view(3, 4)
    expected = (per_tok * w[:, None]).sum() / (t != -100).sum()
    for from_logits in (True, False):
        loss = SparseCategoricalCrossentropy(from_logits=from_logits)
        out = logits if from_logits else torch.softmax(logits, -1)
        assert close(loss(out, t, weight=w), expected)


@pytest.mark.parametrize(
    "name",
    [
        "mse",
        "mae",
        "huber",
        "bce",
        "categorical_crossentropy",
        "sparse_categorical_crossentropy",
        "kld",
    ],
)
def test_unit_weights_equal_no_weights_and_sum_over_count(name, gen):
    b = 6
    if name == "sparse_categorical_crossentropy":
        o = torch.softmax(torch.randn(b, 4, generator=gen), -1)
        t = torch.randint(0, 4, (b,), generator=gen)
    elif name in ("categorical_crossentropy", "kld"):
        o = torch.softmax(torch.randn(b, 4, generator=gen), -1)
        t = torch.softmax(torch.randn(b, 4, generator=gen), -1)
    else:
        o = torch.rand(b, 2, generator=gen)
        t = (torch.rand(b, 2, generator=gen) > 0.5).float()
    loss = get_loss(name)
    ones = torch.ones(b)
    assert close(loss(o, t, weight=ones), loss(o, t))
    assert close(loss.sum(o, t, weight=ones), loss.sum(o, t))
    assert close(loss.sum(o, t) / loss.count(t), loss(o, t))
    w = torch.rand(b, generator=gen)
    assert close(loss.sum(o, t, weight=w) / loss.count(t), loss(o, t, weight=w))


# --- accumulation: k micro-batches equal one big batch --------------------------------------


@pytest.mark.parametrize("from_logits", [True, False])
def test_accumulation_with_masked_tokens_equals_full_batch(from_logits, gen):
    loss = SparseCategoricalCrossentropy(from_logits=from_logits, label_smoothing=0.1)
    logits = torch.randn(6, 5, 8, generator=gen)
    t = torch.randint(0, 8, (6, 5), generator=gen)
    # uneven masking: micro-batch means would weigh tokens unequally
    t[0, 1:] = -100
    t[3, :3] = -100
    t[5, 2] = -100
    outputs = logits if from_logits else torch.softmax(logits, -1)
    full = loss(outputs, t)
    chunks = [(outputs[i : i + 2], t[i : i + 2]) for i in range(0, 6, 2)]
    total = sum(loss.sum(o, y) for o, y in chunks)
    count = sum(loss.count(y) for _, y in chunks)
    assert close(total / count, full)
    naive = sum(loss(o, y) for o, y in chunks) / 3
    assert not close(naive, full)  # the bug this guards against

    # and the gradients match too
    leaf = logits.clone().requires_grad_(True)
    out = leaf if from_logits else torch.softmax(leaf, -1)
    loss(out, t).backward()
    full_grad = leaf.grad.clone()
    leaf.grad = None
    count = sum(loss.count(t[i : i + 2]) for i in range(0, 6, 2))
    for i in range(0, 6, 2):
        out = leaf if from_logits else torch.softmax(leaf, -1)
        (loss.sum(out[i : i + 2], t[i : i + 2]) / count).backward()
    assert torch.allclose(leaf.grad, full_grad, atol=1e-6)


def test_accumulation_mse_equals_full_batch(gen):
    loss = get_loss("mse")
    o = torch.randn(9, 2, generator=gen)
    t = torch.randn(9, 2, generator=gen)
    parts = [(o[:2], t[:2]), (o[2:7], t[2:7]), (o[7:], t[7:])]
    total = sum(loss.sum(a, b) for a, b in parts)
    count = sum(loss.count(b) for _, b in parts)
    assert close(total / count, loss(o, t))


# --- numerical stability and the logits path ----------------------------------------------


def test_large_logits_are_finite_and_exact():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-5e3, 1e4, 2e3]])
    t = torch.tensor([1, 0])
    ref = -torch.log_softmax(logits.double(), -1)[torch.arange(2), t].mean()
    sparse = get_loss("sparse_categorical_crossentropy", from_logits=True)
    value = sparse(logits, t)
    assert torch.isfinite(value)
    assert close(value, ref, tol=1e-3)
    cce = get_loss("categorical_crossentropy", from_logits=True)
    assert close(cce(logits, F.one_hot(t, 3).float()), ref, tol=1e-3)
    bce = get_loss("bce", from_logits=True)
    b = bce(torch.tensor([1e4, -1e4]), torch.tensor([0.0, 1.0]))
    assert torch.isfinite(b) and close(b, 1e4, tol=1e-3)


def test_with_logits_copy_matches_probability_loss(gen):
    logits = torch.randn(5, 4, generator=gen)
    t = torch.randint(0, 4, (5,), generator=gen)
    loss = get_loss("sparse_categorical_crossentropy", label_smoothing=0.1)
    fast = loss.with_logits()
    assert fast is not loss and fast.from_logits and not loss.from_logits
    assert fast.label_smoothing == 0.1 and fast.expects_activation == "softmax"
    assert close(fast(logits, t), loss(torch.softmax(logits, -1), t))
    bce = get_loss("bce")
    assert bce.expects_activation == "sigmoid"
    z = torch.randn(5, generator=gen)
    y = (torch.rand(5, generator=gen) > 0.5).float()
    assert close(bce.with_logits()(z, y), bce(torch.sigmoid(z), y))


def test_with_logits_refused_for_regression_losses():
    assert get_loss("mse").expects_activation is None
    with pytest.raises(ConfigError, match="no from-logits form"):
        get_loss("mse").with_logits()


def test_probability_gradients_stay_finite_at_saturation():
    logits = torch.tensor([[30.0, -30.0, 0.0]], requires_grad=True)
    loss = get_loss("categorical_crossentropy")(
        torch.softmax(logits, -1), torch.tensor([[0.0, 1.0, 0.0]])
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# --- get_loss and errors -------------------------------------------------------------------


def test_registry_names_are_lowercase_and_resolve():
    for key, cls in LOSSES.items():
        assert key == key.lower()
        assert issubclass(cls, Loss)
        assert isinstance(get_loss(key.upper()), cls)


def test_unknown_loss_name_suggests_and_lists():
    with pytest.raises(ConfigError, match="did you mean 'categorical_crossentropy'") as err:
        get_loss("categorical_crossentropyy")
    assert "valid names" in str(err.value) and "mse" in str(err.value)


def test_unknown_kwargs_are_named():
    with pytest.raises(ConfigError, match="label_smothing.*did you mean 'label_smoothing'"):
        get_loss("bce", label_smothing=0.1)
    with pytest.raises(ConfigError, match="unknown argument.*foo"):
        get_loss("mse", foo=1)


def test_bad_argument_values():
    with pytest.raises(ConfigError, match="label_smoothing"):
        get_loss("categorical_crossentropy", label_smoothing=1.5)
    with pytest.raises(ConfigError, match="delta"):
        get_loss("huber", delta=0)


def test_get_loss_instances_classes_and_bad_specs():
    inst = MeanSquaredError()
    assert get_loss(inst) is inst
    assert isinstance(get_loss(Huber, delta=2.0), Huber)
    with pytest.raises(ConfigError, match="name only"):
        get_loss(inst, delta=1.0)
    with pytest.raises(ConfigError, match="pass an instance"):
        get_loss(torch.nn.MSELoss)
    with pytest.raises(ConfigError, match="loss must be"):
        get_loss(3)


def test_callable_losses_are_wrapped(gen):
    logits = torch.randn(6, 3, generator=gen)
    t = torch.randint(0, 3, (6,), generator=gen)
    wrapped = get_loss(torch.nn.CrossEntropyLoss())
    assert isinstance(wrapped, CallableLoss) and wrapped.name == "CrossEntropyLoss"
    ref = F.cross_entropy(logits, t)
    assert close(wrapped(logits, t), ref)
    assert wrapped.count(t) == 6
    assert close(wrapped.sum(logits, t), ref * 6)
    fn = get_loss(lambda o, y: ((o - y) ** 2).mean())
    assert close(fn(torch.ones(3), torch.zeros(3)), 1.0)
    with pytest.raises(ConfigError, match="sample weights"):
        wrapped(logits, t, weight=torch.ones(6))
    with pytest.raises(ShapeError, match="0-dim"):
        get_loss(lambda o, y: o - y)(torch.ones(3), torch.zeros(3))


def test_shape_errors_name_both_shapes():
    with pytest.raises(ShapeError, match=r"\(4, 3\).*\(5, 3\)"):
        get_loss("mse")(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ShapeError, match="same number of values"):
        get_loss("mse")(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ShapeError, match="categorical_crossentropy"):
        get_loss("sparse_categorical_crossentropy")(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ShapeError, match="sparse_categorical_crossentropy"):
        get_loss("categorical_crossentropy")(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"\(2, 5, 3\).*\(2, 4\)"):
        get_loss("sparse_categorical_crossentropy")(
            torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long)
        )
    with pytest.raises(ShapeError, match="one weight per sample"):
        get_loss("mse")(torch.zeros(4), torch.zeros(4), weight=torch.ones(3))
    with pytest.raises(ShapeError, match="kl_divergence"):
        get_loss("kld")(torch.zeros(4, 3), torch.zeros(4, 2))


def test_out_of_range_class_is_left_to_torch():
    with pytest.raises((IndexError, RuntimeError)):
        get_loss("sparse_categorical_crossentropy", from_logits=True)(
            torch.zeros(2, 3), torch.tensor([0, 7])
        )
