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

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

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
