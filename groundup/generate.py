"""Autoregressive sampling with a KV cache: greedy, temperature, top-k, top-p, and repetition
control (a repetition penalty, a ban on repeated n-grams).

Works with any model shaped like `groundup.models.gpt.GPT`: `model(idx, kv_cache=None)`
returns logits (B, T, vocab), `model.config` has block_size and vocab_size, and
`model.new_kv_cache(max_len)` makes a cache.

Past block_size: without a cache, the context is cropped to the last block_size tokens at every
step (nanoGPT's behaviour). With a cache, the cache serves the first block_size positions; when
the sequence outgrows it, generation continues on the cropped window without the cache. Both
paths give the same tokens; the second is simply slower per token once past block_size.

Repetition control follows transformers' logits processors, so a setting means the same in both:
the penalty and the n-gram ban look at the whole sequence, prompt included, and act on the logits
before temperature, top-k and top-p (greedy takes the argmax of the processed logits).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from groundup.config import check
from groundup.errors import ConfigError, ShapeError, TokenizerError


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token id per row of logits (B, vocab) -> (B,).

    temperature 0 is greedy (argmax; top_k/top_p are then moot). Otherwise logits are divided
    by temperature, cut to the top_k most likely, then to the smallest set whose probability
    reaches top_p (nucleus), and sampled with `generator`.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # softmax and cumsum in low precision would distort top-p
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        # The most likely token always has mass_before 0 < top_p, so one token always survives.
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = logits.scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def penalize_repeats(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """The CTRL repetition penalty (Keskar et al. 2019, as transformers applies it): the logit
    of every token in `seen` (B, V) bool is divided by `penalty` when positive and multiplied
    by it when negative, so a penalty > 1 always makes a seen token less likely."""
    if penalty == 1.0:
        return logits
    # Trap: dividing a negative logit would raise its probability; hence the two branches.
    punished = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, punished, logits)


class NgramBan:
    """Bans the tokens that would repeat an n-gram already in the sequence (prompt included).

    Kept up to date one token at a time (`push`), so each step costs a dict lookup, not a scan
    of the sequence: per row, each (n-1)-token prefix maps to the tokens that followed it.
    """

    def __init__(self, n: int, rows: list[list[int]]) -> None:
        self.n = n
        self.seqs: list[list[int]] = [[] for _ in rows]
        self.followers: list[dict[tuple[int, ...], set[int]]] = [{} for _ in rows]
        for r, ids in enumerate(rows):
            for token in ids:
                self._add(r, token)

    def _add(self, row: int, token: int) -> None:
        seq = self.seqs[row]
        seq.append(token)
        if len(seq) >= self.n:
            prefix = tuple(seq[len(seq) - self.n : -1])
            self.followers[row].setdefault(prefix, set()).add(token)

    def push(self, tokens: list[int]) -> None:
        """Append one new token to each row."""
        for r, token in enumerate(tokens):
            self._add(r, token)

    def banned(self, row: int) -> list[int]:
        """The tokens that must not come next in `row`."""
        seq = self.seqs[row]
        if len(seq) < self.n:
            return []
        prefix = tuple(seq[len(seq) - self.n + 1 :])  # the last n-1 tokens (none when n=1)
        return sorted(self.followers[row].get(prefix, ()))

    def apply(self, logits: Tensor) -> Tensor:
        """Logits (B, V) with the banned tokens at -inf. A row whose every token is banned (a
        tiny vocabulary, n=1) is left as it is: sampling needs one finite logit."""
        out = logits
        for r in range(logits.size(0)):
            ids = [i for i in self.banned(r) if i < logits.size(-1)]  # ids past V: never sampled
            if not ids or len(ids) == logits.size(-1):
                continue
            if out is logits:
                out = logits.clone()
            out[r, ids] = float("-inf")
        return out


def _check_options(
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> None:
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 0
    ):
        raise ConfigError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1] or None, got {top_p}")
    if not repetition_penalty > 0:
        raise ConfigError(
            f"repetition_penalty must be > 0 (1 = off, 1.1-1.3 is usual), got {repetition_penalty}"
        )
    if (
        isinstance(no_repeat_ngram_size, bool)
        or not isinstance(no_repeat_ngram_size, int)
        or no_repeat_ngram_size < 0
    ):
        raise ConfigError(
            f"no_repeat_ngram_size must be an integer >= 0 (0 = off), got {no_repeat_ngram_size!r}"
        )


def generate(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    on_token: Callable[[Tensor], Any] | None = None,
    vocab_limit: int | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> Tensor:
    """Append up to max_new_tokens sampled tokens to the prompt idx (B, T) or (T,).

    Returns the prompt followed by the new tokens, with idx's rank. With eos_id, a sequence
    that produced eos_id keeps emitting eos_id, and generation stops once all have (the eos
    token is included). `seed` makes sampling reproducible through its own torch.Generator,
    leaving the global RNG alone. `on_token(ids)` gets each step's new ids (B,) for streaming.
    The model runs in eval mode under no_grad; its previous mode is restored afterwards.
    `vocab_limit` samples only ids below it: a model whose embedding is padded past its
    tokenizer (to a multiple of 64) must never emit a padding id, which has no text.
    `repetition_penalty` (> 1 discourages tokens already in the sequence; 1 = off) and
    `no_repeat_ngram_size` (n > 0: no n-gram occurs twice) are transformers' processors.
    """
    squeeze = idx.dim() == 1
    steps = stream_tokens(
        model,
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=eos_id,
        seed=seed,
        use_cache=use_cache,
        vocab_limit=vocab_limit,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    out = [idx.unsqueeze(0) if squeeze else idx]
    for next_ids in steps:
        out.append(next_ids[:, None])  # (B, 1)
        if on_token is not None:
            on_token(next_ids)
    device = next(model.parameters()).device
    tokens = torch.cat([t.to(device=device, dtype=torch.long) for t in out], dim=1)  # (B, T + n)
    return tokens.squeeze(0) if squeeze else tokens


def stream_tokens(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    vocab_limit: int | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> Iterator[Tensor]:
    """`generate`, one step at a time: an iterator of each step's new ids (B,).

    The options are checked now, not at the first `next()`. Stopping early is just not asking
    for more (a chat or a server stops at a stop string); close the iterator (or let it go) to
    put the model back in its previous mode.
    """
    _check_options(
        max_new_tokens, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size
    )
    cfg = model.config
    if idx.dim() == 1:
        idx = idx.unsqueeze(0)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ShapeError(
            f"prompt must be token ids of shape (batch, time) with time >= 1, got "
            f"{tuple(idx.shape)}; start from a BOS/EOS token for an empty prompt"
        )
    if idx.dtype not in (torch.int64, torch.int32):
        raise ShapeError(f"prompt must hold integer token ids, got dtype {idx.dtype}")
    # One range check per call (a device sync), not one per forward.
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= cfg.vocab_size:
        bad = hi if hi >= cfg.vocab_size else lo
        raise TokenizerError(
            f"token id {bad} is outside the model's vocabulary 0..{cfg.vocab_size - 1}; "
            "encode the prompt with the tokenizer the model was trained with"
        )
    return _steps(
        model,
        idx,
        max_new_tokens,
        (temperature, top_k, top_p),
        eos_id,
        seed,
        use_cache,
        vocab_limit,
        repetition_penalty,
        no_repeat_ngram_size,
    )


def _steps(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    sampling: tuple[float, int | None, float | None],
    eos_id: int | None,
    seed: int | None,
    use_cache: bool,
    vocab_limit: int | None,
    repetition_penalty: float,
    no_repeat_ngram_size: int,
) -> Iterator[Tensor]:
    """The sampling loop behind `stream_tokens` (its arguments already checked)."""
    device = next(model.parameters()).device
    out = idx.to(device=device, dtype=torch.long)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    block = model.config.block_size
    cache = None
    if use_cache and max_new_tokens > 0:
        cache = model.new_kv_cache(min(block, out.size(1) + max_new_tokens))
    pending = out[:, -block:]  # tokens the cache has not seen yet
    finished = torch.zeros(out.size(0), dtype=torch.bool, device=device)
    seen: Tensor | None = None  # (B, V + 1) bool: the tokens in the sequence, for the penalty
    ngrams = NgramBan(no_repeat_ngram_size, out.tolist()) if no_repeat_ngram_size else None

    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            with torch.no_grad():
                if cache is not None and cache.pos + pending.size(1) > cache.max_len:
                    cache = None  # the cache is full: go on with cropped windows, no cache
                if cache is not None:
                    logits = model(pending, kv_cache=cache)
                else:
                    logits = model(out[:, -block:])
            last = logits[:, -1, :vocab_limit]  # (B, V)
            if repetition_penalty != 1.0:
                if seen is None:  # one spare column takes the ids past V (never sampled)
                    width = last.size(-1)
                    seen = torch.zeros(out.size(0), width + 1, dtype=torch.bool, device=device)
                    seen.scatter_(1, out.clamp(max=width), True)
                last = penalize_repeats(last, seen[:, :-1], repetition_penalty)
            if ngrams is not None:
                last = ngrams.apply(last)
            next_ids = sample_logits(last, *sampling, generator=generator)
            if eos_id is not None:
                next_ids = next_ids.masked_fill(finished, eos_id)
                finished |= next_ids == eos_id
            out = torch.cat((out, next_ids[:, None]), dim=1)  # (B, T + 1)
            pending = next_ids[:, None]  # (B, 1)
            if seen is not None:
                seen.scatter_(1, next_ids[:, None].clamp(max=seen.size(1) - 1), True)
            if ngrams is not None:
                ngrams.push(next_ids.tolist())
            yield next_ids
            if eos_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)


# ---------------------------------------------------------------- text in, text out
@dataclass
class SampleConfig:
    """The text generated at the end of a run (and the defaults of `groundup generate`)."""

    prompt: str = "\n"  # the text to continue (SFT models: the user's turn)
    max_new_tokens: int = 200  # tokens to generate at most
    temperature: float = 0.8  # 0: greedy; higher: more varied
    top_k: int | None = 200  # sample among the k most likely tokens; null: all
    top_p: float | None = None  # nucleus sampling: the smallest set holding this probability
    seed: int = 0  # the sampling seed (the same prompt and seed give the same text)
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the text less likely; 1: off
    no_repeat_ngram_size: int = 0  # n > 0: no n tokens in a row appear twice; 0: off

    def __post_init__(self) -> None:
        check(
            self.max_new_tokens >= 0,
            f"sample.max_new_tokens must be an integer >= 0, got {self.max_new_tokens}",
        )
        check(
            self.temperature >= 0,
            f"sample.temperature must be >= 0 (0 = greedy), got {self.temperature}",
        )
        check(
            self.top_k is None or self.top_k >= 1,
            f"sample.top_k must be an integer >= 1 or null, got {self.top_k}",
        )
        check(
            self.top_p is None or 0.0 < self.top_p <= 1.0,
            f"sample.top_p must be in (0, 1] or null, got {self.top_p}",
        )
        check(
            self.repetition_penalty > 0,
            f"sample.repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}",
        )
        check(
            self.no_repeat_ngram_size >= 0,
            f"sample.no_repeat_ngram_size must be an integer >= 0 (0 = off), got "
            f"{self.no_repeat_ngram_size}",
        )

    def options(self) -> dict[str, Any]:
        """The keyword arguments of `generate` that this sample sets."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
        }


