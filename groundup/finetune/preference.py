"""Preference pairs for DPO, ORPO, SimPO and reward models: read them, check them, encode them.

A pair is one prompt and two replies to it, the chosen (preferred) and the rejected one. A JSONL
line is either `{"prompt": "...", "chosen": "...", "rejected": "..."}` or a chat pair
`{"chosen": [messages...], "rejected": [messages...]}` whose conversations agree up to their
last message, an assistant reply: that shared prefix is the prompt (a `prompt` list of messages
may also be given apart, as TRL writes it).

Encoding goes through the SFT chat template (`encode_sft`), so a pair is read exactly as an
SFT conversation would be, and only the final reply is trained: every target before it
(system, user, earlier assistant turns, template markers) is -100. A pair becomes one
(2, 2, T) block: [chosen, rejected] x [input ids, targets]. Each sequence runs through its last
trained token (the marker that ends the reply); what the template writes after it is dropped.
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from groundup.errors import DataError, MissingFileError
from groundup.finetune.sft import (
    IGNORE_INDEX,
    ROLES,
    ChatTemplate,
    Conversation,
    Message,
    decode_utf8,
    encode_sft,
    get_template,
)
from groundup.registry import did_you_mean, lookup
from groundup.train.batches import TensorBatches

CHUNK = 512  # pairs encoded per encode_sft call: memory grows with the longest of a chunk
PREFERENCE_TASKS = ("dpo", "orpo", "simpo")  # finetune tasks that tune a language model on pairs
PAIR_TASKS = (*PREFERENCE_TASKS, "reward")  # every finetune task trained on preference pairs


@dataclass(frozen=True)
class PreferencePair:
    """One prompt (the conversation before the reply) and its chosen and rejected replies."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str = ""  # "data.jsonl line 3", for errors


# ---- reading -------------------------------------------------------------------------------
def _messages(value: Any, key: str, where: str) -> list[Message]:
    """A string (one message of `role`) or a list of {"role", "content"} objects."""
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: field '{key}' must be a string or a non-empty list of "
            '{"role": ..., "content": ...} objects'
        )
    out = []
    for k, m in enumerate(value, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise DataError(
                f'{where}: {key} message {k} needs "role" and "content" strings; write '
                '{"role": "user", "content": "..."}'
            )
        if m["role"] not in ROLES:
            raise DataError(
                f"{where}: {key} message {k} has unknown role '{m['role']}'"
                f"{did_you_mean(m['role'].lower(), ROLES)}; valid roles: {', '.join(ROLES)}"
            )
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}: {key} message {k} needs a string 'content'")
        out.append(Message(m["role"], m["content"]))
    return out


def _side(obj: dict[str, Any], key: str, where: str) -> list[Message]:
    value = obj[key]
    if isinstance(value, str):
        return [Message("assistant", value)]
    return _messages(value, key, where)


def pair_from_record(
    obj: dict[str, Any],
    where: str,
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
) -> PreferencePair:
    """A checked pair from one JSON object; every fault is a one-line DataError at `where`."""
    keys = ", ".join(map(str, obj)) or "none"
    for key in (chosen_field, rejected_field):
        if key not in obj:
            raise DataError(
                f"{where}: no '{key}' field (the line has: {keys}); a preference pair needs "
                f"'{prompt_field}', '{chosen_field}' and '{rejected_field}' (or chosen and "
                "rejected message lists)"
            )
    prompt: list[Message] = []
    if prompt_field in obj:
        value = obj[prompt_field]
        is_text = isinstance(value, str)
        prompt = [Message("user", value)] if is_text else _messages(value, prompt_field, where)
    chosen, rejected = _side(obj, chosen_field, where), _side(obj, rejected_field, where)
    if not prompt and (len(chosen) == 1 or len(rejected) == 1):
        raise DataError(
            f"{where}: no '{prompt_field}' field (the line has: {keys}); give the prompt, or "
            "chat pairs whose conversations hold the prompt before the reply"
        )
    full_c, full_r = prompt + chosen, prompt + rejected
    if full_c[:-1] != full_r[:-1]:
        k = next(i for i, (a, b) in enumerate(zip(full_c, full_r), 1) if a != b)
        raise DataError(
            f"{where}: the chosen and rejected conversations differ at message {k}, before "
            "their last message; a pair shares its prompt and differs only in the final reply"
        )
    for name, full in ((chosen_field, full_c), (rejected_field, full_r)):
        if full[-1].role != "assistant":
            raise DataError(
                f"{where}: the {name} conversation ends with a {full[-1].role} message; it "
                "must end with the assistant's reply"
            )
        if not full[-1].content.strip():
            raise DataError(f"{where}: the {name} reply is empty; write it or remove the line")
    if not any(m.content.strip() for m in full_c[:-1]):
        raise DataError(f"{where}: the prompt is empty; write it or remove the line")
    if full_c[-2].role == "assistant":
        raise DataError(
            f"{where}: the prompt ends with an assistant message; the reply must follow a user "
            "(or system) message"
        )
    if full_c[-1].content == full_r[-1].content:
        raise DataError(
            f"{where}: chosen and rejected are the same reply; a pair must differ (remove the line)"
        )
    return PreferencePair(tuple(full_c[:-1]), full_c[-1].content, full_r[-1].content, where)


