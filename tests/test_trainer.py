"""The one training loop: accumulation equivalence, budgets, validation, logging, resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import groundup as gu
from groundup.errors import ConfigError


class TinyLM(nn.Module):
    """Embedding + linear head: outputs (B, T, V) like a language model."""

    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.emb(idx)))


def _lm_batches(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 11, (8, 6), generator=g)
    y = torch.randint(0, 11, (8, 6), generator=g)
    # mask tokens unevenly: micro-batches get different numbers of valid targets
    y[0, :5] = -100
    y[1, :2] = -100
    y[5, 1:] = -100
    return x, y


def _trained_params(grad_accum: int, batch_size: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = TinyLM()
    x, y = _lm_batches()
    trainer = gu.Trainer(
        model,
        loss=gu.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=gu.optim.SGD(lr=0.5),
        grad_accum=grad_accum,
        device="cpu",
        verbose=0,
    )
    data = gu.TensorBatches(x, y, batch_size=batch_size, shuffle=False)
    trainer.fit(data, max_steps=1)
    return [p.detach().clone() for p in model.parameters()]


def test_gradient_accumulation_equals_one_big_batch_with_masked_tokens() -> None:
    """k micro-batches of b give the same step as one batch of k*b (normalized by valid tokens)."""
    big = _trained_params(grad_accum=1, batch_size=8)
    for accum, bs in ((2, 4), (4, 2), (8, 1)):
        accumulated = _trained_params(grad_accum=accum, batch_size=bs)
        for a, b in zip(big, accumulated):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_accumulation_without_normalization_would_differ() -> None:
    """Guard that the test above can fail: averaging per-micro-batch means is not the same."""
    torch.manual_seed(0)
    model = TinyLM()
    x, y = _lm_batches()
    loss = gu.losses.SparseCategoricalCrossentropy(from_logits=True)
    whole = loss(model(x), y)
    naive = (loss(model(x[:4]), y[:4]) + loss(model(x[4:]), y[4:])) / 2
    assert not torch.allclose(whole, naive, atol=1e-4)


def _regression_data(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]]) + 0.3
    return x, y


def test_fit_reduces_loss_and_records_history(tmp_path) -> None:
    torch.manual_seed(0)
    x, y = _regression_data()
    model = nn.Linear(3, 1)
    trainer = gu.Trainer(
        model,
        loss="mse",
        optimizer="adam",
        lr=0.05,
        metrics=["mae"],
        device="cpu",
        run_dir=tmp_path,
        verbose=0,
        log_every=4,
    )
    train = gu.TensorBatches(x[:200], y[:200], batch_size=32)
    val = gu.TensorBatches(x[200:], y[200:], batch_size=64, shuffle=False)
    history = trainer.fit(train, val, epochs=15)
    assert len(history.history["loss"]) == 15
    assert history.history["loss"][-1] < 0.05 * history.history["loss"][0]
    assert history.history["val_loss"][-1] < 0.01
    assert set(history.history) >= {"loss", "mae", "val_loss", "val_mae"}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = {r["event"] for r in records}
    assert events == {"train", "epoch"}
    train_lines = [r for r in records if r["event"] == "train"]
    assert all("samples_per_s" in r and "lr" in r for r in train_lines)
    assert trainer.step == 15 * len(train)


def test_max_steps_and_eval_every() -> None:
    x, y = _regression_data()
    trainer = gu.Trainer(nn.Linear(3, 1), loss="mse", optimizer="sgd", device="cpu", verbose=0)
    train = gu.TensorBatches(x, y, batch_size=16)
    val = gu.TensorBatches(x[:32], y[:32], batch_size=32, shuffle=False)
    history = trainer.fit(train, val, max_steps=25, eval_every=10, epochs=None)
    assert trainer.step == 25
    # epoch ends (16 steps) are not evaluations when eval_every is set; evaluations at 10, 20
    assert history.step[:2] == [10, 16] or 10 in history.step


def test_endless_source_needs_max_steps() -> None:
    def endless():
        while True:
            yield torch.randn(4, 3), torch.randn(4, 1)

    class Stream:
        def __iter__(self):
            return endless()

    trainer = gu.Trainer(nn.Linear(3, 1), loss="mse", device="cpu", verbose=0)
    with pytest.raises(ConfigError, match="max_steps"):
        trainer.fit(Stream())
    trainer.fit(Stream(), max_steps=7)
    assert trainer.step == 7


def test_schedule_sets_learning_rate_each_step() -> None:
    x, y = _regression_data(64)
    trainer = gu.Trainer(
        nn.Linear(3, 1),
        loss="mse",
        optimizer="sgd",
        lr=0.1,
        schedule={"name": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.0},
        device="cpu",
        verbose=0,
    )
    seen = []

    class Record(gu.callbacks.Callback):
        def on_step_end(self, trainer, step):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    trainer.user_callbacks = [Record()]
    trainer.fit(gu.TensorBatches(x, y, batch_size=8), max_steps=8)
    schedule = trainer.schedule
    expected = [0.1 * schedule.factor(s) for s in range(1, 9)]
    assert seen == pytest.approx(expected)
    assert seen[-1] == pytest.approx(0.0, abs=1e-12)


def test_clip_grad_norm_limits_update() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    before = model.weight.detach().clone()
    x, y = torch.randn(8, 3) * 100, torch.randn(8, 1) * 100
    trainer = gu.Trainer(
        model,
        loss="mse",
        optimizer=gu.optim.SGD(lr=1.0),
        clip_grad_norm=0.5,
        device="cpu",
        verbose=0,
    )
    trainer.fit(gu.TensorBatches(x, y, batch_size=8), max_steps=1)
    step = torch.cat([(model.weight - before).flatten(), model.bias.detach().flatten()])
    # with lr 1 the update is the clipped gradient (weight part bounded by the total norm 0.5)
    assert (model.weight - before).norm() <= 0.5 + 1e-5
    assert step.norm() > 0


def test_stop_training_from_callback() -> None:
    x, y = _regression_data(64)

    class StopAt(gu.callbacks.Callback):
        def on_step_end(self, trainer, step):
            if step == 3:
                trainer.stop_training = True

    trainer = gu.Trainer(nn.Linear(3, 1), loss="mse", device="cpu", verbose=0, callbacks=[StopAt()])
    trainer.fit(gu.TensorBatches(x, y, batch_size=8), epochs=5)
    assert trainer.step == 3


def test_exact_resume_matches_uninterrupted_run(tmp_path) -> None:
    """Stop after 5 steps, checkpoint, resume in a fresh trainer: same parameters as 12 straight."""
    x, y = _regression_data(96)

    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
        return model, gu.Trainer(
            model,
            loss="mse",
            optimizer="adamw",
            lr=0.01,
            schedule={"name": "cosine", "warmup_steps": 2},
            device="cpu",
            verbose=0,
        )

    model_a, straight = make()
    straight.fit(gu.TensorBatches(x, y, batch_size=16, seed=3), max_steps=12)

    class Interrupt(gu.callbacks.Callback):  # the run dies after step 5 of the same 12-step plan
        def on_step_end(self, trainer, step):
            if step == 5:
                trainer.save_checkpoint(tmp_path / "ckpt")
                trainer.stop_training = True

    model_b, first = make()
    first.user_callbacks = [Interrupt()]
    first.fit(gu.TensorBatches(x, y, batch_size=16, seed=3), max_steps=12)
    assert first.step == 5

    model_c, second = make()
    second.fit(
        gu.TensorBatches(x, y, batch_size=16, seed=3), max_steps=12, resume_from=tmp_path / "ckpt"
    )
    assert second.step == 12
    for a, c in zip(model_a.parameters(), model_c.parameters()):
        assert torch.equal(a, c)


def test_bad_arguments_are_config_errors() -> None:
    model = nn.Linear(3, 1)
    with pytest.raises(ConfigError, match="grad_accum"):
        gu.Trainer(model, loss="mse", grad_accum=0)
    with pytest.raises(ConfigError, match="did you mean 'mse'"):
        gu.Trainer(model, loss="msee")
    with pytest.raises(ConfigError, match="precision"):
        gu.Trainer(model, loss="mse", precision="fp8")
    with pytest.raises(ConfigError, match="nn.Module"):
        gu.Trainer("not a model", loss="mse")
    trainer = gu.Trainer(model, loss="mse", optimizer="adamm", device="cpu", verbose=0)
    x, y = _regression_data(16)
    with pytest.raises(ConfigError, match="unknown optimizer 'adamm'.*valid names"):
        trainer.fit(gu.TensorBatches(x, y, batch_size=4))


def test_bf16_autocast_trains_on_cpu() -> None:
    x, y = _regression_data(64)
    torch.manual_seed(0)
    trainer = gu.Trainer(
        nn.Linear(3, 1),
        loss="mse",
        optimizer="adam",
        lr=0.05,
        precision="bf16",
        device="cpu",
        verbose=0,
    )
    history = trainer.fit(gu.TensorBatches(x, y, batch_size=16), epochs=10)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_predict_and_evaluate_weighting() -> None:
    """evaluate averages over items, not batches (uneven last batch)."""
    x, y = _regression_data(10)
    model = nn.Linear(3, 1)
    trainer = gu.Trainer(model, loss="mse", device="cpu", verbose=0)
    logs = trainer.evaluate(gu.TensorBatches(x, y, batch_size=4, shuffle=False))
    expected = torch.nn.functional.mse_loss(model(x), y).item()
    assert logs["loss"] == pytest.approx(expected, rel=1e-6)
    out = trainer.predict(x, batch_size=3)
    torch.testing.assert_close(out, model(x).detach())
