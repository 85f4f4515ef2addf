"""Instruction SFT data: read JSONL conversations, render a chat template, mask the prompt.

The model learns only what the assistant says. Every target that is a system, user or
template token, or padding, is -100 (skipped by SparseCategoricalCrossentropy); the marker
that ends an assistant turn is trained, so the model learns to stop.

Special markers: template text ("<|im_start|>user\\n") is encoded with allow_special=True, so
a marker that the tokenizer holds as a special token becomes its one id, and a marker it lacks
is ordinary text (several tokens: still correct, only longer; generation then needs a stop
string). Message content is always encoded with allow_special=False: a user who types
"<|im_end|>" cannot forge the end of a turn.

Segments are encoded one by one (torchtune does the same per message), so a prompt must be
encoded for generation with `encode_prompt`, not by rendering one string and encoding it.
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
from groundup.errors import ConfigError, DataError, MissingFileError, TokenizerError
from groundup.registry import did_you_mean, lookup

IGNORE_INDEX = -100  # what SparseCategoricalCrossentropy skips
ROLES: tuple[str, ...] = ("system", "user", "assistant")
EOT = "{eot}"  # placeholder in a template: the tokenizer's end-of-text token


# ---- conversations -------------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


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


# ---- chat templates ------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatTemplate:
    """How turns become text: begin + per turn (header, content, end, separator).

    Only assistant content and the assistant's `end` are trainable. `EOT` in an end stands
    for the tokenizer's end-of-text token (the stop token groundup's generate knows).
    """

    name: str
    headers: Mapping[str, str]  # role -> text before the content
    ends: Mapping[str, str]  # role -> text after the content (the assistant's is trained)
    separator: str = ""  # after every turn's end; never trained
    begin: str = ""  # once, before the first turn


CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    # Alpaca-like; the stop marker is the tokenizer's own end-of-text (groundup's tokenizers
    # hold "<|endoftext|>" as one special id), so it suits a model pretrained with groundup.
    "plain": ChatTemplate(
        "plain",
        headers={"system": "", "user": "### Instruction:\n", "assistant": "### Response:\n"},
        ends={"system": "\n\n", "user": "\n\n", "assistant": EOT},
    ),
    # Qwen / OpenAI ChatML.
    "chatml": ChatTemplate(
        "chatml",
        headers={r: f"<|im_start|>{r}\n" for r in ROLES},
        ends=dict.fromkeys(ROLES, "<|im_end|>"),
        separator="\n",
    ),
    # Llama 3 instruct.
    "llama3": ChatTemplate(
        "llama3",
        headers={r: f"<|start_header_id|>{r}<|end_header_id|>\n\n" for r in ROLES},
        ends=dict.fromkeys(ROLES, "<|eot_id|>"),
        begin="<|begin_of_text|>",
    ),
}


def pick_template(tokenizer: Tokenizer) -> str:
    """The template whose markers this tokenizer holds as special tokens, else "plain"."""
    special = set(tokenizer.special_tokens)
    if {"<|im_start|>", "<|im_end|>"} <= special:
        return "chatml"
    if {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"} <= special:
        return "llama3"
    return "plain"


def get_template(name: str | ChatTemplate, tokenizer: Tokenizer | None = None) -> ChatTemplate:
    """A template by name; "auto" picks by the tokenizer's special tokens (see pick_template)."""
    if isinstance(name, ChatTemplate):
        return name
    if isinstance(name, str) and name.lower() == "auto":
        return CHAT_TEMPLATES[pick_template(tokenizer) if tokenizer is not None else "plain"]
    return lookup({**CHAT_TEMPLATES, "auto": None}, name, "chat template")  # type: ignore[return-value]


class Segment(NamedTuple):
    text: str
    trainable: bool  # its tokens are targets (assistant content and its end marker)
    special: bool  # template text: special-token strings in it map to their ids


def render(
    conversation: Conversation | Sequence[Message],
    template: str | ChatTemplate = "plain",
    eot_token: str | None = "<|endoftext|>",
    add_generation_prompt: bool = False,
) -> list[Segment]:
    """The conversation as template segments; empty segments are left out.

    add_generation_prompt appends the assistant header: the prompt for generation.
    """
    tmpl = get_template(template)
    msgs = conversation.messages if isinstance(conversation, Conversation) else conversation
    out: list[Segment] = []

    def add(text: str, trainable: bool, special: bool) -> None:
        if text:
            out.append(Segment(text, trainable, special))

    def marker(text: str) -> str:
        if EOT in text:
            if eot_token is None:
                raise TokenizerError(
                    f"chat template '{tmpl.name}' ends each response with the end-of-text "
                    "token, but this tokenizer has none; use a tokenizer with '<|endoftext|>' "
                    "(groundup's default) or another template (chatml, llama3)"
                )
            text = text.replace(EOT, eot_token)
        return text

    add(tmpl.begin, False, True)
    for m in msgs:
        if m.role not in ROLES:
            raise DataError(f"unknown role '{m.role}'; valid roles: {', '.join(ROLES)}")
        bot = m.role == "assistant"
        add(tmpl.headers[m.role], False, True)
        add(m.content, bot, False)
        add(marker(tmpl.ends[m.role]), bot, True)
        add(tmpl.separator, False, True)
    if add_generation_prompt:
        add(tmpl.headers["assistant"], False, True)
    return out