def read_preference_jsonl(
    path: str | os.PathLike[str],
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
) -> list[PreferencePair]:
    """Every pair of a JSONL file (blank lines skipped), each checked (see `pair_from_record`)."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"preference data file {p} not found; check the path")
    text = decode_utf8(p.read_bytes(), str(p))
    pairs = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON may hold U+2028
        if not line.strip():
            continue
        where = f"{p} line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: invalid JSON ({e.msg} at column {e.colno}); write one object per line"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f'{where}: expected a JSON object such as {{"{prompt_field}": "...", '
                f'"{chosen_field}": "...", "{rejected_field}": "..."}}, got {type(obj).__name__}'
            )
        pairs.append(pair_from_record(obj, where, prompt_field, chosen_field, rejected_field))
    if not pairs:
        raise DataError(f"{p} has no preference pairs (it is empty); write one JSON object a line")
    return pairs


# ---- the built-in set ----------------------------------------------------------------------
def cut_short(answer: str, key: str) -> str | None:
    """The answer stopped after its first 2 to 5 words (by a hash of `key`, at least one word
    short): an unfinished sentence. None when the answer has a single word."""
    words = answer.split()
    if len(words) < 2:
        return None
    keep = min(len(words) - 1, 2 + zlib.crc32(key.encode()) % 4)
    return " ".join(words[:keep])


@functools.lru_cache(maxsize=1)
def _stdlib_pref() -> dict[str, tuple[PreferencePair, ...]]:
    """stdlib-qa's pairs ("What does json.dumps do?" -> its docstring) as preferences: the whole
    answer is chosen, the same answer cut short mid-sentence is rejected. The held-out objects
    are left out, as stdlib-qa leaves them out; its train/val split is kept."""
    from groundup.data.text_builtin import load_sft_dataset

    out: dict[str, tuple[PreferencePair, ...]] = {}
    for split, rows in load_sft_dataset("stdlib-qa").items():
        pairs = []
        for r in rows:
            rejected = cut_short(r["response"], r["prompt"])
            if rejected is not None:
                prompt = (Message("user", r["prompt"]),)
                pairs.append(
                    PreferencePair(prompt, r["response"], rejected, f"stdlib-pref {split}")
                )
        out[split] = tuple(pairs)
    return out


BUILTIN_PAIRS = {"stdlib-pref": _stdlib_pref}


def load_preference_dataset(name: str) -> dict[str, list[PreferencePair]]:
    """{"train", "val"} -> the pairs of a built-in preference set (`stdlib-pref`)."""
    sets = lookup(BUILTIN_PAIRS, name, "preference dataset")()
    return {split: list(pairs) for split, pairs in sets.items()}


# ---- encoding ------------------------------------------------------------------------------
@dataclass
class PairTensors:
    """Encoded pairs. `pairs` (N, 2, 2, T) int64: [pair, chosen/rejected, ids/targets, position];
    targets[t] is the token after ids[t], -100 where nothing is trained; ids past a sequence's
    end hold pad_id."""

    pairs: Tensor
    truncated: int  # pairs with a sequence cut to max_len positions (kept)
    dropped: int  # pairs whose replies are cut off entirely, or identical within max_len

    @property
    def n_pairs(self) -> int:
        return int(self.pairs.shape[0])

    @property
    def n_trainable_tokens(self) -> int:
        return int((self.pairs[:, :, 1] != IGNORE_INDEX).sum())


def last_target(labels: Tensor) -> Tensor:
    """(N,) index of each row's last trained target; -1 for a row with none."""
    positions = torch.arange(labels.shape[1], device=labels.device)  # (T,)
    trained = labels != IGNORE_INDEX  # (N, T)
    return torch.where(trained, positions, -1).max(dim=1).values


