"""LMScorer: lm-eval's three request types on our GPT.

The three loglikelihood paths (one request a forward, batched, batched with a shared-context KV
cache) are compared in float64 with each other and with a plain re-statement of the rule
(each request alone, full logits, log-softmax), so only summation order differs (~1e-13).
Tokenization, rolling windows, padded vocabularies, generation and bad input are pinned on
tiny models. The agreement with lm-eval's own `hf` model is in test_harness.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from groundup.data.tokenizers import Tokenizer
from groundup.errors import ConfigError, DataError, TokenizerError
from groundup.evals.lm import LMScorer, repeat_kv_cache, rolling_windows
from groundup.generate import generate
from groundup.models.folders import save_model_dir
from groundup.models.gpt import GPT, GPTConfig, GPTForSequenceClassification

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

TEXT = (
    "Question: what is two plus two?\nAnswer: four.\n"
    "The quick brown fox jumps over the lazy dog. A lazy dog sleeps all day.\n"
) * 3
BLOCK = 32  # short, so truncation and several rolling windows are cheap to reach


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT], kind="bpe", vocab_size=300, min_frequency=1)


def tiny(flavour: str, tok: Tokenizer, pad: int = 24, dtype=torch.float64) -> GPT:
    """A random GPT whose vocabulary is padded `pad` rows past the tokenizer. init_std 0.3
    gives sharp, position-dependent attention: with 0.02 a wrong position or mask would
    barely move a log-likelihood."""
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_head=4, n_embd=32, block_size=BLOCK, init_std=0.3)
    if flavour == "llama":
        cfg["n_kv_head"] = 2
    model = GPT(GPTConfig(flavour=flavour, vocab_size=tok.vocab_size + pad, **cfg))
    return model.to(dtype)


def requests() -> list[tuple[str, str]]:
    """Multiple-choice groups (one shared context, choices of 1..several tokens), lone
    requests, an empty context and a context longer than BLOCK (left-truncated)."""
    q1, q2 = "Question: what is two plus two?\nAnswer:", "The lazy dog "
    long = "The quick brown fox jumps over the lazy dog. " * 6
    return [
        (q1, " four"),
        (q1, " the quick brown fox"),
        (q1, " dog"),
        (q1, " two plus two."),
        (q2, "sleeps"),
        (q2, "jumps over the fox"),
        ("A lazy", " dog sleeps all day."),
        ("", "The quick brown fox"),
        (long, " lazy dog."),
        (long, " quick"),
    ]


def reference(model: GPT, scorer: LMScorer, reqs) -> list[tuple[float, bool]]:
    """The rule stated plainly: each request alone, the whole window's logits."""
    out = []
    for context, continuation in reqs:
        ctx, cont = scorer.encode_pair(context, continuation)
        window = (ctx + cont)[-(BLOCK + 1) :]
        with torch.no_grad():
            logits = model(torch.tensor([window[:-1]]))[0, -len(cont) :]  # (n, V)
        logp = F.log_softmax(logits, dim=-1)
        target = torch.tensor(cont)
        greedy = bool((logp[:, : scorer.vocab_size].argmax(-1) == target).all())
        out.append((float(logp.gather(1, target[:, None]).sum()), greedy))
    return out


# ---------------------------------------------------------------------- three paths, one rule


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_three_paths_agree_with_the_plain_rule(flavour, tok):
    model = tiny(flavour, tok)
    reqs = requests()
    one = LMScorer(model, tok, device="cpu", batch_size=1, use_cache=False, precision="fp64")
    want = reference(model, one, reqs)
    assert len({round(lp, 3) for lp, _ in want}) == len(want)  # all different: no lucky match
    for batch_size, use_cache in [(1, False), (4, False), (4, True), (16, True)]:
        scorer = LMScorer(
            model, tok, device="cpu", batch_size=batch_size, use_cache=use_cache, precision="fp64"
        )
        got = scorer.loglikelihood(reqs)
        assert [g for _, g in got] == [g for _, g in want]
        for (a, _), (b, _) in zip(got, want):
            assert abs(a - b) < 1e-9, (batch_size, use_cache, a, b)


