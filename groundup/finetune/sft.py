"""Instruction SFT data: read JSONL conversations, render a chat template, mask the prompt.

The model learns only what the assistant says. Every target that is a system, user or
template token, or padding, is -100 (skipped by SparseCategoricalCrossentropy); the marker
that ends an assistant turn is trained, so the model learns to stop.

Templates are Jinja strings (chat_templates.py), and a conversation is encoded as
transformers' `apply_chat_template(messages, tokenize=True)` encodes it on an export: the
rendered text, with every added-token string the template wrote ("<|im_start|>") as its id
and the text between encoded whole (a marker the tokenizer lacks is ordinary text: still
correct, only longer; generation then needs a stop string). Special-token strings typed in
message content stay text: a user who types "<|im_end|>" cannot forge the end of a turn.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from groundup.data.tokenizers import Tokenizer
from groundup.errors import ConfigError, DataError, MissingFileError
from groundup.finetune.chat_encoding import chat_codec
from groundup.finetune.chat_templates import (
    CHAT_TEMPLATES,
    ChatTemplate,
    Message,
    assistant_end,
    load_template,
    pick_template,
    render_chat,
    resolve_template,
    template_tokens,
)
from groundup.registry import did_you_mean

IGNORE_INDEX = -100  # what SparseCategoricalCrossentropy skips
ROLES: tuple[str, ...] = ("system", "user", "assistant")
# more truncated examples than this share of a data set is a warning (any dropped one too)
TRUNCATION_WARN_FRACTION = 0.05
__all__ = [  # chat_templates names are re-exported: callers import them from here
    "CHAT_TEMPLATES",
    "ChatTemplate",
    "Conversation",
    "Message",
    "SFTTensors",
    "encode_chat",
    "encode_prompt",
    "encode_sft",
    "get_template",
    "pick_template",
    "read_sft_jsonl",
    "render",
    "stop_ids",
    "template_tokens",
]


# ---- conversations -------------------------------------------------------------------------
@dataclass
class Conversation:
    """The turns of one training example; `source` ("data.jsonl line 3") names it in errors."""

    messages: list[Message]
    source: str = ""

    @classmethod
    def from_pair(cls, prompt: str, response: str, system: str | None = None) -> Conversation:
        msgs = [Message("system", system)] if system else []
        return cls([*msgs, Message("user", prompt), Message("assistant", response)])


def decode_utf8(raw: bytes, name: str) -> str:
    """Text of a data file; a bad byte is a DataError naming the file and line."""
    try:
        return raw.decode("utf-8-sig")  # -sig: a BOM from Windows editors is not text
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{name} line {line} is not valid UTF-8 (byte 0x{raw[e.start]:02x}); "
            "re-save the file as UTF-8"
        ) from None


def _read_lines(path: str | os.PathLike[str], what: str) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines of a UTF-8 file."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"{what} file {p} not found; check the path")
    text = decode_utf8(p.read_bytes(), str(p))
    # Trap: str.splitlines also splits on U+2028/U+0085, which JSON strings may hold raw.
    lines = [(i, ln.rstrip("\r")) for i, ln in enumerate(text.split("\n"), 1)]
    return [(i, ln) for i, ln in lines if ln.strip()]


def _load_json_object(line: str, where: str, example: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{where}: invalid JSON ({e.msg} at column {e.colno}); write one JSON object per line"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"{where}: expected a JSON object, got {type(obj).__name__}; write one object per "
            f"line such as {example}"
        )
    return obj


def _keys(obj: Mapping[str, Any]) -> str:
    return ", ".join(map(str, obj)) or "none"


def _string(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field '{key}' must be a string, got {type(value).__name__}; "
            "quote it in the JSON"
        )
    return value


def _parse_messages(items: Any, field_name: str, where: str) -> list[Message]:
    if not isinstance(items, list) or not items:
        raise DataError(
            f"{where}: field '{field_name}' must be a non-empty list of "
            '{"role": ..., "content": ...} objects'
        )
    out = []
    for k, m in enumerate(items, 1):
        at = f"{where}, message {k}"
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            got = f"keys: {_keys(m)}" if isinstance(m, dict) else type(m).__name__
            raise DataError(
                f'{at}: each message needs "role" and "content" (got {got}); '
                'write {"role": "user", "content": "..."}'
            )
        role, content = _string(m, "role", at), _string(m, "content", at)
        if role not in ROLES:
            raise DataError(
                f"{at}: unknown role '{role}'{did_you_mean(role.lower(), ROLES)}; "
                f"valid roles: {', '.join(ROLES)}"
            )
        out.append(Message(role, content))
    return out


def _check_conversation(msgs: Sequence[Message], where: str) -> None:
    if not any(m.role == "assistant" for m in msgs):
        raise DataError(
            f"{where}: the conversation has no assistant turn, so nothing to learn; "
            'add a {"role": "assistant", ...} message or remove the line'
        )
    for m in msgs:
        if m.role == "assistant" and not m.content.strip():
            raise DataError(
                f"{where}: an assistant turn is empty; write the response or remove the line"
            )


def read_sft_jsonl(
    path: str | os.PathLike[str],
    prompt_field: str = "prompt",
    response_field: str = "response",
    messages_field: str = "messages",
    system_field: str = "system",
) -> list[Conversation]:
    """Read instruction data: one JSON object per line, blank lines skipped.

    A line is either {prompt, response} (plus an optional system) or
    {messages: [{role, content}, ...]} with roles system/user/assistant.
    """
    name = str(path)
    example = f'{{"{prompt_field}": "...", "{response_field}": "..."}}'
    convs: list[Conversation] = []
    for lineno, line in _read_lines(path, "SFT data"):
        where = f"{name} line {lineno}"
        obj = _load_json_object(line, where, example)
        if messages_field in obj:
            msgs = _parse_messages(obj[messages_field], messages_field, where)
        elif prompt_field in obj or response_field in obj:
            missing = response_field if prompt_field in obj else prompt_field
            if missing not in obj:
                raise DataError(
                    f"{where}: no '{missing}' field (the line has keys: {_keys(obj)}); add it "
                    f"or set {'response' if missing == response_field else 'prompt'}_field"
                )
            system = _string(obj, system_field, where) if obj.get(system_field) else None
            msgs = Conversation.from_pair(
                _string(obj, prompt_field, where), _string(obj, response_field, where), system
            ).messages
        else:
            raise DataError(
                f"{where}: no '{messages_field}' and no '{prompt_field}'/'{response_field}' "
                f"fields (the line has keys: {_keys(obj)}); rename them or set "
                "prompt_field/response_field or messages_field"
            )
        _check_conversation(msgs, where)
        convs.append(Conversation(msgs, where))
    if not convs:
        raise DataError(f"{name} has no examples (it is empty); write one JSON object per line")
    return convs


# ---- chat templates (chat_templates.py) ----------------------------------------------------
def get_template(name: str | ChatTemplate, tokenizer: Tokenizer | None = None) -> ChatTemplate:
    """A template by name (auto, plain, chatml, llama3), Jinja file or Jinja string, checked;
    "auto" picks by the tokenizer's special tokens (see pick_template)."""
    return load_template(name, tokenizer)


