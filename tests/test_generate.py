"""Generation: the KV cache changes nothing but speed; sampling options; stopping; errors."""

from __future__ import annotations

import pytest
import torch

from groundup.errors import ConfigError, ShapeError, TokenizerError
from groundup.generate import generate, sample_logits
from groundup.models.gpt import GPT, GPTConfig

FLAVOURS = ["gpt2-tiny", "llama-tiny"]
V = 96  # vocab_size of the tiny presets


def tiny(name: str) -> GPT:
    """float64, so cache and no-cache logits agree far below any sampling boundary. A large
    init_std makes attention sharp: with the usual 0.02 it is nearly uniform and a wrong
    position or mask barely moves the tokens, so these tests could not catch it."""
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name(name, init_std=0.3)).double()


def prompt(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------- cache equivalence


@pytest.mark.parametrize("name", FLAVOURS)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("length", [1, 6])
def test_cache_gives_the_same_tokens(name, batch, length):
    model = tiny(name)
    idx = prompt(batch, length)
    greedy = generate(model, idx, 12, temperature=0, use_cache=True)
    assert torch.equal(greedy, generate(model, idx, 12, temperature=0, use_cache=False))
    sampled = generate(model, idx, 12, temperature=1.5, seed=3, use_cache=True)
    assert torch.equal(sampled, generate(model, idx, 12, temperature=1.5, seed=3, use_cache=False))
    assert sampled.shape == (batch, length + 12)
    assert torch.equal(sampled[:, :length], idx)


@pytest.mark.parametrize("name", FLAVOURS)
def test_cache_past_block_size_and_long_prompt(name):
    """Past block_size (64) both paths crop to the last 64 tokens: still the same tokens."""
    model = tiny(name)
    for length, new in [(58, 10), (70, 3)]:
        idx = prompt(1, length)
        a = generate(model, idx, new, temperature=0.8, seed=0, use_cache=True)
        b = generate(model, idx, new, temperature=0.8, seed=0, use_cache=False)
        assert torch.equal(a, b) and a.shape == (1, length + new)


@pytest.mark.parametrize("name", FLAVOURS)
def test_chunked_prefill_matches_full_forward(name):
    """Prefill after a cached prefix needs an offset causal mask and offset positions."""
    model = tiny(name).eval()
    idx = prompt(2, 20)
    full = model(idx)
    cache = model.new_kv_cache()
    chunks = [model(idx[:, a:b], kv_cache=cache) for a, b in [(0, 7), (7, 8), (8, 20)]]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full)
    assert cache.pos == 20


def test_cache_overflow_and_batch_mismatch_are_errors():
    model = tiny("gpt2-tiny")
    cache = model.new_kv_cache(max_len=8)
    model(prompt(1, 6), kv_cache=cache)
    with pytest.raises(ShapeError, match="KV cache holds 8 positions"):
        model(prompt(1, 3), kv_cache=cache)
    big = model.new_kv_cache()
    model(prompt(1, 60), kv_cache=big)
    with pytest.raises(ShapeError, match="60 cached \\+ 5 new tokens exceeds block_size 64"):
        model(prompt(1, 5), kv_cache=big)
    cache.reset()
    model(prompt(1, 2), kv_cache=cache)
    with pytest.raises(ShapeError, match="reset"):
        model(prompt(2, 1), kv_cache=cache)
    with pytest.raises(ShapeError, match="1..block_size"):
        model.new_kv_cache(max_len=65)


# --------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", FLAVOURS)
def test_top_k_1_and_tiny_top_p_are_greedy(name):
    model = tiny(name)
    idx = prompt(2, 4)
    greedy = model.generate(idx, 10, temperature=0)
    assert torch.equal(model.generate(idx, 10, top_k=1, seed=5), greedy)
    assert torch.equal(model.generate(idx, 10, top_p=1e-6, seed=5), greedy)


def test_seed_reproducible_and_leaves_global_rng_alone():
    model = tiny("llama-tiny")
    idx = prompt(1, 3)
    torch.manual_seed(123)
    a = generate(model, idx, 20, seed=7)
    after = torch.rand(1)
    torch.manual_seed(123)
    b = generate(model, idx, 20, seed=7)
    assert torch.equal(a, b) and torch.equal(after, torch.rand(1))
    assert not torch.equal(a, generate(model, idx, 20, seed=8))