def test_shared_context_path_is_taken_and_rolling_matches_one_forward(tok):
    """The cache path really runs (a context shared by 4 choices is one forward of batch 1),
    and a text of one window scores like one plain forward."""
    model = tiny("gpt2", tok)
    scorer = LMScorer(model, tok, device="cpu", batch_size=8, precision="fp64")
    shapes = []
    hook = model.blocks[0].register_forward_hook(lambda m, a, o: shapes.append(tuple(o.shape)))
    try:
        scorer.loglikelihood(requests()[:4])
    finally:
        hook.remove()
    n_ctx = len(tok.encode("Question: what is two plus two?\nAnswer:"))
    assert shapes[0] == (1, n_ctx, 32)  # the context alone, once
    assert shapes[1][0] == 4 and len(shapes) == 2  # then the four choices together

    text = "A lazy dog sleeps."
    ids = tok.encode(text)
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([[tok.eot_id, *ids[:-1]]]))[0], dim=-1)
    want = float(logp.gather(1, torch.tensor(ids)[:, None]).sum())
    assert abs(scorer.loglikelihood_rolling([text])[0] - want) < 1e-9


def test_repeat_kv_cache_rows_continue_independently(tok):
    model = tiny("llama", tok).eval()
    ctx, a, b = [5, 9, 11, 3], [7, 8], [12, 2]
    with torch.no_grad():
        cache = model.new_kv_cache(6)
        model(torch.tensor([ctx]), kv_cache=cache)
        both = model(torch.tensor([a, b]), kv_cache=repeat_kv_cache(cache, 2))  # (2, 2, V)
        alone = model(torch.tensor([ctx + b]))[:, -2:]
    assert torch.allclose(both[1:], alone, atol=1e-10)
    assert cache.k[0].shape[0] == 1  # the original cache is untouched


# ------------------------------------------------------------------------------ tokenization


def test_encode_pair_follows_lm_eval(tok):
    scorer = LMScorer(tiny("gpt2", tok), tok, device="cpu")
    ctx, cont = scorer.encode_pair("Answer: ", "four")
    assert (ctx, cont) == scorer.encode_pair("Answer:", " four")  # trailing space moves over
    assert ctx == tok.encode("Answer:")
    assert ctx + cont == tok.encode("Answer: four")  # encoded whole, then split
    assert scorer.encode_pair("", "four") == ([tok.eot_id], tok.encode("four"))
    assert scorer.encode_pair("", "<|endoftext|>four") == ([tok.eot_id], tok.encode("four"))
    # special-token text maps to its id, as a transformers tokenizer does
    assert scorer.encode("a<|endoftext|>") == [*tok.encode("a"), tok.eot_id]


def test_prefix_token_from_the_tokenizer_template(tok):
    """A tokenizer whose template adds a BOS (Llama's <s>) gets it on every text, as
    transformers adds it; ours get it only when asked."""
    from tokenizers import processors

    assert LMScorer(tiny("gpt2", tok), tok, device="cpu").lead_id is None
    asked = LMScorer(tiny("gpt2", tok), tok, device="cpu", add_prefix_token=True)
    assert asked.encode("four") == [tok.eot_id, *tok.encode("four")]
    hf = Tokenizer.train(["hello world"], kind="bytes", special_tokens=["<s>", "</s>"]).hf
    hf.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", hf.token_to_id("<s>"))]
    )
    bos_tok = Tokenizer(hf)
    scorer = LMScorer(tiny("gpt2", bos_tok), bos_tok, device="cpu")
    bos = bos_tok.token_to_id("<s>")
    assert scorer.lead_id == bos == scorer.prefix_id
    assert scorer.encode("hi") == [bos, *bos_tok.encode("hi")]
    assert scorer.encode("<s>hi") == [bos, *bos_tok.encode("hi")]  # not twice
    ctx, cont = scorer.encode_pair("hello", " world")
    assert ctx[0] == bos and cont == bos_tok.encode(" world")