class Segment(NamedTuple):
    text: str
    trainable: bool  # its tokens are targets (assistant content and its end marker)
    special: bool  # template text (only assistant replies are told apart from it)


def render(
    conversation: Conversation | Sequence[Message],
    template: str | ChatTemplate = "plain",
    eot_token: str | None = "<|endoftext|>",
    add_generation_prompt: bool = False,
    *,
    tokens: Mapping[str, str] | None = None,
) -> list[Segment]:
    """The conversation as the template writes it, cut into trained and untrained segments
    (an assistant reply, its end marker, the text between); empty segments are left out.

    `tokens` are the template's bos/eos/pad/unk strings (`template_tokens(tokenizer)`);
    without them bos and eos are `eot_token`. add_generation_prompt appends the assistant
    header: the prompt for generation. Encoding goes through `encode_chat`, not these pieces:
    a BPE encodes the text whole, as transformers does.
    """
    msgs = conversation.messages if isinstance(conversation, Conversation) else conversation
    for m in msgs:
        if m.role not in ROLES:
            raise DataError(f"unknown role '{m.role}'; valid roles: {', '.join(ROLES)}")
    if tokens is None:
        tokens = {"bos_token": eot_token, "eos_token": eot_token} if eot_token else {}
    tmpl = resolve_template(template)
    assistant_end(tmpl, tokens)  # the checks (an end-of-text token the template needs)
    out = render_chat(tmpl, msgs, tokens, add_generation_prompt)
    replies = iter([m.content for m in msgs if m.role == "assistant"])
    segments: list[Segment] = []
    at = 0
    for a, b in out.spans:
        segments.append(Segment(out.text[at:a], False, True))
        reply, span = next(replies, ""), out.text[a:b]
        if reply and span.startswith(reply):
            segments += [Segment(reply, True, False), Segment(span[len(reply) :], True, True)]
        else:
            segments.append(Segment(span, True, True))
        at = b
    segments.append(Segment(out.text[at:], False, True))
    return [s for s in segments if s.text]