def test_sample_logits_top_k_and_top_p_sets():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().repeat(2000, 1)  # (2000, 4)
    g = torch.Generator().manual_seed(0)

    def drawn(**kw):
        return set(sample_logits(logits, generator=g, **kw).tolist())

    assert drawn(top_k=2) == {1, 3}
    assert drawn(top_p=0.75) == {1, 3}  # 0.5 + 0.3 reaches 0.75
    assert drawn(top_p=0.85) == {1, 3, 2}  # needs the 0.15 too
    assert drawn() == {0, 1, 2, 3}
    # frequencies follow softmax(logits / T): T=1 keeps p
    counts = torch.bincount(sample_logits(logits, generator=g), minlength=4).double() / 2000
    torch.testing.assert_close(counts, probs.double(), atol=0.04, rtol=0)
    assert sample_logits(logits[:3], temperature=0).tolist() == [1, 1, 1]


# ----------------------------------------------------------------------------------- stopping


def test_eos_stops_each_sequence_and_the_batch():
    model = tiny("gpt2-tiny")
    idx = prompt(2, 3)
    free = generate(model, idx, 15, temperature=0)[:, 3:]  # (2, 15) without eos
    eos = int(free[0, 2])
    out = generate(model, idx, 15, temperature=0, eos_id=eos)[:, 3:]

    def first(row):
        hits = (row == eos).nonzero()
        return int(hits[0]) if len(hits) else None

    firsts = [first(free[0]), first(free[1])]
    stop = 15 if None in firsts else max(firsts) + 1
    assert out.shape == (2, stop)
    for r, f in enumerate(firsts):
        end = stop if f is None else f + 1
        assert torch.equal(out[r, :end], free[r, :end])
        assert torch.all(out[r, end:] == eos)  # finished rows keep emitting eos


def test_batch_of_one_stops_at_eos():
    model = tiny("llama-tiny")
    idx = prompt(1, 4)
    eos = int(generate(model, idx, 1, temperature=0)[0, -1])
    out = generate(model, idx, 20, temperature=0, eos_id=eos)
    assert out.shape == (1, 5) and int(out[0, -1]) == eos


def test_on_token_streams_each_step_and_1d_prompt():
    model = tiny("gpt2-tiny")
    seen = []
    out = generate(model, prompt(1, 4)[0], 6, temperature=0, on_token=seen.append)
    assert out.dim() == 1 and out.shape == (10,)
    assert torch.equal(torch.cat(seen), out[4:])


def test_mode_restored_and_no_grad():
    model = tiny("gpt2-tiny")
    model.train()
    out = generate(model, prompt(1, 2), 3)
    assert model.training and not out.requires_grad
    model.eval()
    generate(model, prompt(1, 2), 3)
    assert not model.training


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(temperature=-1.0), ConfigError, "temperature must be >= 0"),
        (dict(top_k=0), ConfigError, "top_k must be an integer >= 1"),
        (dict(top_p=0.0), ConfigError, "top_p must be in"),
        (dict(top_p=1.5), ConfigError, "top_p must be in"),
        (dict(max_new_tokens=-1), ConfigError, "max_new_tokens must be an integer >= 0"),
    ],
)
def test_bad_options(kwargs, error, fragment):
    model = tiny("gpt2-tiny")
    args = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(error, match=fragment):
        generate(model, prompt(1, 2), **args)


def test_bad_prompts():
    model = tiny("gpt2-tiny")
    with pytest.raises(TokenizerError, match="token id 96 is outside the model's vocabulary"):
        generate(model, torch.tensor([[1, 96]]), 2)
    with pytest.raises(ShapeError, match="time >= 1"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ShapeError, match="integer token ids"):
        generate(model, torch.zeros(1, 3), 2)


@pytest.mark.parametrize("name", FLAVOURS)
def test_generate_under_bf16_autocast(name):
    """The cache takes the dtype of the keys it receives (bf16 here), not the weights'."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(name))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, prompt(2, 3), 5, seed=0)
    assert out.shape == (2, 8) and out.dtype == torch.long


def test_vocab_limit_never_samples_padding_ids():
    """A model padded past its tokenizer's vocabulary must not emit the padding ids."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt2-tiny", vocab_size=64, init_std=0.5))
    prompt = torch.zeros(3, 2, dtype=torch.long)
    free = generate(model, prompt, 40, temperature=2.0, seed=0)
    assert (free >= 10).any()  # unconstrained sampling does reach ids >= 10
    limited = generate(model, prompt, 40, temperature=2.0, seed=0, vocab_limit=10)
    assert limited[:, 2:].max() < 10