def test_rolling_windows_predict_every_token_once():
    for n in [1, 5, 8, 9, 16, 17, 30]:
        tokens = list(range(100, 100 + n))
        pairs = rolling_windows(tokens, prefix_id=0, max_length=8)
        assert [t for _, cont in pairs for t in cont] == tokens
        assert pairs[0][0] == [0]
        for ctx, cont in pairs[1:]:
            assert len(ctx) + len(cont) == 9  # a full window of context
            start = tokens.index(cont[0])
            assert ctx == tokens[start - len(ctx) : start]  # the text just before
    assert rolling_windows([], 0, 8) == []


def test_rolling_over_several_windows_is_the_sum_of_its_pairs(tok):
    model = tiny("llama", tok)
    scorer = LMScorer(model, tok, device="cpu", precision="fp64")
    text = "A fox, a dog; the quick lazy day. " * 6
    ids = tok.encode(text)
    assert len(ids) > 2 * BLOCK  # three windows at least
    pairs = rolling_windows(ids, tok.eot_id, BLOCK)
    want = sum(lp for lp, _ in reference_pairs(model, pairs))
    assert abs(scorer.loglikelihood_rolling([text, ""])[0] - want) < 1e-9
    assert scorer.loglikelihood_rolling([""]) == [0.0]


def reference_pairs(model, pairs):
    out = []
    for ctx, cont in pairs:
        window = (ctx + cont)[-(BLOCK + 1) :]
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([window[:-1]]))[0, -len(cont) :], -1)
        out.append((float(logp.gather(1, torch.tensor(cont)[:, None]).sum()), False))
    return out


# -------------------------------------------------------------- padded vocabulary, generation


class Successor(nn.Module):
    """Predicts id+1 after each id (the end-of-text after the last character), while a padding
    id past the tokenizer gets the largest logit of all: greedy checks and generation must
    never pick it."""

    def __init__(self, n_chars: int, eot: int, vocab: int) -> None:
        super().__init__()
        self.config = GPTConfig(n_layer=1, n_head=1, n_embd=4, block_size=BLOCK, vocab_size=vocab)
        self.n_chars, self.eot, self.vocab = n_chars, eot, vocab
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor, kv_cache=None) -> torch.Tensor:
        nxt = torch.where(idx + 1 < self.n_chars, idx + 1, torch.full_like(idx, self.eot))
        logits = F.one_hot(nxt, self.vocab).double() * 5.0  # (B, T, V)
        logits[..., -1] = 50.0  # a padding id
        return logits + self.dummy


@pytest.fixture(scope="module")
def chars() -> Tokenizer:
    return Tokenizer.train(["abcdefghij"], kind="char")  # a..j = 0..9, <|endoftext|> 10


def test_greedy_and_generation_skip_padding_ids(chars):
    model = Successor(10, chars.eot_id, chars.vocab_size + 5)
    scorer = LMScorer(model, chars, device="cpu", use_cache=False)
    (_, greedy), (_, not_greedy) = scorer.loglikelihood([("ab", "cde"), ("ab", "cdd")])
    assert greedy and not not_greedy
    out = scorer.generate_until(
        [
            ("a", {"until": ["e"]}),  # stops before the stop string
            ("a", {"until": ["x"], "max_gen_toks": 3}),  # stops at max_gen_toks
            ("f", {"until": []}),  # stops at the end-of-text token (after j)
            ("a", {"until": ["cd", "c"]}),  # cut at the earliest stop
        ]
    )
    assert out == ["bcd", "bcd", "ghij", "b"]


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_greedy_generation_matches_generate(flavour, tok):
    model = tiny(flavour, tok)
    prompt = "The lazy dog"
    ids = tok.encode(prompt)
    ref = generate(model, torch.tensor([ids]), 10, temperature=0, vocab_limit=tok.vocab_size)
    special = {tok.eot_id, tok.pad_id}
    new = [t for t in ref[0, len(ids) :].tolist()]
    if tok.eot_id in new:
        new = new[: new.index(tok.eot_id)]
    want = tok.decode([t for t in new if t not in special])
    for use_cache in (True, False):
        scorer = LMScorer(model, tok, device="cpu", use_cache=use_cache, precision="fp64")
        got = scorer.generate_until([(prompt, {"until": [], "max_gen_toks": 10})])
        assert got == [want]
    sampled = LMScorer(model, tok, device="cpu").generate_until(
        [(prompt, {"until": [], "max_gen_toks": 8, "temperature": 1.0, "seed": 3})] * 2
    )
    assert sampled[0] == sampled[1]  # a seed makes sampling reproducible