# ---- tokenization --------------------------------------------------------------------------
def _eot_token(tokenizer: Tokenizer) -> str | None:
    i = tokenizer.eot_id
    return None if i is None else tokenizer.id_to_token(i)


def _messages(conversation: Conversation | Sequence[Message]) -> Sequence[Message]:
    return conversation.messages if isinstance(conversation, Conversation) else conversation


def encode_chat(
    conversation: Conversation | Sequence[Message],
    tokenizer: Tokenizer,
    template: str | ChatTemplate = "auto",
    add_generation_prompt: bool = False,
) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation through its template, and which ids are trained.

    The ids are those of transformers' `apply_chat_template(messages, tokenize=True)` on an
    export of this tokenizer and template (with `sanitize_control_tokens=True` when content
    holds special-token strings; those stay text here).
    """
    where = conversation.source if isinstance(conversation, Conversation) else ""
    ids, mask = _encode(
        [(_messages(conversation), where)], tokenizer, template, add_generation_prompt
    )[0]
    return ids.tolist(), mask.tolist()


def _encode(
    conversations: Sequence[tuple[Sequence[Message], str]],
    tokenizer: Tokenizer,
    template: str | ChatTemplate,
    add_generation_prompt: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, trained mask) of each (messages, where) through the template; a BPE encodes
    them all in one call."""
    tmpl = get_template(template, tokenizer)
    tokens = template_tokens(tokenizer)
    codec = chat_codec(tokenizer)
    codec.check_template_chars(tmpl, tokens)  # before any data: the template's own text
    items = []
    for msgs, where in conversations:
        r = render_chat(tmpl, msgs, tokens, add_generation_prompt, where)
        items.append((r, codec.protected(tmpl, msgs, tokens, r, add_generation_prompt)))
    return codec.encode(items, [where for _, where in conversations])


def encode_prompt(
    conversation: Conversation | Sequence[Message],
    tokenizer: Tokenizer,
    template: str | ChatTemplate = "auto",
) -> list[int]:
    """Token ids of the conversation so far plus the assistant header, for generation.

    A final assistant turn is left out, so a held-out training conversation gives the prompt
    its response answers.
    """
    msgs = _messages(conversation)
    if msgs and msgs[-1].role == "assistant":
        msgs = list(msgs[:-1])
    return encode_chat(msgs, tokenizer, template, add_generation_prompt=True)[0]


