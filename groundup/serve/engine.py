"""One language model behind `groundup chat` and `groundup serve`: prompts encoded the way the
model was trained, replies streamed as text, cut at stop strings and at the context's end.

Text comes out in pieces as the tokens do, with two holds: a multi-byte character waits for its
last byte, and text that could be the start of a stop string waits until it is known not to be
one, so a stop string never shows, not even in part. What is given out is never taken back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from groundup.errors import ConfigError, DataError
from groundup.generate import _check_options, stream_tokens


@dataclass(frozen=True)
class Options:
    """How one reply is sampled (the options of `groundup.generate.generate`) and where it ends."""

    max_new_tokens: int = 256  # at most; the context's end may come first
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None  # None: torch's global generator
    stop: tuple[str, ...] = ()  # the reply ends before the first of these strings

    def __post_init__(self) -> None:
        _check_options(
            self.max_new_tokens,
            self.temperature,
            self.top_k,
            self.top_p,
            self.repetition_penalty,
            self.no_repeat_ngram_size,
        )

    def sampling(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "seed": self.seed,
        }


class Engine:
    """A loaded language model with its tokenizer and, for an SFT run, its chat template.

    `chat` is True for SFT runs. A base model (pretrain, causal-LM fine-tune, a Hugging Face
    causal LM) continues text; `chat_ids` still renders a conversation for it (the template
    its tokenizer suggests), but it was never trained to answer one.
    """

    def __init__(
        self, model: Any, tokenizer: Any, chat: bool, template: str, name: str, source: str
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.chat = chat
        self.template = template
        self.name = name  # the id clients ask for (/v1/models)
        self.source = source  # the folder it came from, for messages
        self.block_size: int = model.config.block_size
        self.device = next(model.parameters()).device

    @classmethod
    def load(
        cls,
        run: str | Path,
        device: str = "auto",
        allow_pickle: bool = False,
        name: str | None = None,
    ) -> Engine:
        """The language model of a run folder, its model/ folder or a Hugging Face folder."""
        from groundup.models.folders import load_model
        from groundup.train.device import resolve_device

        target = resolve_device(device)
        loaded = load_model(run, allow_pickle=allow_pickle)
        if loaded.task not in ("causal_lm", "sft"):
            what = "a classifier" if loaded.task == "classification" else "a masked LM (BERT)"
            raise ConfigError(
                f"{run} holds {what}, which does not generate text; give a pretrain or "
                "fine-tune (causal_lm, sft) run of a GPT"
            )
        sft = loaded.task == "sft"
        template = loaded.meta.get("template", "auto") if sft else "auto"
        return cls(
            loaded.model.to(target),
            loaded.tokenizer,
            sft,
            template,
            name or default_name(run),
            str(run),
        )

    def describe(self) -> str:
        """ "SFT, template plain, context 128 tokens, on cpu": for banners and logs."""
        from groundup.finetune.sft import get_template

        if self.chat:
            name = get_template(self.template, self.tokenizer).name  # "auto" resolved
            kind = f"SFT, template {name if len(name) <= 40 else 'inline'}"
        else:
            kind = "base language model"
        return f"{kind}, context {self.block_size} tokens, on {self.device}"

    # ---- prompts -----------------------------------------------------------------------------
    def text_ids(self, text: str) -> list[int]:
        """A plain prompt; an empty one starts from the end-of-text token."""
        ids = self.tokenizer.encode(text)
        if not ids:
            if self.tokenizer.eot_id is None:
                raise DataError("an empty prompt, and the tokenizer has no end-of-text token")
            ids = [self.tokenizer.eot_id]
        return ids

    def chat_ids(self, messages: Sequence[Any]) -> list[int]:
        """The conversation (`Message`s) and the assistant's header, in the model's template."""
        from groundup.finetune.sft import Conversation, encode_prompt

        return encode_prompt(Conversation(list(messages)), self.tokenizer, self.template)

    def room(self, ids: Sequence[int]) -> int:
        """How many tokens can follow the prompt before the context is full."""
        return self.block_size - len(ids)

    # ---- replies -----------------------------------------------------------------------------
    def reply(
        self,
        ids: Sequence[int],
        options: Options,
        chat: bool,
        cancelled: Callable[[], bool] | None = None,
    ) -> Generation:
        """A reply to prompt `ids`, iterated as text pieces. `chat` prompts end at the end of
        the assistant's turn; plain prompts at the end-of-text token. `cancelled()` is asked
        after every token (a client that went away)."""
        if self.room(ids) < 1:
            raise DataError(
                f"the prompt is {len(ids)} tokens and the model reads {self.block_size}; shorten it"
            )
        eos, stops = self.tokenizer.eot_id, list(options.stop)
        if chat:
            from groundup.finetune.sft import stop_ids

            marker = stop_ids(self.tokenizer, self.template)
            eos = marker[0] if len(marker) == 1 else None
            if len(marker) > 1:  # a marker the tokenizer splits: stop on its text instead
                stops.append(self.tokenizer.decode(marker))
        return Generation(self, list(ids), options, eos, stops, cancelled)


def default_name(run: str | Path) -> str:
    """The served model's id: the run folder's name (its parent's, for a model/ folder)."""
    path = Path(run).resolve()
    return path.parent.name if path.name == "model" else path.name


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in text, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of text could begin a stop string (so must wait)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


class Generation:
    """One reply in the making: iterate it for text pieces (each yielded once, in order).

    Afterwards: `text` (the whole reply, stop string left out), `finish_reason` ("stop": the
    end-of-turn token or a stop string; "length": max_new_tokens or the context's end, then
    `context_full` is True), `prompt_tokens` and `completion_tokens` (every token sampled, the
    end-of-turn token included).
    """

    def __init__(
        self,
        engine: Engine,
        ids: list[int],
        options: Options,
        eos_id: int | None,
        stops: list[str],
        cancelled: Callable[[], bool] | None,
    ) -> None:
        self.engine, self.ids, self.options = engine, ids, options
        self.eos_id = eos_id
        self.stops = [s for s in stops if s]
        self.cancelled = cancelled or (lambda: False)
        self.text = ""
        self.finish_reason: str | None = None
        self.context_full = False
        self.prompt_tokens = len(ids)
        self.completion_tokens = 0

    def __iter__(self) -> Iterator[str]:
        engine, opts = self.engine, self.options
        budget = min(opts.max_new_tokens, engine.room(self.ids))
        tok = engine.tokenizer
        steps = stream_tokens(
            engine.model,
            torch.tensor([self.ids], device=engine.device),
            budget,
            eos_id=self.eos_id,
            vocab_limit=tok.vocab_size,
            **opts.sampling(),
        )
        new: list[int] = []
        given = 0  # characters of the reply given out so far
        try:
            for step in steps:
                token = int(step[0])
                self.completion_tokens += 1
                if token == self.eos_id:
                    self.finish_reason = "stop"
                    break
                new.append(token)
                text = tok.decode(new)
                cut = first_stop(text, self.stops)
                if cut is not None:
                    self.text, self.finish_reason = text[:cut], "stop"
                    break
                self.text = text
                if not text.endswith("\ufffd"):  # a character still missing bytes waits
                    safe = len(text) - held_back(text, self.stops)
                    if safe > given:
                        yield text[given:safe]
                        given = safe
                if self.cancelled():
                    self.finish_reason = "cancelled"
                    return
        finally:
            steps.close()
        if self.finish_reason is None:
            self.finish_reason = "length"
            self.context_full = budget < opts.max_new_tokens
        if len(self.text) > given:
            yield self.text[given:]

    def run(self) -> str:
        """The whole reply at once."""
        for _ in self:
            pass
        return self.text
