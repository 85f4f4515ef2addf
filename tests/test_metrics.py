"""Metrics accumulated over several batches, against sklearn.metrics or hand-computed values."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from groundup.errors import ConfigError, ShapeError
from groundup.train.metrics import (
    F1,
    METRICS,
    Accuracy,
    Metric,
    Precision,
    R2Score,
    TopKAccuracy,
    confusion_matrix,
    get_metric,
)


def feed(metric: Metric, outputs: torch.Tensor, targets: torch.Tensor, sizes=(3, 5, 4)) -> float:
    """Update in uneven batches, then compute."""
    start = 0
    for size in sizes:
        metric.update(outputs[start : start + size], targets[start : start + size])
        start += size
    assert start == len(outputs)
    return metric.compute()


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def class_data(gen: torch.Generator, n: int = 12, c: int = 4):
    probs = torch.softmax(torch.randn(n, c, generator=gen) * 2, -1)
    targets = torch.randint(0, c, (n,), generator=gen)
    return probs, targets


# --- accuracy ------------------------------------------------------------------------------


def test_accuracy_integer_and_one_hot_targets(gen):
    probs, t = class_data(gen)
    expected = skm.accuracy_score(t.numpy(), probs.argmax(1).numpy())
    assert 0 < expected < 1
    assert feed(get_metric("accuracy"), probs, t) == pytest.approx(expected)
    assert feed(get_metric("accuracy"), probs, F.one_hot(t, 4).float()) == pytest.approx(expected)
    assert feed(get_metric("accuracy"), probs, t.unsqueeze(1)) == pytest.approx(expected)


@pytest.mark.parametrize("shape", [(12,), (12, 1)])
def test_accuracy_binary_threshold(shape, gen):
    p = torch.rand(12, generator=gen)
    t = (torch.rand(12, generator=gen) > 0.5).long()
    expected = skm.accuracy_score(t.numpy(), (p > 0.5).long().numpy())
    assert feed(Accuracy(), p.reshape(shape), t) == pytest.approx(expected)
    assert feed(Accuracy(), p.reshape(shape), t.float().reshape(shape)) == pytest.approx(expected)


def test_accuracy_ignore_index_on_sequences(gen):
    logits = torch.randn(12, 5, 6, generator=gen)
    t = torch.randint(0, 6, (12, 5), generator=gen)
    t[:, :2] = -100
    t[3] = -100
    keep = t != -100
    expected = (logits.argmax(-1)[keep] == t[keep]).float().mean().item()
    assert feed(Accuracy(), logits, t) == pytest.approx(expected)


def test_accuracy_reset_and_empty():
    acc = Accuracy()
    assert math.isnan(acc.compute())
    acc.update(torch.tensor([[0.9, 0.1]]), torch.tensor([1]))
    assert acc.compute() == 0.0
    acc.reset()
    acc.update(torch.tensor([[0.9, 0.1]]), torch.tensor([0]))
    assert acc.compute() == 1.0


def test_update_does_not_keep_autograd_graph(gen):
    out = torch.randn(4, 3, generator=gen, requires_grad=True)
    t = torch.randint(0, 3, (4,), generator=gen)
    for name in ["accuracy", "mse", "r2", "perplexity", "f1"]:
        m = get_metric(name)
        target = t if name in ("accuracy", "perplexity", "f1") else torch.randn(4, 3, generator=gen)
        m.update(out, target)
        m.update(out, target)
        state = [v for v in vars(m).values() if isinstance(v, torch.Tensor)]
        assert state and not any(s.requires_grad for s in state), name


def test_top_k_accuracy_against_sklearn(gen):
    probs, t = class_data(gen, n=12, c=6)
    for k in (1, 2, 3):
        expected = skm.top_k_accuracy_score(t.numpy(), probs.numpy(), k=k, labels=range(6))
        assert feed(TopKAccuracy(k=k), probs, t) == pytest.approx(expected)
    assert feed(get_metric("top_k_accuracy", k=10), probs, t) == 1.0  # k > C: always a hit


def test_top_k_accuracy_one_hot_and_ignore(gen):
    probs, t = class_data(gen, n=12, c=6)
    expected = skm.top_k_accuracy_score(t.numpy(), probs.numpy(), k=2, labels=range(6))
    assert feed(TopKAccuracy(k=2), probs, F.one_hot(t, 6)) == pytest.approx(expected)
    t2 = t.clone()
    t2[:4] = -100
    exp2 = skm.top_k_accuracy_score(t[4:].numpy(), probs[4:].numpy(), k=2, labels=range(6))
    assert feed(TopKAccuracy(k=2), probs, t2) == pytest.approx(exp2)


# --- precision / recall / f1 ---------------------------------------------------------------


SK = {"precision": skm.precision_score, "recall": skm.recall_score, "f1": skm.f1_score}


@pytest.mark.parametrize("name", ["precision", "recall", "f1"])
@pytest.mark.parametrize("average", ["macro", "weighted", "micro"])
def test_classification_scores_against_sklearn(name, average, gen):
    probs, t = class_data(gen, n=12, c=5)
    pred = probs.argmax(1)
    expected = SK[name](t.numpy(), pred.numpy(), average=average, zero_division=0)
    assert feed(get_metric(name, average=average), probs, t) == pytest.approx(expected)


def test_zero_division_classes_like_sklearn():
    # class 0: support, never predicted; class 2: predicted, no support; class 3: never seen
    t = torch.tensor([0, 0, 1, 1, 1, 1])
    pred = torch.tensor([1, 1, 1, 2, 1, 2])
    probs = F.one_hot(pred, 4).float()
    for name, fn in SK.items():
        expected = fn(t.numpy(), pred.numpy(), average="macro", zero_division=0)
        assert feed(get_metric(name), probs, t, sizes=(2, 4)) == pytest.approx(expected), name


def test_binary_outputs_macro_and_binary_average(gen):
    p = torch.rand(12, 1, generator=gen)
    t = (torch.rand(12, generator=gen) > 0.4).long()
    pred = (p.squeeze(1) > 0.5).long().numpy()
    for name, fn in SK.items():
        macro = fn(t.numpy(), pred, average="macro", zero_division=0)
        assert feed(get_metric(name), p, t) == pytest.approx(macro)
        binary = fn(t.numpy(), pred, average="binary", zero_division=0)
        assert feed(get_metric(name, average="binary"), p, t) == pytest.approx(binary)


def test_precision_ignore_index_and_reset(gen):
    logits = torch.randn(12, 3, 4, generator=gen)
    t = torch.randint(0, 4, (12, 3), generator=gen)
    t[:, 0] = -100
    keep = (t != -100).reshape(-1)
    pred = logits.argmax(-1).reshape(-1)[keep].numpy()
    expected = skm.precision_score(
        t.reshape(-1)[keep].numpy(), pred, average="macro", zero_division=0
    )
    m = Precision()
    m.update(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.tensor([2]))
    m.reset()
    assert feed(m, logits, t) == pytest.approx(expected)


def test_binary_average_needs_two_classes(gen):
    probs, t = class_data(gen, c=3)
    m = F1(average="binary")
    m.update(probs, t)
    with pytest.raises(ConfigError, match="2 classes"):
        m.compute()
    with pytest.raises(ConfigError, match="did you mean 'macro'"):
        F1(average="makro")


def test_confusion_matrix_against_sklearn(gen):
    t = torch.randint(0, 4, (30,), generator=gen)
    p = torch.randint(0, 4, (30,), generator=gen)
    cm = confusion_matrix(t, p, 4)
    assert cm.dtype == torch.int64
    np.testing.assert_array_equal(
        cm.numpy(), skm.confusion_matrix(t.numpy(), p.numpy(), labels=range(4))
    )
    t[:5] = -100  # skipped, no sync needed
    cm2 = confusion_matrix(t, p, 4)
    np.testing.assert_array_equal(
        cm2.numpy(), skm.confusion_matrix(t[5:].numpy(), p[5:].numpy(), labels=range(4))
    )
    np.testing.assert_array_equal(
        confusion_matrix([0, 1, 1], [1, 1, 0], 2).numpy(), [[0, 1], [1, 1]]
    )
    with pytest.raises(ShapeError, match="one prediction per label"):
        confusion_matrix(t, p[:3], 4)


# --- regression ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(12,), (12, 1), (12, 3)])
def test_regression_metrics_against_sklearn(shape, gen):
    y = torch.randn(*shape, generator=gen) * 3 + 1
    pred = y + torch.randn(*shape, generator=gen)
    for name, fn in [
        ("mse", skm.mean_squared_error),
        ("mae", skm.mean_absolute_error),
        ("r2", skm.r2_score),
    ]:
        assert feed(get_metric(name), pred, y) == pytest.approx(fn(y.numpy(), pred.numpy())), name


def test_regression_column_outputs_against_flat_targets(gen):
    y = torch.randn(12, generator=gen)
    pred = (y + 0.5 * torch.randn(12, generator=gen)).unsqueeze(1)  # (B, 1) model output
    assert feed(get_metric("r2"), pred, y) == pytest.approx(
        skm.r2_score(y.numpy(), pred.numpy()[:, 0])
    )
    assert feed(get_metric("mse"), pred, y) == pytest.approx(
        skm.mean_squared_error(y.numpy(), pred.numpy()[:, 0])
    )


def test_r2_far_from_zero_and_constant_columns(gen):
    y = (1e6 + torch.randn(12, 2, generator=gen)).double()
    pred = y + 0.1 * torch.randn(12, 2, generator=gen).double()
    assert feed(R2Score(), pred, y) == pytest.approx(
        skm.r2_score(y.numpy(), pred.numpy()), rel=1e-6
    )
    const = torch.full((12, 2), 3.0)
    perfect = const.clone()
    perfect[:, 1] += 1.0  # column 0 exact (r2 1), column 1 off (r2 0)
    assert feed(R2Score(), perfect, const) == pytest.approx(
        skm.r2_score(const.numpy(), perfect.numpy())
    )
    assert feed(R2Score(), perfect, const) == pytest.approx(0.5)


def test_regression_shape_errors():
    with pytest.raises(ShapeError, match=r"\(4, 2\).*\(4, 3\)"):
        get_metric("mse").update(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ShapeError, match="batch sizes"):
        get_metric("mae").update(torch.zeros(4), torch.zeros(5))
    m = R2Score()
    m.update(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(ShapeError, match="outputs"):
        m.update(torch.zeros(4, 3), torch.zeros(4, 3))


# --- perplexity ----------------------------------------------------------------------------


def test_perplexity_with_ignore_index(gen):
    logits = torch.randn(12, 6, 10, generator=gen)
    t = torch.randint(0, 10, (12, 6), generator=gen)
    t[0, :4] = -100
    t[7, 2:] = -100
    expected = math.exp(F.cross_entropy(logits.reshape(-1, 10), t.reshape(-1)).item())
    assert feed(get_metric("perplexity"), logits, t) == pytest.approx(expected, rel=1e-5)
    flat = get_metric("perplexity")
    flat.update(logits[:, 0], t[:, 0])
    t0 = t[:, 0]
    assert flat.compute() == pytest.approx(
        math.exp(F.cross_entropy(logits[:, 0], t0).item()), rel=1e-5
    )
    with pytest.raises(ShapeError, match="token ids"):
        flat.update(logits, t[:, :3])


# --- get_metric ----------------------------------------------------------------------------


def test_registry_names_are_lowercase_and_resolve():
    for key, cls in METRICS.items():
        assert key == key.lower()
        m = get_metric(key)
        assert isinstance(m, cls) and m.name == key


def test_alias_keeps_its_name_and_name_override():
    assert isinstance(get_metric("acc"), Accuracy) and get_metric("acc").name == "acc"
    assert get_metric("Accuracy").name == "accuracy"
    assert get_metric("top_k_accuracy", k=3, name="top3").name == "top3"


def test_unknown_metric_name_and_kwargs():
    with pytest.raises(ConfigError, match="did you mean 'accuracy'") as err:
        get_metric("acuracy")
    assert "valid names" in str(err.value) and "perplexity" in str(err.value)
    with pytest.raises(ConfigError, match="unknown argument.*kk.*did you mean 'k'"):
        get_metric("top_k_accuracy", kk=3)
    with pytest.raises(ConfigError, match="k must be"):
        get_metric("top_k_accuracy", k=0)
    with pytest.raises(ConfigError, match="metric must be"):
        get_metric(3.0)


def test_get_metric_instances_and_callables(gen):
    inst = Accuracy()
    assert get_metric(inst) is inst
    with pytest.raises(ConfigError, match="name only"):
        get_metric(inst, threshold=0.3)
    assert isinstance(get_metric(F1, average="micro"), F1)

    def mean_error(o, y):
        return (o - y).abs().mean()

    m = get_metric(mean_error)
    assert m.name == "mean_error"
    o = torch.zeros(8)
    y = torch.arange(8.0)
    m.update(o[:2], y[:2])  # mean 0.5, weight 2
    m.update(o[2:], y[2:])  # mean 4.5, weight 6
    assert m.compute() == pytest.approx(y.mean().item())
    # per-sample values are averaged first, as Keras does; plain floats work too
    per_sample = get_metric(lambda o, y: (o - y).abs(), name="abs")
    per_sample.update(o[:2], y[:2])
    per_sample.update(o[2:], y[2:])
    assert per_sample.compute() == pytest.approx(3.5) and per_sample.name == "abs"
    const = get_metric(lambda o, y: 1.0)
    const.update(o, y)
    assert const.compute() == 1.0


def test_classification_shape_errors():
    with pytest.raises(ShapeError, match=r"\(4, 3\).*\(4, 2\)"):
        Accuracy().update(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ShapeError, match="same number of values"):
        Accuracy().update(torch.zeros(4, 1), torch.zeros(5))
    with pytest.raises(ShapeError, match="class axis"):
        TopKAccuracy().update(torch.zeros(4), torch.zeros(4))
    m = Precision()
    m.update(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ShapeError, match="3"):
        m.update(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))


# --- combining parts (several ranks) -------------------------------------------------------


def _cases(gen: torch.Generator) -> list[tuple[str, Metric, torch.Tensor, torch.Tensor]]:
    """(label, fresh metric, outputs, targets) for every metric type, 16 samples each."""
    probs, labels = class_data(gen, n=16, c=4)
    labels[3] = -100  # ignore_index: skipped by every classification metric
    binary = torch.rand(16, generator=gen)
    bits = torch.randint(0, 2, (16,), generator=gen)
    y = 1e6 + torch.randn(16, 2, generator=gen, dtype=torch.float64)  # R2 far from zero
    pred = y + 0.3 * torch.randn(16, 2, generator=gen, dtype=torch.float64)
    logits = torch.randn(16, 5, 7, generator=gen, dtype=torch.float64)  # sums exact enough
    tokens = torch.randint(0, 7, (16, 5), generator=gen)
    tokens[2, :3] = -100
    cases = [
        ("accuracy", Accuracy(), probs, labels),
        ("binary accuracy", Accuracy(), binary, bits),
        ("top-2", TopKAccuracy(k=2), probs, labels),
        ("mse", get_metric("mse"), pred, y),
        ("mae", get_metric("mae"), pred, y),
        ("r2", R2Score(), pred, y),
        ("perplexity", get_metric("perplexity"), logits, tokens),
        ("function", get_metric(lambda o, t: (o - t).abs()), pred, y),
        ("function float", get_metric(lambda o, t: float((o - t).square().mean())), pred, y),
    ]
    for cls in (Precision, F1, get_metric("recall").__class__):
        for average in ("macro", "weighted", "micro"):
            cases.append((f"{cls.name} {average}", cls(average=average), probs, labels))
        cases.append((f"{cls.name} binary", cls(average="binary"), binary, bits))
    return cases


def _split(metric: Metric, outputs: torch.Tensor, targets: torch.Tensor, at: int):
    """Two copies of `metric` fed the two halves [:at] and [at:] (uneven batches)."""
    parts = []
    for lo, hi in ((0, at), (at, len(outputs))):
        part = copy.deepcopy(metric)
        for start in range(lo, hi, 3):
            end = min(start + 3, hi)
            part.update(outputs[start:end], targets[start:end])
        parts.append(part)
    return parts


@pytest.mark.parametrize("at", [7, 8])
def test_merged_halves_equal_one_pass_for_every_metric(gen, at):
    cases = _cases(gen)
    differs = 0  # the test can fail: a half alone is (nearly always) not the whole
    for label, metric, outputs, targets in cases:
        whole = copy.deepcopy(metric)
        whole.update(outputs, targets)
        want = whole.compute()
        assert math.isfinite(want), label
        a, b = _split(metric, outputs, targets, at)
        differs += a.compute() != pytest.approx(want, rel=1e-9)
        states = [a.state(), b.state()]
        a.merge(states)
        assert a.compute() == pytest.approx(want, rel=1e-9, abs=1e-12), label
        b.merge(states)  # every rank merges the same parts, its own among them
        assert b.compute() == pytest.approx(want, rel=1e-9, abs=1e-12), label
        # the merged metric keeps accumulating: the next epoch's reset starts over
        a.update(outputs[:4], targets[:4])
        a.reset()
        assert math.isnan(a.compute()) or a.compute() == 0.0, label
    assert differs >= len(cases) // 2


def test_merge_through_float64_round_trip_and_empty_parts(gen):
    """The collective flattens every state to float64; load_state gets its layout back."""
    for label, metric, outputs, targets in _cases(gen):
        whole = copy.deepcopy(metric)
        whole.update(outputs, targets)
        a, b = _split(metric, outputs, targets, 5)
        wire = [[t.double().clone() for t in m.state()] for m in (a, b)]
        a.merge(wire)
        assert a.compute() == pytest.approx(whole.compute(), rel=1e-9, abs=1e-12), label
        # a part that saw nothing adds nothing
        empty = copy.deepcopy(metric)
        b2 = copy.deepcopy(whole)
        b2.merge([whole.state(), empty.state()])
        assert b2.compute() == pytest.approx(whole.compute(), rel=1e-9, abs=1e-12), label
        nothing = copy.deepcopy(metric)
        nothing.merge([empty.state(), empty.state()])
        assert math.isnan(nothing.compute()) or nothing.compute() == 0.0, label
    cm = Precision()
    cm.merge([[torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)]])
    assert cm.state()[0].dtype == torch.long  # counts come back as integers


def test_a_metric_without_state_cannot_be_merged():
    class Last(Metric):
        def reset(self) -> None:
            self.value = math.nan

        def update(self, outputs, targets) -> None:
            self.value = float(outputs.mean())

        def compute(self) -> float:
            return self.value

    assert Last().state() is None
    with pytest.raises(NotImplementedError, match="Last has no load_state"):
        Last().merge([[torch.zeros(())], [torch.ones(())]])


def test_sync_metrics_one_gather_for_all_metrics(gen, monkeypatch):
    """data_parallel.sync_metrics under a simulated second rank: every metric equals its
    one-pass value after one gather; the stateless one is handed back, untouched."""
    from groundup.distributed import data_parallel

    cases = _cases(gen)
    halves = [_split(metric, o, t, 9) for _, metric, o, t in cases]
    mine, theirs = [h[0] for h in halves], [h[1] for h in halves]

    class Stateless(Accuracy):
        def state(self):
            return None

    odd = Stateless()
    odd.update(*cases[0][2:])
    odd_value = odd.compute()
    calls = []

    def all_gather(out, flat):
        calls.append(flat.shape)
        other = [t.double().reshape(-1) for m in theirs for t in m.state()]
        out[0].copy_(flat)
        out[1].copy_(torch.cat(other))

    assert data_parallel.sync_metrics(mine, torch.device("cpu")) == []  # one process: no-op
    assert [m.compute() for m in mine] == [h[0].compute() for h in halves]
    monkeypatch.setattr(data_parallel.dist_utils, "world_size", lambda: 2)
    monkeypatch.setattr(data_parallel.dist, "all_gather", all_gather)
    assert data_parallel.sync_metrics([*mine, odd], torch.device("cpu")) == [odd]
    assert len(calls) == 1
    for (label, metric, outputs, targets), m in zip(cases, mine):
        whole = copy.deepcopy(metric)
        whole.update(outputs, targets)
        assert m.compute() == pytest.approx(whole.compute(), rel=1e-9, abs=1e-12), label
    assert odd.compute() == odd_value