def stop_ids(tokenizer: Tokenizer, template: str | ChatTemplate = "auto") -> list[int]:
    """Ids of the marker that ends an assistant turn (one id when the tokenizer has it)."""
    tmpl = get_template(template, tokenizer)
    end = assistant_end(tmpl, template_tokens(tokenizer))
    if not end.strip():
        return [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    return chat_codec(tokenizer).encode_text(end)


# ---- tensors -------------------------------------------------------------------------------
@dataclass
class SFTTensors:
    """Rows for next-token training: labels[r, t] is the target after input_ids[r, t].

    Shapes: input_ids (N, T) int64, labels (N, T) int64 with -100 where no loss is taken;
    packed rows also have doc_ids (N, T) int64: which example of its row each position
    belongs to (0, 1, ... along the row; padding gets the next number), which the model
    turns into restarted positions and a block-diagonal causal mask.
    """

    input_ids: Tensor
    labels: Tensor
    n_examples: int  # conversations kept
    truncated: int  # conversations cut to block_size + 1 tokens (kept)
    dropped: int  # conversations whose every response token was cut off
    packed: bool
    n_tokens: int = 0  # real (non-padding) input tokens
    doc_ids: Tensor | None = None  # packed rows only
    longest: int = 0  # tokens of the longest conversation, before truncation

    @property
    def n_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_trainable_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    @property
    def model_inputs(self) -> Tensor:
        """What a batch feeds the model: input_ids (N, T), or for packed rows input ids and
        document ids stacked as (N, 2, T), the packed form GPT.forward reads."""
        if self.doc_ids is None:
            return self.input_ids
        return torch.stack([self.input_ids, self.doc_ids], dim=1)  # (N, 2, T)

    def stats(self) -> dict[str, Any]:
        """Counts for the job log and the run directory."""
        cells = self.input_ids.numel()
        return {
            "n_examples": self.n_examples,
            "n_rows": self.n_rows,
            "seq_len": int(self.input_ids.shape[1]),
            "n_tokens": self.n_tokens,
            "n_trainable_tokens": self.n_trainable_tokens,
            "pad_fraction": 1.0 - self.n_tokens / cells if cells else 0.0,
            "truncated": self.truncated,
            "dropped": self.dropped,
            "packed": self.packed,
            "longest": self.longest,
        }


def truncation_warning(t: SFTTensors, max_len: int, what: str = "SFT data") -> str | None:
    """A warning when cutting costs too much: any example dropped, or more than
    TRUNCATION_WARN_FRACTION of them truncated; it says which length keeps them whole."""
    total = t.n_examples + t.dropped
    if not t.dropped and t.truncated <= TRUNCATION_WARN_FRACTION * total:
        return None
    cut = f"{t.truncated - t.dropped} truncated"
    if t.dropped:
        cut += f", {t.dropped} dropped (every response token cut off)"
    return (
        f"{what}: {t.truncated} of {total} examples ({100 * t.truncated / total:.1f}%) are "
        f"longer than max_len {max_len} tokens: {cut}; data.max_len {t.longest - 1} keeps "
        "every example whole (the model's block_size must be at least that), or shorten them"
    )


def _pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: example indices per row, each row holding <= capacity tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable for ties
    free: list[tuple[int, int]] = []  # sorted (tokens left, row index)
    rows: list[list[int]] = []
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))  # the fullest row that still has room
        if k == len(free):
            rows.append([i])
            left, r = capacity - n, len(rows) - 1
        else:
            space, r = free.pop(k)
            rows[r].append(i)
            left = space - n
        if left > 0:
            bisect.insort(free, (left, r))
    return rows


def _pad_rows(rows: list[np.ndarray], width: int, fill: int | bool) -> np.ndarray:
    """(N, width) array of the rows, right-filled; one boolean scatter, no per-token loop."""
    lengths = np.array([len(r) for r in rows])
    dtype = bool if isinstance(fill, bool) else np.int64
    out = np.full((len(rows), width), fill, dtype=dtype)  # (N, W)
    out[np.arange(width)[None, :] < lengths[:, None]] = np.concatenate(rows)
    return out