def sample_text(model, tokenizer, sample: SampleConfig, stream: bool = False) -> str:
    """Generate a continuation of `sample.prompt`; with `stream`, print it as it comes."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(sample.prompt) or [tokenizer.eot_id]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    printed = ""
    new: list[int] = []

    def on_token(token_ids: torch.Tensor) -> None:
        nonlocal printed
        new.append(int(token_ids[0]))
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
            return
        sys.stdout.write(text[len(printed) :])
        sys.stdout.flush()
        printed = text

    if stream:
        sys.stdout.write(sample.prompt)
    out = generate(
        model,
        idx,
        sample.max_new_tokens,
        eos_id=tokenizer.eot_id,
        on_token=on_token if stream else None,
        vocab_limit=tokenizer.vocab_size,
        **sample.options(),
    )
    if stream:
        sys.stdout.write("\n")
        sys.stdout.flush()
    return tokenizer.decode(out[0, len(ids) :].tolist())


def sample_reply(
    model: Any, tokenizer: Any, sample: SampleConfig, template: str, stream: bool = False
) -> str:
    """Answer `sample.prompt` as an SFT model was trained to: the prompt becomes a user turn
    of the chat template, and generation stops at the end of the assistant's turn."""
    from groundup.finetune.sft import Conversation, Message, encode_prompt, stop_ids

    ids = encode_prompt(Conversation([Message("user", sample.prompt)]), tokenizer, template)
    stops = stop_ids(tokenizer, template)
    # Trap: a marker the tokenizer lacks as a special token is several ids; generation can
    # only stop on one, so it runs on and the reply is cut where the marker's text appears.
    marker = tokenizer.decode(stops) if len(stops) > 1 else None
    device = next(model.parameters()).device
    out = generate(
        model,
        torch.tensor([ids], device=device),
        sample.max_new_tokens,
        eos_id=stops[0] if len(stops) == 1 else None,
        vocab_limit=tokenizer.vocab_size,
        **sample.options(),
    )
    new = out[0, len(ids) :].tolist()
    if len(stops) == 1 and stops[0] in new:
        new = new[: new.index(stops[0])]
    text = tokenizer.decode(new)
    if marker:
        text = text.split(marker)[0]
    if stream:
        print(f"{tokenizer.decode(ids)}{text}", flush=True)
    return text
