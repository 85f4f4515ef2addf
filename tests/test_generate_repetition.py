"""Repetition control: the penalty and the n-gram ban give transformers' logits exactly, and
`generate` with them gives the tokens of a plain loop over transformers' processors."""

from __future__ import annotations

import pytest
import torch

from groundup.errors import ConfigError
from groundup.generate import NgramBan, SampleConfig, generate, penalize_repeats, sample_logits
from groundup.models.gpt import GPT, GPTConfig

lp = pytest.importorskip("transformers.generation.logits_process")

pytestmark = pytest.mark.usefixtures("one_thread")


def random_case(seed: int, batch: int = 3, length: int = 30, vocab: int = 40, ids_below: int = 8):
    """Logits of both signs, and sequences drawn from few ids so that they repeat a lot."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g) * 3
    ids = torch.randint(0, ids_below, (batch, length), generator=g)
    return logits, ids


def seen_mask(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.zeros(ids.size(0), vocab, dtype=torch.bool).scatter_(1, ids, True)


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_repetition_penalty_equals_transformers(penalty, dtype) -> None:
    logits, ids = random_case(0)
    logits = logits.to(dtype)
    want = lp.RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    got = penalize_repeats(logits, seen_mask(ids, logits.size(-1)), penalty)
    assert torch.equal(got, want)
    seen = seen_mask(ids, logits.size(-1))
    assert torch.equal(got[~seen], logits[~seen])
    if penalty > 1:  # a seen token's logit always falls, whatever its sign
        assert (got[seen] < logits[seen]).all()


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_ban_equals_transformers_at_every_length(n) -> None:
    logits, ids = random_case(n, length=25)
    proc = lp.NoRepeatNGramLogitsProcessor(n)
    ban = NgramBan(n, ids[:, :1].tolist())
    checked = 0
    for t in range(1, ids.size(1) + 1):  # built once, then one token at a time
        if t > 1:
            ban.push(ids[:, t - 1].tolist())
        want = proc(ids[:, :t], logits.clone())
        assert torch.equal(ban.apply(logits), want), f"n={n}, length {t}"
        checked += int(torch.isinf(want).any())
    assert checked > 0  # the case did ban something
    full = NgramBan(n, ids.tolist())  # built in one go: the same state
    assert torch.equal(full.apply(logits), ban.apply(logits))


def test_ngram_ban_ignores_ids_past_the_logits_and_keeps_one_token() -> None:
    ban = NgramBan(1, [[0, 1, 2, 7]])
    out = ban.apply(torch.zeros(1, 4))
    assert torch.isinf(out[0, :3]).all() and out[0, 3] == 0  # id 7 has no logit: no error
    assert torch.equal(NgramBan(1, [[0, 1, 2, 3]]).apply(torch.zeros(1, 4)), torch.zeros(1, 4))


def tiny() -> GPT:
    """float64 and a large init: greedy loops on repeats, and no near-ties decide a token."""
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name("gpt2-tiny", init_std=0.3)).double().eval()


def reference_loop(model, idx, steps, processors, temperature, seed, vocab_limit=None):
    """The plainest generation: the whole sequence through the model every step, transformers'
    processors on the last logits, then our sampler."""
    g = torch.Generator().manual_seed(seed)
    out = idx.clone()
    with torch.no_grad():
        for _ in range(steps):
            last = model(out[:, -model.config.block_size :])[:, -1, :vocab_limit]
            last = lp.LogitsProcessorList(processors)(out, last)
            out = torch.cat((out, sample_logits(last, temperature, generator=g)[:, None]), 1)
    return out


@pytest.mark.parametrize("temperature", [0.0, 1.2])
@pytest.mark.parametrize(
    "penalty, n", [(1.5, 0), (1.0, 2), (1.3, 3), (0.8, 4)], ids=["penalty", "ngram", "both", "low"]
)
def test_generate_equals_a_loop_over_transformers_processors(temperature, penalty, n) -> None:
    model = tiny()
    idx = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(2))
    processors = []
    if penalty != 1.0:
        processors.append(lp.RepetitionPenaltyLogitsProcessor(penalty))
    if n:
        processors.append(lp.NoRepeatNGramLogitsProcessor(n))
    for limit, steps in [(None, 30), (50, 70)]:  # 70 runs past block_size (64): cropped windows
        want = reference_loop(model, idx, steps, processors, temperature, 4, limit)
        got = generate(
            model,
            idx,
            steps,
            temperature=temperature,
            seed=4,
            vocab_limit=limit,
            repetition_penalty=penalty,
            no_repeat_ngram_size=n,
        )
        assert torch.equal(got, want)


def ngram_repeats(row: list[int], n: int) -> int:
    grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
    return len(grams) - len(set(grams))


def test_the_options_change_a_looping_greedy_output() -> None:
    model = tiny()
    idx = torch.tensor([[1, 2, 3]])
    plain = generate(model, idx, 40, temperature=0)[0].tolist()
    assert ngram_repeats(plain, 2) > 0  # greedy on this model repeats itself
    banned = generate(model, idx, 40, temperature=0, no_repeat_ngram_size=2)[0].tolist()
    assert ngram_repeats(banned, 2) == 0
    penalized = generate(model, idx, 40, temperature=0, repetition_penalty=3.0)[0].tolist()
    assert len(set(penalized)) > len(set(plain))


def test_eos_and_streaming_keep_working_with_the_options() -> None:
    model = tiny()
    idx = torch.tensor([[5, 6]])
    free = generate(model, idx, 12, temperature=0, repetition_penalty=1.4, no_repeat_ngram_size=2)
    eos = int(free[0, 5])
    seen: list[torch.Tensor] = []
    out = generate(
        model,
        idx,
        12,
        temperature=0,
        eos_id=eos,
        on_token=seen.append,
        repetition_penalty=1.4,
        no_repeat_ngram_size=2,
    )
    first = free[0, 2:].tolist().index(eos)
    assert out[0].tolist() == free[0, : 2 + first + 1].tolist()
    assert torch.equal(torch.cat(seen), out[0, 2:])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
        (dict(repetition_penalty=-1.2), "repetition_penalty must be > 0"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be an integer >= 0"),
        (dict(no_repeat_ngram_size=1.5), "no_repeat_ngram_size must be an integer >= 0"),
    ],
)
def test_bad_options_are_config_errors(kwargs, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment):
        generate(tiny(), torch.tensor([[1, 2]]), 3, **kwargs)


def test_sample_config_checks_and_passes_the_options() -> None:
    with pytest.raises(ConfigError, match="sample.repetition_penalty must be > 0"):
        SampleConfig(repetition_penalty=0)
    with pytest.raises(ConfigError, match="sample.no_repeat_ngram_size"):
        SampleConfig(no_repeat_ngram_size=-2)
    opts = SampleConfig(repetition_penalty=1.2, no_repeat_ngram_size=3).options()
    assert opts["repetition_penalty"] == 1.2 and opts["no_repeat_ngram_size"] == 3