def _final_reply(labels: Tensor) -> Tensor:
    """`labels` (N, T) with only each row's last run of trained targets kept: the final reply
    (its content and end marker), not the assistant turns before it, which are prompt."""
    positions = torch.arange(labels.shape[1])  # (T,)
    trained = labels != IGNORE_INDEX  # (N, T)
    last = last_target(labels)[:, None]  # (N, 1)
    gap = torch.where(~trained & (positions <= last), positions, -1).max(dim=1).values  # (N,)
    return torch.where(trained & (positions > gap[:, None]), labels, IGNORE_INDEX)


def encode_replies(
    items: Sequence[tuple[Sequence[Message], str, str]],
    tokenizer: Any,
    template: ChatTemplate,
    max_len: int,
    pad_id: int,
) -> list[tuple[Tensor, Tensor, bool]]:
    """(ids (L,), targets (L,), cut) of each (prompt, reply, source): the conversation as
    `encode_sft` encodes it, through its last trained token, with only the reply's targets
    kept; L <= max_len positions (cut: the sequence was longer)."""
    convs = [Conversation([*p, Message("assistant", reply)], src) for p, reply, src in items]
    # no truncation here (block_size past any length): every row stays, in order
    t = encode_sft(convs, tokenizer, block_size=2**31, template=template, pad_id=pad_id)
    labels = _final_reply(t.labels)  # (n, W)
    last = last_target(labels)  # (n,)
    rows = []
    for r in range(len(items)):
        width = min(int(last[r]) + 1, max_len)
        # past the last trained token: nothing (the template's tail after the reply goes)
        rows.append((t.input_ids[r, :width], labels[r, :width], int(last[r]) + 1 > max_len))
    return rows


def _pad(rows: Sequence[Tensor], width: int, fill: int) -> Tensor:
    out = torch.full((len(rows), width), fill, dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def encode_pairs(
    pairs: Sequence[PreferencePair],
    tokenizer: Any,
    *,
    max_len: int,
    template: str | ChatTemplate = "auto",
    pad_id: int | None = None,
) -> PairTensors:
    """Pairs as one (N, 2, 2, T) tensor of ids and reply-only targets (see `PairTensors`),
    T <= max_len positions. A pair whose reply the cut removes, or whose replies become the
    same within max_len, is dropped and counted; none left is a DataError."""
    if not pairs:
        raise DataError("no preference pairs to encode; check the data file")
    tmpl = get_template(template, tokenizer)
    if pad_id is None:
        pad_id = next((i for i in (tokenizer.pad_id, tokenizer.eot_id) if i is not None), 0)
    blocks: list[tuple[Tensor, Tensor]] = []
    truncated = dropped = 0
    for start in range(0, len(pairs), CHUNK):
        chunk = pairs[start : start + CHUNK]
        items = [(p.prompt, reply, p.source) for p in chunk for reply in (p.chosen, p.rejected)]
        rows = encode_replies(items, tokenizer, tmpl, max_len, pad_id)
        for (ids_c, tg_c, cut_c), (ids_r, tg_r, cut_r) in zip(rows[::2], rows[1::2]):
            truncated += cut_c or cut_r
            same = torch.equal(ids_c, ids_r) and torch.equal(tg_c, tg_r)
            if same or not ((tg_c != IGNORE_INDEX).any() and (tg_r != IGNORE_INDEX).any()):
                dropped += 1
                continue
            width = max(len(ids_c), len(ids_r))
            ids = _pad([ids_c, ids_r], width, pad_id)  # (2, L)
            blocks.append((ids, _pad([tg_c, tg_r], width, IGNORE_INDEX)))
    if not blocks:
        raise DataError(
            f"all {len(pairs)} preference pairs were dropped: within data.max_len {max_len} "
            "tokens their replies are cut off or identical; raise data.max_len"
        )
    width = max(ids.shape[-1] for ids, _ in blocks)
    out = torch.full((len(blocks), 2, 2, width), IGNORE_INDEX, dtype=torch.int64)
    out[:, :, 0] = pad_id
    for k, (ids, targets) in enumerate(blocks):
        out[k, :, 0, : ids.shape[-1]] = ids
        out[k, :, 1, : ids.shape[-1]] = targets
    return PairTensors(out, truncated, dropped)


class PairBatches(TensorBatches):
    """`TensorBatches` of (pairs, preferred) whose pairs are cut to the batch's longest
    sequence, on the CPU before they move to the device: the padding of the longest pair of
    the whole set is not computed on every step. `preferred` (N,) is 0: the chosen reply."""

    def __init__(self, pairs: Tensor, **options: Any) -> None:
        super().__init__(pairs, torch.zeros(pairs.shape[0], dtype=torch.int64), **options)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        for x, y in super().__iter__():
            labels = x[:, :, 1].reshape(-1, x.shape[-1])  # (2B, T)
            width = int(last_target(labels).max()) + 1
            yield x[..., :width], y
