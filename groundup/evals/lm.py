"""Scoring text with a groundup causal LM the way lm-evaluation-harness scores a model.

`LMScorer` answers lm-eval's three request types with our GPT and Tokenizer:
- `loglikelihood`: (context, continuation) -> (log p(continuation | context) in nats, greedy?)
- `loglikelihood_rolling`: text -> log p(text), in windows of max_length tokens
- `generate_until`: (context, options) -> the generated text, cut at the first stop string

Tokenization follows lm-eval's `hf` model, so the numbers agree with it on our Hugging Face
export (tests/test_harness.py): trailing whitespace of the context moves to the continuation;
context + continuation are encoded whole and split at the length of the encoded context; an
empty context is the prefix token (BOS, else end-of-text); the input is left-truncated to
max_length + 1 tokens. Special-token strings in the text map to their ids, as a transformers
tokenizer does (pretraining streams encode them as plain text; an evaluation prompt is not one).

Three ways to score loglikelihood requests give the same numbers (pinned in fp64 by the tests):
one request per forward (batch_size=1); batches sorted by length and right-padded (causal
attention keeps the padding invisible to the real tokens); and, with use_cache, requests sharing
a context (the choices of a multiple-choice question) as one forward of the context whose KV
cache is copied over the choices, which then run only their own tokens.

Two documented differences from lm-eval's hf model, both on a vocabulary padded past the
tokenizer: greedy checks and generation consider only ids the tokenizer has (a padding id has
no text), while the log-softmax spans the model's whole output, as hf's does.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groundup.errors import ConfigError, DataError, ShapeError, TokenizerError
from groundup.generate import sample_logits
from groundup.interop.hf_dir import _BOS_NAMES
from groundup.models.blocks import KVCache
from groundup.train.device import resolve_device, resolve_precision, weight_dtype

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids), both non-empty
LM_TASKS = ("causal_lm", "sft")
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when a task gives none
_MAX_TOKEN_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
GEN_OPTIONS = ("until", *_MAX_TOKEN_KEYS, "temperature", "do_sample", "top_k", "top_p", "seed")


def rolling_windows(tokens: Sequence[int], prefix_id: int, max_length: int) -> list[Pair]:
    """(context, continuation) pairs that predict every token of `tokens` exactly once.

    The first window predicts up to max_length tokens after the prefix token; each later one
    predicts the next max_length tokens (fewer at the end) with as much preceding text as
    context as fits, so every pair is max_length + 1 tokens long except a short first one.
    This is lm-eval's rolling scheme with context_len=1, in disjoint form.
    """
    tokens = list(tokens)
    if not tokens:
        return []
    done = min(max_length, len(tokens))
    pairs = [([prefix_id], tokens[:done])]
    while done < len(tokens):
        end = min(len(tokens), done + max_length)
        pairs.append((tokens[end - max_length - 1 : done], tokens[done:end]))
        done = end
    return pairs


def repeat_kv_cache(cache: KVCache, n: int) -> KVCache:
    """A cache holding `n` copies of the single sequence in `cache` (batch 1), so n different
    continuations can each go on from the same cached context."""
    out = KVCache(cache.n_layer, cache.max_len)
    for layer, (k, v) in enumerate(zip(cache.k, cache.v)):
        if k is None or v is None:
            continue
        if k.shape[0] != 1:
            raise ShapeError(f"repeat_kv_cache copies a cache of batch 1, got batch {k.shape[0]}")
        out.k[layer] = k.repeat(n, 1, 1, 1)  # (n, nkv, max_len, hs): own memory per row
        out.v[layer] = v.repeat(n, 1, 1, 1)
    out.pos = cache.pos
    return out


def _template_bos(tokenizer: Any) -> int | None:
    """The id a transformers tokenizer puts before every text (Llama's <s>), if its
    tokenizer.json's post-processor adds one; our own tokenizers add none."""
    spec = json.loads(tokenizer.to_json())
    post = spec.get("post_processor") or {}
    steps = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for step in steps:
        if step.get("type") == "TemplateProcessing" and step.get("single"):
            first = step["single"][0]
            if "SpecialToken" in first:
                return tokenizer.token_to_id(first["SpecialToken"]["id"])
    return None


def _check_count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class LMScorer:
    """Scores text with a groundup causal LM (`model(idx, kv_cache=None) -> logits`,
    `model.new_kv_cache(max_len)`, `model.config.block_size/vocab_size`) and its Tokenizer.

    device: "auto" (CUDA when present), "cpu", "cuda"...; the model is moved there.
    precision: "fp32" (default), "bf16" (autocast), "fp64" (casts the model to float64: the
    reference of the equivalence tests), "auto" or "fp16" (CUDA) as in training configs.
    batch_size: requests per forward. use_cache: run a context shared by several requests once.
    add_prefix_token: put the prefix token before every encoded text; None (default) does it
    only when the tokenizer's own template does (as transformers would), which groundup's
    tokenizers never do. max_length: the longest input (default and at most block_size).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 16,
        use_cache: bool = True,
        precision: str = "fp32",
        add_prefix_token: bool | None = None,
        max_length: int | None = None,
    ) -> None:
        from groundup.models import bert
        from groundup.models.gpt import GPTForSequenceClassification

        config = getattr(model, "config", None)
        block = getattr(config, "block_size", None)
        not_lm = (
            GPTForSequenceClassification,
            bert.Bert,
            bert.BertForMaskedLM,
            bert.BertForSequenceClassification,
            bert.BertForTokenClassification,
        )
        if not isinstance(model, nn.Module) or block is None or isinstance(model, not_lm):
            raise ConfigError(
                f"LMScorer needs a causal language model shaped like groundup's GPT "
                f"(model.config.block_size, logits over the vocabulary), got {type(model).__name__}"
            )
        self.batch_size = _check_count("batch_size", batch_size, 1)
        self.max_length = block if max_length is None else _check_count("max_length", max_length, 1)
        if self.max_length > block:
            raise ConfigError(
                f"max_length {max_length} exceeds the model's block_size {block}; use at most {block}"
            )
        if use_cache and not callable(getattr(model, "new_kv_cache", None)):
            raise ConfigError(
                f"{type(model).__name__} has no new_kv_cache(); pass use_cache=False to score it"
            )
        tokenizer.check_fits(config.vocab_size)
        self.device = resolve_device(device)
        self.autocast = resolve_precision(precision, self.device)
        self.dtype = weight_dtype(precision)
        self.model = model.to(device=self.device, dtype=self.dtype)
        self.tokenizer = tokenizer
        self.use_cache = bool(use_cache)
        self.vocab_size = tokenizer.vocab_size  # greedy picks and generation stay below it
        bos = next((i for i in map(tokenizer.token_to_id, _BOS_NAMES) if i is not None), None)
        self.prefix_id: int | None = tokenizer.eot_id if bos is None else bos
        self.eot_id: int | None = tokenizer.eot_id
        lead = _template_bos(tokenizer) if add_prefix_token is not False else None
        if add_prefix_token and lead is None:
            lead = self.prefix_id
        self.lead_id = lead
        self.lead_text = tokenizer.decode([lead]) if lead is not None else None
        self.special_ids = {tokenizer.token_to_id(s) for s in tokenizer.special_tokens}
        # GPT exposes its trunk: the vocabulary projection then runs only on scored positions
        self._split = callable(getattr(model, "hidden_states", None)) and isinstance(
            getattr(model, "lm_head", None), nn.Module
        )

    @classmethod
    def from_run(cls, path: str | Path, *, allow_pickle: bool = False, **kwargs: Any) -> LMScorer:
        """A scorer for any language-model folder `load_model` reads: a pretrain run, a
        causal_lm or sft fine-tune (LoRA or full), a Hugging Face causal LM."""
        from groundup.models.folders import load_model

        tm = load_model(path, allow_pickle=allow_pickle)
        if tm.task not in LM_TASKS:
            raise ConfigError(
                f"{path} holds a {tm.family} {tm.task} model; scoring text needs a causal "
                "language model (a pretrain run, a causal_lm or sft fine-tune, or a Hugging "
                "Face causal LM)"
            )
        return cls(tm.model, tm.tokenizer, **kwargs)

    # ---- tokenization -------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of `text` as lm-eval's hf model gets them from the tokenizer (with the lead
        token when the tokenizer adds one, unless the text already starts with it)."""
        ids = self.tokenizer.encode(text, allow_special=True)
        if self.lead_id is None or (self.lead_text and text.startswith(self.lead_text)):
            return ids
        return [self.lead_id, *ids]

    def token_count(self, text: str) -> int:
        """How many tokens the model sees for `text`."""
        return len(self.encode(text))

    def _prefix(self) -> int:
        if self.prefix_id is None:
            raise TokenizerError(
                "the tokenizer has no BOS or end-of-text token to condition a text's first "
                "token on; retrain it with the default special tokens (<|endoftext|>)"
            )
        return self.prefix_id

    def encode_pair(self, context: str, continuation: str) -> Pair:
        """(context ids, continuation ids) of one loglikelihood request, as lm-eval splits it."""
        if not isinstance(context, str) or not isinstance(continuation, str):
            raise DataError(
                f"a loglikelihood request is (context, continuation) text, got "
                f"({type(context).__name__}, {type(continuation).__name__})"
            )
        if context == "":
            cont = self.tokenizer.encode(continuation, allow_special=True)
            if cont and cont[0] == self._prefix():
                ctx, cont = cont[:1], cont[1:]
            else:
                ctx = [self._prefix()]
        else:
            spaces = len(context) - len(context.rstrip())
            if spaces:  # "Answer: " + "4" -> "Answer:" + " 4": the space belongs to the word
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole = self.encode(context + continuation)
            ctx = self.encode(context)
            cont = whole[len(ctx) :]
        if not cont:
            raise DataError(
                f"the continuation {continuation!r} adds no tokens to its context; every "
                "loglikelihood request needs at least one continuation token to score"
            )
        if len(cont) > self.max_length:
            raise DataError(
                f"a continuation of {len(cont)} tokens exceeds max_length {self.max_length}; "
                "shorten it or use a model with a longer context"
            )
        return ctx, cont

    # ---- the three request types --------------------------------------------------------
    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context) in nats, whether greedy decoding would produce
        the continuation) per (context, continuation). A context too long for max_length loses
        its oldest tokens, as in lm-eval."""
        pairs = [self.encode_pair(*_two(request)) for request in requests]
        return self.score_pairs(pairs)

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """log p(text) of each whole text, the first token conditioned on the prefix token,
        in windows of max_length (`rolling_windows`); an empty text scores 0.0, as in lm-eval."""
        pairs: list[Pair] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(
                    f"loglikelihood_rolling takes texts (str), got {type(text).__name__}"
                )
            windows = rolling_windows(self.encode(text), self._prefix(), self.max_length)
            pairs += windows
            owner += [i] * len(windows)
        totals = [0.0] * len(texts)
        for i, (logp, _) in zip(owner, self.score_pairs(pairs, share_contexts=False)):
            totals[i] += logp
        return totals

    def generate_until(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        """The text generated after each context, cut before the first stop string (`until`)
        and at the end-of-text token. Options: until; max_gen_toks (aliases max_new_tokens,
        max_tokens; default 256, or half of max_length when that is less); temperature (0:
        greedy, the default), do_sample, top_k, top_p, seed. The context keeps its last
        max_length - max_gen_toks tokens, as in lm-eval."""
        plans = []
        for request in requests:
            context, options = _two(request, "generate_until", (str, dict))
            until, max_new, sampling = _generation_options(options, self.max_length)
            ids = self.encode(context)[-(self.max_length - max_new) :] or [self._prefix()]
            plans.append((ids, until, max_new, sampling))
        with self._inference():
            return [self._generate(*plan) for plan in plans]

    # ---- scoring --------------------------------------------------------------------------
    def score_pairs(
        self, pairs: Sequence[Pair], share_contexts: bool | None = None
    ) -> list[tuple[float, bool]]:
        """(log-likelihood, greedy?) of encoded (context, continuation) pairs. share_contexts
        (default: use_cache) runs each context shared by several pairs once, with a KV cache."""
        share = self.use_cache if share_contexts is None else share_contexts
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        rest = list(range(len(pairs)))
        with self._inference():
            if share:
                groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
                for i in rest:
                    ctx, cont = pairs[i]
                    if len(ctx) + len(cont) <= self.max_length + 1:  # not truncated
                        groups[tuple(ctx)].append(i)
                shared = [g for g in groups.values() if len(g) > 1]
                for group in shared:
                    scores = self._score_shared(pairs[group[0]][0], [pairs[i][1] for i in group])
                    for i, score in zip(group, scores):
                        results[i] = score
                done = {i for g in shared for i in g}
                rest = [i for i in rest if i not in done]
            # longest first, as lm-eval does: batches of like lengths waste little padding
            rest.sort(key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
            for start in range(0, len(rest), self.batch_size):
                batch = rest[start : start + self.batch_size]
                for i, score in zip(batch, self._score_batch([pairs[i] for i in batch])):
                    results[i] = score
        return results  # type: ignore[return-value]

    def _score_batch(self, pairs: Sequence[Pair]) -> list[tuple[float, bool]]:
        """One forward of right-padded rows: each row is context + continuation minus its last
        token, left-truncated to max_length; its last len(continuation) positions are scored."""
        inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for ctx, cont in pairs]
        idx = torch.zeros(len(inputs), max(map(len, inputs)), dtype=torch.long)  # (B, T)
        for row, ids in enumerate(inputs):
            idx[row, : len(ids)] = torch.tensor(ids)
        hidden = self._trunk(idx.to(self.device))  # (B, T, C), or logits
        rows = torch.cat([torch.full((len(c),), r) for r, (_, c) in enumerate(pairs)])
        cols = torch.cat(
            [torch.arange(len(ids) - len(c), len(ids)) for ids, (_, c) in zip(inputs, pairs)]
        )
        picked = hidden[rows.to(self.device), cols.to(self.device)]  # (N, C)
        return self._finish(picked, [cont for _, cont in pairs])

    def _score_shared(
        self, context: list[int], continuations: list[list[int]]
    ) -> list[tuple[float, bool]]:
        """One forward of the context (batch 1) into a KV cache, copied over the
        continuations, which run together (right-padded) after it."""
        n, longest = len(continuations), max(map(len, continuations))
        cache = self.model.new_kv_cache(len(context) + longest - 1)
        ctx = torch.tensor([context], dtype=torch.long, device=self.device)  # (1, T)
        last = self._trunk(ctx, cache)[:, -1]  # (1, C): predicts each continuation's first token
        rows = [last.expand(n, -1)]
        if longest > 1:
            cache = repeat_kv_cache(cache, n)
            idx = torch.zeros(n, longest - 1, dtype=torch.long)  # (n, longest-1)
            for row, cont in enumerate(continuations):
                idx[row, : len(cont) - 1] = torch.tensor(cont[:-1])
            rows.append(self._trunk(idx.to(self.device), cache))  # (n, longest-1, C)
        picked = [
            torch.cat([rows[0][j : j + 1], *([rows[1][j, : len(c) - 1]] if len(c) > 1 else [])])
            for j, c in enumerate(continuations)
        ]
        return self._finish(torch.cat(picked), continuations)

    def _trunk(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        """Final hidden states (B, T, C) when the model exposes its trunk (GPT), else logits."""
        if self._split:
            return self.model.hidden_states(idx, cache)
        return self.model(idx, kv_cache=cache) if cache is not None else self.model(idx)

    def _logits(self, hidden: Tensor) -> Tensor:
        logits = self.model.logits(hidden) if self._split else hidden  # soft-cap included
        return logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 softmax in bf16

    def _finish(self, picked: Tensor, targets: list[list[int]]) -> list[tuple[float, bool]]:
        """Log-probabilities and greedy checks of the scored positions picked (N, C or V), in
        the order of the concatenated targets."""
        logp = F.log_softmax(self._logits(picked), dim=-1)  # (N, V): the model's whole output
        flat = torch.tensor([t for cont in targets for t in cont], device=logp.device)  # (N,)
        token_logp = logp.gather(1, flat[:, None]).squeeze(1)  # (N,)
        greedy = logp[:, : self.vocab_size].argmax(-1) == flat  # (N,)
        out, start = [], 0
        for cont in targets:
            end = start + len(cont)
            out.append((float(token_logp[start:end].sum()), bool(greedy[start:end].all())))
            start = end
        return out

    def _generate(
        self, ids: list[int], until: list[str], max_new: int, sampling: dict[str, Any]
    ) -> str:
        """One continuation, token by token through a KV cache (the whole window fits in it:
        the context was cut to leave room for max_new tokens)."""
        seed = sampling.pop("seed", None)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        cache = self.model.new_kv_cache(len(ids) + max_new) if self.use_cache else None
        pending = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
        new: list[int] = []
        text = ""
        for _ in range(max_new):
            window = pending if cache is not None else torch.tensor([ids + new], device=self.device)
            hidden = self._trunk(window, cache)[:, -1]  # (1, C)
            last = self._logits(hidden)[:, : self.vocab_size]  # (1, V): real tokens only
            token = int(sample_logits(last, generator=generator, **sampling)[0])
            if token == self.eot_id:
                break
            new.append(token)
            text = self.tokenizer.decode([t for t in new if t not in self.special_ids])
            if any(stop in text for stop in until):
                break
            pending = torch.tensor([[token]], device=self.device)
        return _cut(text, until)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """Eval mode, no autograd, the precision's autocast; the model's mode restored after."""
        was_training = self.model.training
        self.model.eval()
        amp = self.autocast
        try:
            with (
                torch.no_grad(),
                torch.autocast(
                    self.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None
                ),
            ):
                yield
        finally:
            self.model.train(was_training)


def _two(request: Any, kind: str = "loglikelihood", types: tuple = (str, str)) -> tuple:
    if not isinstance(request, (tuple, list)) or len(request) != 2:
        raise DataError(
            f"a {kind} request is a pair ({', '.join(t.__name__ for t in types)}), got {request!r:.80}"
        )
    a, b = request
    if not isinstance(a, types[0]) or not isinstance(b, types[1]):
        raise DataError(
            f"a {kind} request is ({', '.join(t.__name__ for t in types)}), got "
            f"({type(a).__name__}, {type(b).__name__})"
        )
    return a, b


def _cut(text: str, until: Sequence[str]) -> str:
    """`text` before the earliest occurrence of any non-empty stop string."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def _generation_options(
    options: dict[str, Any], max_length: int
) -> tuple[list[str], int, dict[str, Any]]:
    """(stop strings, max new tokens, sample_logits keywords + seed), lm-eval's rules checked."""
    unknown = sorted(set(options) - set(GEN_OPTIONS))
    if unknown:
        raise ConfigError(
            f"generation option(s) {', '.join(unknown)} are not supported; use {', '.join(GEN_OPTIONS)}"
        )
    until = options.get("until") or []
    until = [until] if isinstance(until, str) else until
    if not isinstance(until, (list, tuple)) or not all(isinstance(s, str) for s in until):
        raise ConfigError(f"until must be a string or a list of strings, got {until!r}")
    given = [options[k] for k in _MAX_TOKEN_KEYS if options.get(k) is not None]
    # lm-eval's default of 256 would leave a small model no context: at most half of it then
    default = min(DEFAULT_MAX_GEN_TOKS, max(1, max_length // 2))
    max_new = _check_count("max_gen_toks", int(given[0]) if given else default, 1)
    if max_new >= max_length:
        raise ConfigError(
            f"max_gen_toks {max_new} leaves no room for a context in max_length {max_length}; "
            f"ask for fewer than {max_length} new tokens"
        )
    temperature = float(options.get("temperature") or 0.0)
    do_sample = options.get("do_sample")
    if do_sample is None:
        do_sample = temperature > 0
    if not do_sample:
        temperature = 0.0
    elif not temperature > 0:
        raise ConfigError(f"do_sample needs a temperature > 0, got {temperature}")
    top_k, top_p = options.get("top_k"), options.get("top_p")
    if top_k is not None:
        _check_count("top_k", top_k, 1)
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    if options.get("seed") is not None:
        sampling["seed"] = options["seed"]
    return list(until), max_new, sampling