# ------------------------------------------------------------------- modes, precision, folders


def test_model_mode_restored_and_bf16_close(tok):
    model = tiny("gpt2", tok, dtype=torch.float32).train()
    reqs = requests()[:4]
    fp32 = LMScorer(model, tok, device="cpu").loglikelihood(reqs)
    assert model.training and all(p.grad is None for p in model.parameters())
    bf16 = LMScorer(model, tok, device="cpu", precision="bf16").loglikelihood(reqs)
    for (a, _), (b, _) in zip(fp32, bf16):
        assert abs(a - b) < 0.05 * abs(a) + 0.5  # bf16 keeps ~3 significant digits


def test_from_run_refuses_a_classifier_and_loads_a_model_folder(tok, tmp_path):
    from groundup.interop.hf_export import export_hf

    model = tiny("gpt2", tok, dtype=torch.float32)
    save_model_dir(tmp_path / "run" / "model", model, tok)
    export_hf(model, tmp_path / "hf", tokenizer=tok)
    a = LMScorer.from_run(tmp_path / "run", device="cpu").loglikelihood(requests()[:3])
    b = LMScorer.from_run(tmp_path / "hf", device="cpu").loglikelihood(requests()[:3])
    assert all(abs(x - y) < 1e-4 for (x, _), (y, _) in zip(a, b))
    clf = GPTForSequenceClassification(model.config, 2, pad_id=tok.pad_id)
    export_hf(clf, tmp_path / "clf", tokenizer=tok)
    with pytest.raises(ConfigError, match="causal language model"):
        LMScorer.from_run(tmp_path / "clf", device="cpu")
    with pytest.raises(ConfigError, match="causal language model"):
        LMScorer(clf, tok, device="cpu")


# ---------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_clear_error(tok, chars):
    model = tiny("gpt2", tok)
    scorer = LMScorer(model, tok, device="cpu", precision="fp64")
    assert scorer.loglikelihood([]) == []
    assert scorer.loglikelihood_rolling([]) == [] and scorer.generate_until([]) == []
    with pytest.raises(DataError, match="adds no tokens"):
        scorer.loglikelihood([("The dog", "")])
    with pytest.raises(DataError, match="adds no tokens"):
        scorer.loglikelihood([("", "<|endoftext|>")])  # the prefix itself: nothing left
    with pytest.raises(DataError, match="exceeds max_length"):
        scorer.loglikelihood([("A", " dog" * 40)])
    with pytest.raises(DataError, match=r"\(str, str\)"):
        scorer.loglikelihood([("A", 3)])
    with pytest.raises(ConfigError, match="num_beams"):
        scorer.generate_until([("A", {"num_beams": 4})])
    with pytest.raises(ConfigError, match="no room"):
        scorer.generate_until([("A", {"max_gen_toks": BLOCK})])
    with pytest.raises(ConfigError, match="temperature > 0"):
        scorer.generate_until([("A", {"do_sample": True, "temperature": 0})])
    with pytest.raises(ConfigError, match="batch_size"):
        LMScorer(model, tok, batch_size=0)
    with pytest.raises(ConfigError, match="block_size"):
        LMScorer(model, tok, max_length=BLOCK + 1)
    with pytest.raises(TokenizerError):  # 11 ids, 5 rows
        LMScorer(Successor(3, chars.eot_id, 5), chars, use_cache=False)
    bare = Tokenizer.train(["abc"], kind="char", special_tokens=[])  # no end-of-text token
    with pytest.raises(TokenizerError, match="no BOS or end-of-text"):
        LMScorer(Successor(3, 0, 3), bare, use_cache=False).loglikelihood_rolling(["abc"])