# ---- tokenization --------------------------------------------------------------------------
def _eot_token(tokenizer: Tokenizer) -> str | None:
    i = tokenizer.eot_id
    return None if i is None else tokenizer.id_to_token(i)


def _encode_segments(
    segments: list[list[Segment]], tokenizer: Tokenizer
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, trainable mask) per conversation; content is encoded in one batch call."""
    contents = [s.text for segs in segments for s in segs if not s.special]
    content_ids = iter(tokenizer.encode_batch_arrays(contents))  # parallel in Rust for BPE
    eot, eot_id = _eot_token(tokenizer), tokenizer.eot_id
    cache: dict[str, np.ndarray] = {}  # a template has a handful of distinct marker strings
    out = []
    for segs in segments:
        pieces: list[np.ndarray] = []
        for s in segs:
            if not s.special:
                pieces.append(next(content_ids))
                continue
            ids = cache.get(s.text)
            if ids is None:
                # the eot id directly, even if a foreign tokenizer forgot to flag it special
                ids = (
                    np.array([eot_id], dtype=np.int64)
                    if s.text == eot
                    else tokenizer.encode_array(s.text, allow_special=True)
                )
                cache[s.text] = ids
            pieces.append(ids)
        lengths = [len(p) for p in pieces]
        ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        mask = np.repeat(np.array([s.trainable for s in segs], dtype=bool), lengths)
        out.append((ids, mask))
    return out


def encode_prompt(
    conversation: Conversation | Sequence[Message],
    tokenizer: Tokenizer,
    template: str | ChatTemplate = "auto",
) -> list[int]:
    """Token ids of the conversation so far plus the assistant header, for generation.

    A final assistant turn is left out, so a held-out training conversation gives the prompt
    its response answers.
    """
    tmpl = get_template(template, tokenizer)
    msgs = conversation.messages if isinstance(conversation, Conversation) else conversation
    if msgs and msgs[-1].role == "assistant":
        conversation = list(msgs[:-1])
    segs = render(conversation, tmpl, _eot_token(tokenizer), add_generation_prompt=True)
    ids, _ = _encode_segments([segs], tokenizer)[0]
    return ids.tolist()


def stop_ids(tokenizer: Tokenizer, template: str | ChatTemplate = "auto") -> list[int]:
    """Ids of the marker that ends an assistant turn (one id when the tokenizer has it)."""
    tmpl = get_template(template, tokenizer)
    end = tmpl.ends["assistant"]
    if end == EOT:
        return [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    return tokenizer.encode(end, allow_special=True)


# ---- tensors -------------------------------------------------------------------------------
@dataclass
class SFTTensors:
    """Rows for next-token training: labels[r, t] is the target after input_ids[r, t].

    Shapes: input_ids (N, T) int64, labels (N, T) int64 with -100 where no loss is taken.
    """

    input_ids: Tensor
    labels: Tensor
    n_examples: int  # conversations kept
    truncated: int  # conversations cut to block_size + 1 tokens (kept)
    dropped: int  # conversations whose every response token was cut off
    packed: bool
    n_tokens: int = 0  # real (non-padding) input tokens

    @property
    def n_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_trainable_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

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
        }


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

    - Truncation keeps the first block_size + 1 tokens of a conversation (block_size
      positions); a conversation left with no trainable target is dropped and counted.
    - Without packing: one conversation per row, right-padded to the longest row in the
      set (<= block_size), so short data does not pay for a long block_size.
    - With packing: whole conversations are placed into rows of block_size + 1 tokens by
      best-fit decreasing; none is ever split (a response cut from its prompt would teach
      answers without questions), at the price of a little padding at row ends, far less
      than one conversation per row. Packed conversations see each other through causal
      attention (as in pretraining); no target crosses a boundary, because the first token
      of every conversation is never a target.
    Padding inputs hold pad_id (default: the tokenizer's pad id, else its eot id, else 0).
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size must be a positive integer, got {block_size!r}")
    if not conversations:
        raise DataError("no conversations to encode; check the SFT data file")
    tmpl = get_template(template, tokenizer)
    eot = _eot_token(tokenizer)
    segments = []
    for c in conversations:
        _check_conversation(c.messages, c.source or "a conversation")
        segments.append(render(c, tmpl, eot))
    encoded = _encode_segments(segments, tokenizer)

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
    # a full row's last token is only a target; a shorter row's last token is an input
    n_tokens = int(np.minimum([len(r) for r in row_ids], width - 1).sum())
    return SFTTensors(
        input_ids=torch.from_numpy(np.ascontiguousarray(ids[:, :-1])),
        labels=torch.from_numpy(labels),
        n_examples=len(kept),
        truncated=truncated,
        dropped=dropped,
        packed=packing,
        n_tokens=n_tokens,
    )
