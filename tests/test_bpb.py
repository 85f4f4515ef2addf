"""Bits per byte: each token's byte count, and the evaluation figure the Trainer reports."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from groundup.data.tokenizers import Tokenizer
from groundup.train.losses import SparseCategoricalCrossentropy
from groundup.train.trainer import Trainer

TEXTS = ["Return the list of the keys. Ünïcode ☃ café, naïve façade.\n"] * 40


@pytest.mark.parametrize("kind", ["bpe", "char", "bytes"])
def test_token_bytes_add_up_to_the_text(kind: str) -> None:
    extra = {"vocab_size": 300} if kind == "bpe" else {}
    tok = Tokenizer.train(TEXTS, kind=kind, **extra)
    sizes = tok.token_bytes()
    assert sizes.shape == (tok.vocab_size,)
    text = "the café keys ☃, naïve list\n"
    ids = tok.encode(text)
    assert int(sizes[ids].sum()) == len(text.encode("utf-8"))
    assert sizes[tok.eot_id] == 0  # special tokens stand for no text


class Logits(nn.Module):
    """A model whose logits are a fixed table per input id: evaluation in closed form."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]


def test_bits_per_byte_is_nats_over_bytes_of_text_tokens() -> None:
    tok = Tokenizer.train(TEXTS, kind="bpe", vocab_size=300)  # ASCII below: decode per token
    ascii_text = "Return the list of the keys, then the values of a dict in order.\n"
    torch.manual_seed(0)
    table = torch.randn(tok.vocab_size, tok.vocab_size, dtype=torch.float64)
    seq = tok.encode(ascii_text * 4)
    assert len(seq) >= 59
    ids = torch.tensor(seq[:30] + [tok.eot_id] * 2 + seq[30:59])  # 61 ids, two of them eot
    x, y = ids[:-1].view(3, 20), ids[1:].view(3, 20).clone()
    y[0, :4] = -100  # ignored targets (an SFT prompt) count nowhere
    trainer = Trainer(
        Logits(table),
        loss=SparseCategoricalCrossentropy(from_logits=True),
        precision="fp64",
        verbose=0,
        report_perplexity=True,
        token_bytes=tok.token_bytes(),
    )
    logs = trainer.evaluate([(x, y)], prefix="val_")
    keep = (y >= 0) & (torch.as_tensor(tok.token_bytes())[y.clamp(min=0)] > 0)
    nats = nn.functional.cross_entropy(table[x][keep], y[keep], reduction="sum")
    n_bytes = sum(len(tok.decode([int(t)]).encode()) for t in y[keep])
    assert n_bytes > 0 and keep.sum() < (y >= 0).sum()  # the eot targets were left out
    assert logs["val_bpb"] == pytest.approx(float(nats) / (math.log(2) * n_bytes), rel=1e-12)


def test_a_uniform_model_costs_log2_vocab_bits_per_byte_on_bytes() -> None:
    tok = Tokenizer.train(None, kind="bytes")
    table = torch.zeros(tok.vocab_size, tok.vocab_size, dtype=torch.float64)
    ids = torch.tensor(tok.encode("café ☃ and more text " * 4))
    trainer = Trainer(
        Logits(table),
        loss=SparseCategoricalCrossentropy(from_logits=True),
        precision="fp64",
        verbose=0,
        token_bytes=tok.token_bytes(),
    )
    logs = trainer.evaluate([(ids[None, :-1], ids[None, 1:])])
    assert logs["bpb"] == pytest.approx(math.log2(tok.vocab_size), rel=1e-12)


def test_no_bytes_table_means_no_bpb() -> None:
    table = torch.zeros(5, 5)
    trainer = Trainer(
        Logits(table), loss=SparseCategoricalCrossentropy(from_logits=True), verbose=0
    )
    logs = trainer.evaluate([(torch.tensor([[1, 2]]), torch.tensor([[2, 3]]))])
    assert "bpb" not in logs
