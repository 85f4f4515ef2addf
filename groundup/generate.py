"""Autoregressive sampling with a KV cache: greedy, temperature, top-k, top-p.

Works with any model shaped like `groundup.models.gpt.GPT`: `model(idx, kv_cache=None)`
returns logits (B, T, vocab), `model.config` has block_size and vocab_size, and
`model.new_kv_cache(max_len)` makes a cache.

Past block_size: without a cache, the context is cropped to the last block_size tokens at every
step (nanoGPT's behaviour). With a cache, the cache serves the first block_size positions; when
the sequence outgrows it, generation continues on the cropped window without the cache. Both
paths give the same tokens; the second is simply slower per token once past block_size.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
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


def _check_options(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
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
) -> Tensor:
    """Append up to max_new_tokens sampled tokens to the prompt idx (B, T) or (T,).

    Returns the prompt followed by the new tokens, with idx's rank. With eos_id, a sequence
    that produced eos_id keeps emitting eos_id, and generation stops once all have (the eos
    token is included). `seed` makes sampling reproducible through its own torch.Generator,
    leaving the global RNG alone. `on_token(ids)` gets each step's new ids (B,) for streaming.
    The model runs in eval mode under no_grad; its previous mode is restored afterwards.
    `vocab_limit` samples only ids below it: a model whose embedding is padded past its
    tokenizer (to a multiple of 64) must never emit a padding id, which has no text.
    """
    _check_options(max_new_tokens, temperature, top_k, top_p)
    cfg = model.config
    squeeze = idx.dim() == 1
    if squeeze:
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
    device = next(model.parameters()).device
    out = idx.to(device=device, dtype=torch.long)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    block = cfg.block_size
    cache = None
    if use_cache and max_new_tokens > 0:
        cache = model.new_kv_cache(min(block, out.size(1) + max_new_tokens))
    pending = out[:, -block:]  # tokens the cache has not seen yet
    finished = torch.zeros(out.size(0), dtype=torch.bool, device=device)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(max_new_tokens):
                if cache is not None and cache.pos + pending.size(1) > cache.max_len:
                    cache = None  # the cache is full: go on with cropped windows, no cache
                if cache is not None:
                    logits = model(pending, kv_cache=cache)
                else:
                    logits = model(out[:, -block:])
                last = logits[:, -1, :vocab_limit]  # (B, V)
                next_ids = sample_logits(last, temperature, top_k, top_p, generator)
                if eos_id is not None:
                    next_ids = next_ids.masked_fill(finished, eos_id)
                    finished |= next_ids == eos_id
                out = torch.cat((out, next_ids[:, None]), dim=1)  # (B, T + 1)
                pending = next_ids[:, None]  # (B, 1)
                if on_token is not None:
                    on_token(next_ids)
                if eos_id is not None and bool(finished.all()):
                    break
    finally:
        model.train(was_training)
    return out.squeeze(0) if squeeze else out


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
        temperature=sample.temperature,
        top_k=sample.top_k,
        top_p=sample.top_p,
        eos_id=tokenizer.eot_id,
        seed=sample.seed,
        on_token=on_token if stream else None,
        vocab_limit=tokenizer.vocab_size,
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
        temperature=sample.temperature,
        top_k=sample.top_k,
        top_p=sample.top_p,
        eos_id=stops[0] if len(stops) == 1 else None,
        seed=sample.seed,
        vocab_limit=tokenizer.vocab_size,
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