def encode_sft(
    conversations: Sequence[Conversation],
    tokenizer: Tokenizer,
    *,
    block_size: int,
    template: str | ChatTemplate = "auto",
    packing: bool = False,
    pad_id: int | None = None,
) -> SFTTensors:
    """Tokenize, mask and batch conversations into (N, T) inputs and -100-masked labels.

    - Each conversation is encoded as `encode_chat` encodes it: the ids transformers gives
      on an export; its assistant replies and their end markers are the targets.
    - Truncation keeps the first block_size + 1 tokens of a conversation (block_size
      positions); a conversation left with no trainable target is dropped and counted.
    - Without packing: one conversation per row, right-padded to the longest row in the
      set (<= block_size), so short data does not pay for a long block_size.
    - With packing: whole conversations are placed into rows of block_size + 1 tokens by
      best-fit decreasing; none is ever split (a response cut from its prompt would teach
      answers without questions), at the price of a little padding at row ends, far less
      than one conversation per row. `doc_ids` mark the examples of each row, so the model
      attends within an example only and restarts its positions: a packed row trains
      exactly as its examples would one by one. No target crosses a boundary either: the
      first token of every conversation is never a target.
    Padding inputs hold pad_id (default: the tokenizer's pad id, else its eot id, else 0).
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size must be a positive integer, got {block_size!r}")
    if not conversations:
        raise DataError("no conversations to encode; check the SFT data file")
    for c in conversations:
        _check_conversation(c.messages, c.source or "a conversation")
    encoded = _encode([(c.messages, c.source) for c in conversations], tokenizer, template)

    cap = block_size + 1
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    truncated = dropped = 0
    for ids, mask in encoded:
        mask = mask.copy()
        mask[0] = False  # no context inside this example: never a target (packing relies on it)
        if len(ids) > cap:
            ids, mask = ids[:cap], mask[:cap]
            truncated += 1
            if not mask.any():
                dropped += 1
                continue
        kept.append((ids, mask))
    if not kept:
        raise DataError(
            f"all {len(encoded)} conversations were dropped: block_size {block_size} cuts off "
            "every response; raise block_size or shorten the prompts"
        )

    groups = _pack([len(i) for i, _ in kept], cap) if packing else [[i] for i in range(len(kept))]
    row_ids = [np.concatenate([kept[i][0] for i in g]) for g in groups]
    row_mask = [np.concatenate([kept[i][1] for i in g]) for g in groups]
    width = max(len(r) for r in row_ids)
    if pad_id is None:
        pad_id = next((i for i in (tokenizer.pad_id, tokenizer.eot_id) if i is not None), 0)
    if not 0 <= int(pad_id) < max(tokenizer.vocab_size, 1):
        raise ConfigError(
            f"pad_id {pad_id} is outside the tokenizer's ids 0..{tokenizer.vocab_size - 1}; "
            "leave it unset to use the tokenizer's pad token"
        )
    ids = _pad_rows(row_ids, width, int(pad_id))  # (N, W)
    mask = _pad_rows(row_mask, width, False)  # (N, W), padding is never a target
    labels = np.where(mask[:, 1:], ids[:, 1:], IGNORE_INDEX)  # (N, W-1): target of position t
    lengths = np.array([len(r) for r in row_ids])
    doc_ids = None
    if packing:
        real = np.arange(width)[None, :] < lengths[:, None]  # (N, W)
        doc = np.repeat(np.array([[len(g)] for g in groups]), width, axis=1)  # padding: its own
        doc[real] = np.concatenate(
            [np.repeat(np.arange(len(g)), [len(kept[i][0]) for i in g]) for g in groups]
        )
        doc_ids = torch.from_numpy(np.ascontiguousarray(doc[:, :-1]))  # (N, W-1)
    # a full row's last token is only a target; a shorter row's last token is an input
    n_tokens = int(np.minimum(lengths, width - 1).sum())
    return SFTTensors(
        input_ids=torch.from_numpy(np.ascontiguousarray(ids[:, :-1])),
        labels=torch.from_numpy(labels),
        n_examples=len(kept),
        truncated=truncated,
        dropped=dropped,
        packed=packing,
        n_tokens=n_tokens,
        doc_ids=doc_ids,
        longest=max(len(i) for i, _ in encoded),
    )
