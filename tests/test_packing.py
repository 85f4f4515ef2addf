"""Document-masked packing: a packed SFT row trains exactly as its examples one by one."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from groundup.data.task_data import sft_batches
from groundup.data.tokenizers import Tokenizer
from groundup.finetune.sft import IGNORE_INDEX, Conversation, encode_sft
from groundup.models import blocks
from groundup.models.blocks import document_mask, document_positions
from groundup.models.gpt import GPT, GPTConfig


@functools.cache
def tok() -> Tokenizer:
    return Tokenizer.train(None, kind="bytes")


def conversations(n: int, seed: int = 0) -> list[Conversation]:
    rng = np.random.default_rng(seed)
    return [
        Conversation.from_pair(
            f"q{i} " * int(rng.integers(1, 5)), f"a{i} " * int(rng.integers(1, 6))
        )
        for i in range(n)
    ]


def model(flavour: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig.from_name(f"{flavour}-tiny", vocab_size=tok().vocab_size, block_size=128)
    return GPT(cfg).double().eval()


def summed_loss(m: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = m(x)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_packed_loss_is_the_sum_of_one_by_one_losses(flavour: str) -> None:
    convs = conversations(12)
    packed = encode_sft(convs, tok(), block_size=120, template="plain", packing=True)
    assert packed.n_rows <= len(convs) // 2  # several examples share each row
    m = model(flavour)
    with torch.no_grad():
        together = summed_loss(m, packed.model_inputs, packed.labels)
        alone = sum(
            summed_loss(m, t.input_ids, t.labels)
            for t in (encode_sft([c], tok(), block_size=120, template="plain") for c in convs)
        )
        # the control: the same rows attending across examples give another loss
        leaky = summed_loss(m, packed.input_ids, packed.labels)
    assert abs(float(together - alone)) < 1e-10 * max(1.0, abs(float(alone)))
    assert abs(float(leaky - alone)) > 1e-6


def test_packed_batches_carry_doc_ids_and_evaluate_like_padded_rows() -> None:
    from groundup.train.losses import SparseCategoricalCrossentropy
    from groundup.train.trainer import Trainer

    convs = conversations(10, seed=1)
    m = model("llama", seed=2)
    packed, t = sft_batches(convs, tok(), "plain", 120, tok().pad_id, 4, packing=True)
    padded, _ = sft_batches(convs, tok(), "plain", 120, tok().pad_id, 4)
    x, y = list(packed)[0]  # a whole pass: the batches start again at their beginning
    assert x.shape == (min(4, t.n_rows), 2, t.input_ids.shape[1]) and y.shape == x[:, 0].shape
    assert torch.equal(x[:, 0], t.input_ids[: len(x)]) and torch.equal(x[:, 1], t.doc_ids[: len(x)])
    trainer = Trainer(
        m, loss=SparseCategoricalCrossentropy(from_logits=True), device="cpu", precision="fp64"
    )
    a, b = trainer.evaluate(packed)["loss"], trainer.evaluate(padded)["loss"]
    assert a == pytest.approx(b, rel=1e-10)


def test_doc_ids_mark_examples_and_padding() -> None:
    convs = conversations(7, seed=3)
    t = encode_sft(convs, tok(), block_size=100, template="plain", packing=True)
    unpacked = encode_sft(convs, tok(), block_size=100, template="plain")
    assert t.doc_ids is not None and unpacked.doc_ids is None
    assert t.doc_ids.shape == t.input_ids.shape
    assert (t.doc_ids.diff(dim=1) >= 0).all()  # runs along each row
    examples = 0
    for docs, labels in zip(t.doc_ids, t.labels):
        # a new example starts where the id changes; its first token is never a target
        starts = torch.nonzero(docs.diff() != 0).flatten() + 1
        assert (labels[starts - 1] == IGNORE_INDEX).all()
        examples += len(set(docs[labels != IGNORE_INDEX].tolist()))  # padding trains nothing
    assert examples == t.n_examples == len(convs)
    assert int(t.doc_ids.max()) >= 1


def test_positions_restart_and_the_mask_is_block_diagonal() -> None:
    doc = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 1, 1, 1, 1, 1]])
    assert document_positions(doc).tolist() == [[0, 1, 2, 0, 1, 0], [0, 0, 1, 2, 3, 4]]
    mask = document_mask(doc)  # (B, 1, T, T)
    assert mask.shape == (2, 1, 6, 6)
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask[0, 0], want)
    assert mask.diagonal(dim1=-2, dim2=-1).all()  # no query is left with nothing to attend


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_one_document_equals_plain_causal_and_kv_cache_is_untouched(
    flavour: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = model(flavour)
    idx = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    seen = []
    real_attend = blocks.attend

    def spy(q, k, v, mask=None, dropout_p=0.0, is_causal=False, **kw):
        seen.append((mask is None, is_causal))
        return real_attend(q, k, v, mask, dropout_p, is_causal, **kw)

    monkeypatch.setattr(blocks, "attend", spy)
    with torch.no_grad():
        plain = m(idx)
        assert set(seen) == {(True, True)}  # without doc ids: SDPA's causal kernel, no mask
        one_doc = m(idx, doc_ids=torch.zeros_like(idx))
        stacked = m(torch.stack([idx, torch.zeros_like(idx)], dim=1))  # the (B, 2, T) form
        # the KV cache path: prefix, then token by token, as generate runs it
        cache = m.new_kv_cache()
        steps = [m(idx[:, :12], kv_cache=cache)]
        steps += [m(idx[:, t : t + 1], kv_cache=cache) for t in range(12, 20)]
    assert torch.allclose(one_doc, plain, atol=1e-12) and torch.equal(one_doc, stacked)
    assert torch.allclose(torch.cat(steps, dim=1), plain, atol=1e-10)
    with pytest.raises(Exception, match="KV cache"):
        m(idx, kv_cache=m.new_kv_cache(), doc_ids=torch.zeros_like(idx))


def test_a_packed_finetune_trains_end_to_end(tmp_path) -> None:
    import json

    from groundup.config import from_dict
    from groundup.jobs.finetune import FinetuneConfig, run_finetune
    from groundup.models.folders import save_model_dir

    torch.manual_seed(0)
    cfg = GPTConfig.from_name("llama-tiny", vocab_size=tok().vocab_size, block_size=96)
    save_model_dir(tmp_path / "base" / "model", GPT(cfg), tok())
    rows = [{"prompt": f"add {a} and {a + 1}", "response": str(2 * a + 1)} for a in range(40)]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    config = {
        "run_dir": str(tmp_path / "run"),
        "task": "sft",
        "method": "lora",
        "base": {"path": str(tmp_path / "base")},
        "data": {"train": str(data), "packing": True},
        "optim": {"name": "adamw", "lr": 3e-3},
        "train": {"max_steps": 3, "batch_size": 4, "device": "cpu", "precision": "fp32"},
    }
    results = run_finetune(None, config=from_dict(FinetuneConfig, config), verbose=0)
    assert results["train_rows"] < results["train_examples"]  # packed
    assert np.isfinite(results["val_loss"]) and results["steps"] == 3
