"""Rendered chat text to token ids, as transformers' `apply_chat_template` encodes it.

Every added-token string the template wrote becomes its id and the text between is encoded
as usual: a BPE in one call, with character offsets, so the trained mask follows the
template's spans exactly (a token that straddles a span edge is trained); char and bytes
tokenizers piece by piece (their encoding of a text is the concatenation of its pieces').
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from groundup.data.tokenizers import Tokenizer
from groundup.errors import ConfigError, DataError, TokenizerError
from groundup.finetune.chat_templates import NEUTRAL, ChatTemplate, Message, Rendered, render_chat


class ChatCodec:
    """One tokenizer's encoder of rendered chats (module doc). Content is what a user typed:
    special-token strings in it stay text (as transformers does with
    sanitize_control_tokens=True), so data cannot forge a turn end."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        decoder = tokenizer.hf.get_added_tokens_decoder()
        self.added = {t.content: i for i, t in decoder.items()}
        names = sorted(self.added, key=len, reverse=True)  # "<|end|>" never shadows a longer one
        self.pattern = re.compile("|".join(map(re.escape, names))) if names else None
        # char and bytes tokenizers encode a text as the concatenation of its pieces
        self.piecewise = tokenizer.kind in ("char", "bytes")
        self.hf = None
        if not self.piecewise:
            self.hf = HFTokenizer.from_str(tokenizer.to_json())
            self.hf.no_truncation()
            self.hf.no_padding()
            self.hf.encode_special_tokens = False  # added-token strings -> their ids

    # -- which special-token strings came from content -------------------------------------
    def protected(
        self,
        tmpl: ChatTemplate,
        messages: Sequence[Message],
        tokens: Mapping[str, str],
        rendered: Rendered,
        add_generation_prompt: bool = False,
    ) -> list[tuple[int, int]]:
        """Character ranges of `rendered.text` that are special-token strings typed in the
        content: the conversation is rendered again with each such string replaced by
        noncharacters of the same length, and the ranges that changed are the content's.
        A template whose output length depends on the content gets no protection."""
        pat = self.pattern
        if pat is None or not any(pat.search(m.content) for m in messages):
            return []
        neutral = [
            Message(m.role, pat.sub(lambda x: NEUTRAL * len(x.group()), m.content))
            for m in messages
        ]
        other = render_chat(tmpl, neutral, tokens, add_generation_prompt).text
        if len(other) != len(rendered.text):
            return []
        a = np.frombuffer(rendered.text.encode("utf-32-le"), dtype="<u4")
        b = np.frombuffer(other.encode("utf-32-le"), dtype="<u4")
        edges = np.flatnonzero(np.diff(np.concatenate([[0], (a != b).astype(np.int8), [0]])))
        return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))

    # -- encoding ----------------------------------------------------------------------------
    def _chunks(self, text: str, protected: list[tuple[int, int]]) -> list[tuple[int, int, bool]]:
        """(start, end, specials allowed) pieces: protected content ranges have none."""
        out, at = [], 0
        for a, b in protected:
            out += [(at, a, True), (a, b, False)]
            at = b
        out.append((at, len(text), True))
        return [c for c in out if c[1] > c[0]]

    def encode(
        self, items: Sequence[tuple[Rendered, list[tuple[int, int]]]], where: Sequence[str]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, trained mask) of each rendered text; `where` names each in errors."""
        if self.piecewise:
            return [self._encode_pieces(r, p, w) for (r, p), w in zip(items, where)]
        jobs = [[(r.text[a:b], a, ok) for a, b, ok in self._chunks(r.text, p)] for r, p in items]
        with_specials = [t for chunks in jobs for t, _, ok in chunks if ok]
        as_text = [t for chunks in jobs for t, _, ok in chunks if not ok]
        try:
            done = iter(self.hf.encode_batch(with_specials, add_special_tokens=False))
            plain = iter(self.tok.hf.encode_batch(as_text, add_special_tokens=False))
        except Exception as e:  # e.g. lone surrogates
            raise TokenizerError(f"cannot encode this text ({e}); pass valid Unicode") from None
        out = []
        for (r, _), chunks in zip(items, jobs):
            empty = np.zeros(0, dtype=np.int64)  # an empty text has no chunk
            ids, starts, ends = [empty], [empty], [empty]
            for _, at, ok in chunks:
                enc = next(done) if ok else next(plain)
                offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2) + at
                ids.append(np.asarray(enc.ids, dtype=np.int64))
                starts.append(offsets[:, 0])
                ends.append(offsets[:, 1])
            starts_, ends_ = np.concatenate(starts), np.concatenate(ends)
            out.append((np.concatenate(ids), _span_mask(starts_, ends_, r.spans)))
        return out

    def _encode_pieces(
        self, r: Rendered, protected: list[tuple[int, int]], where: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Char/bytes tokenizers: pieces cut at added tokens and span edges, one by one."""
        text = r.text
        cuts = {0, len(text)} | {x for span in r.spans for x in span}
        specials: dict[int, tuple[int, int]] = {}  # start -> (end, id)
        if self.pattern is not None:
            for m in self.pattern.finditer(text):
                a, b = m.span()
                if not any(a < pb and b > pa for pa, pb in protected):
                    specials[a] = (b, self.added[m.group()])
                    cuts |= {a, b}
        edges = sorted(c for c in cuts if 0 <= c <= len(text))
        ids, mask = [], []
        for a, b in zip(edges, edges[1:]):
            if a in specials and specials[a][0] == b:
                piece = np.array([specials[a][1]], dtype=np.int64)
            else:
                piece = self._encode_text(text[a:b], where)
            ids.append(piece)
            mask.append(np.full(len(piece), any(a < sb and b > sa for sa, sb in r.spans)))
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        return np.concatenate(ids), np.concatenate(mask)

    def _encode_text(self, text: str, where: str) -> np.ndarray:
        try:
            return self.tok.encode_array(text)
        except TokenizerError as e:
            raise TokenizerError(f"{where}: {e}" if where else str(e)) from None

    def encode_text(self, text: str) -> list[int]:
        """Ids of template text (a stop marker): added-token strings become their ids."""
        return self.encode([(Rendered(text, ()), [])], [""])[0][0].tolist()

    def check_template_chars(self, tmpl: ChatTemplate, tokens: Mapping[str, str]) -> None:
        """Char tokenizers: every character the template itself writes must be in the
        vocabulary (checked on a probe conversation, before any training)."""
        if self.tok.kind != "char":
            return
        probe = [Message("system", ""), Message("user", ""), Message("assistant", "")]
        try:
            text = render_chat(tmpl, probe, tokens, add_generation_prompt=True).text
        except (DataError, ConfigError):
            return  # a template that refuses this shape; the data's own encoding still checks
        if self.pattern is not None:
            text = self.pattern.sub("", text)
        for c in sorted(set(text)):
            try:
                self.tok.encode_array(c)
            except TokenizerError:
                raise TokenizerError(
                    f"character {c!r} (U+{ord(c):04X}) comes from the chat template "
                    f"'{tmpl.name}' and is not in this char tokenizer's vocabulary; retrain "
                    "the tokenizer with tokenizer.byte_fallback: true, or use a template "
                    "without it (data.template: path/to/template.jinja)"
                ) from None


def _span_mask(
    starts: np.ndarray, ends: np.ndarray, spans: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Tokens overlapping a trained span (a token that straddles its edge is trained too)."""
    mask = np.zeros(len(starts), dtype=bool)
    ends = np.maximum(ends, starts + 1)  # a zero-width token counts at its position
    for a, b in spans:
        mask |= (starts < b) & (ends > a)
    return mask


_CODECS: weakref.WeakKeyDictionary[Tokenizer, ChatCodec] = weakref.WeakKeyDictionary()


def chat_codec(tokenizer: Tokenizer) -> ChatCodec:
    codec = _CODECS.get(tokenizer)
    if codec is None:
        codec = _CODECS[tokenizer] = ChatCodec(tokenizer)
    return codec
