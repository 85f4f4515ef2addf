"""Tokenizers: byte-level BPE, characters, raw bytes; one class, one file format.

All three kinds are stored as a real Hugging Face `tokenizer.json`, so
`transformers.PreTrainedTokenizerFast(tokenizer_file=...)` loads any of them and gives the
same ids. A char or bytes tokenizer is a BPE model with no merges; on load we recognise that
shape and encode with a numpy lookup instead of the Rust BPE (about 50x faster on 1 MB).
Training each kind lives in tokenizer_training.py (`Tokenizer.train` calls it).

Two choices that differ from the Hugging Face defaults, both for pretraining streams:
- special-token strings inside a document ("<|endoftext|>" in a page about GPT) are encoded
  as ordinary text, never as the special id (like tiktoken's `encode_ordinary`); otherwise
  a document could forge a document boundary;
- encode never adds template tokens (BOS/CLS) and never truncates, even when a foreign
  tokenizer.json asks for it: prepare_shards places the end-of-text separators itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer

from groundup.errors import DataError, MissingFileError, TokenizerError

DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|pad|>")
# Names other tokenizer families use for the same roles, so a foreign tokenizer.json
# (GPT-2, Llama, Mistral, BERT) still has an end-of-text and a padding id.
EOT_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "[SEP]")
PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]", "<|padding|>")
TOKENIZER_FILE = "tokenizer.json"

# Long documents are cut into pieces of about this many characters before a byte-level BPE
# encodes them, so the Rust encoder can spread one big file over all cores (and it is
# faster per character on 64 K pieces than on one 1 MB string).
_CHUNK_CHARS = 1 << 16
# "\n" between two non-space characters is a pre-token of its own under the GPT-2 split
# regex, whatever follows; cutting right after it changes no token (Python's \S is a
# subset of the Rust regex \S, so the cut is safe on every Unicode input).
_SAFE_CUT = re.compile(r"\S\n(?=\S)")


def bytes_to_unicode() -> dict[int, str]:
    """The byte-level alphabet: each byte gets a printable character (GPT-2's convention).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space,
    soft hyphen, ...) are moved to code points 256 and up, in byte order.
    """
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


class Tokenizer:
    """A trained tokenizer: encode text to ids and back, save and load as tokenizer.json.

    Build one with `Tokenizer.train(texts, kind=...)` or `Tokenizer.load(path)`; wrapping a
    `tokenizers.Tokenizer` object directly also works.
    """

    def __init__(self, hf: HFTokenizer) -> None:
        self.hf = hf
        # Pretraining streams: no truncation, no padding, special strings are plain text.
        hf.no_truncation()
        hf.no_padding()
        if hasattr(hf, "encode_special_tokens"):  # tokenizers >= 0.19
            hf.encode_special_tokens = True
        spec = json.loads(hf.to_str())
        vocab = hf.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0
        self.special_tokens: list[str] = [
            t["content"] for t in spec.get("added_tokens", []) if t.get("special")
        ]
        self.kind = _detect_kind(spec)
        self._chunkable = _is_gpt2_split(spec)
        self._codec: _CharCodec | None = None
        self._token_bytes: np.ndarray | None = None
        if self.kind in ("char", "bytes"):
            self._codec = _CharCodec.from_spec(spec, self.kind)

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Iterable[str] | None,
        kind: str = "bpe",
        vocab_size: int | None = None,
        min_frequency: int = 2,
        special_tokens: Sequence[str] | None = None,
        byte_fallback: bool = False,
    ) -> Tokenizer:
        """Train a tokenizer of `kind` ("bpe", "char" or "bytes") on `texts`.

        vocab_size and min_frequency only apply to "bpe" (default 4096). byte_fallback only
        applies to "char": with it, characters never seen in training encode as their UTF-8
        bytes through 256 extra tokens; without it (the default, keeping the vocabulary as
        small as nanoGPT's 65 symbols on tinyshakespeare) they raise TokenizerError.
        "bytes" needs no training text.
        """
        from groundup.data.tokenizer_training import train_tokenizer  # it imports this module

        return train_tokenizer(
            texts,
            kind=kind,
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            byte_fallback=byte_fallback,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a tokenizer.json (ours or any Hugging Face one); `path` is the file or its folder."""
        file = resolve_tokenizer_file(path)
        try:
            text = file.read_text(encoding="utf-8")
            json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(
                f"{file} is not valid JSON ({e}); delete it and retrain the tokenizer "
                "(groundup tokenizer CONFIG) or point to a real tokenizer.json"
            ) from None
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # the Rust parser raises a plain Exception
            raise TokenizerError(
                f"{file} is JSON but not a tokenizer the `tokenizers` library can read ({e}); "
                "retrain it (groundup tokenizer CONFIG) or upgrade `tokenizers`"
            ) from None
        return cls(hf)

    # ---- encode / decode ---------------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text` (no BOS/EOS added).

        allow_special=True maps special-token strings in the text ("<|endoftext|>") to their
        ids, for prompts and chat templates; by default they are ordinary text.
        """
        return self.encode_array(text, allow_special).tolist()

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> list[list[int]]:
        """Token ids of several texts; BPE encodes them in parallel in Rust."""
        return [a.tolist() for a in self.encode_batch_arrays(texts, allow_special)]

    def encode_array(self, text: str, allow_special: bool = False) -> np.ndarray:
        """Token ids of `text` as an int64 numpy array (no Python list in between)."""
        return self.encode_batch_arrays([text], allow_special)[0]

    def encode_batch_arrays(
        self, texts: Sequence[str], allow_special: bool = False
    ) -> list[np.ndarray]:
        """Token ids of several texts as int64 numpy arrays: what prepare_shards uses."""
        for t in texts:
            if not isinstance(t, str):
                raise DataError(f"can only encode text (str), got {type(t).__name__}")
        if allow_special and self.special_tokens:
            return [self._encode_with_specials(t) for t in texts]
        if self._codec is not None:
            return [self._codec.encode(t) for t in texts]
        return self._hf_encode_batch(texts)

    def _encode_with_specials(self, text: str) -> np.ndarray:
        # longest names first, so "<|end|>" never shadows "<|endoftext|>"
        names = sorted(self.special_tokens, key=len, reverse=True)
        parts = re.split(f"({'|'.join(map(re.escape, names))})", text)  # text, special, ...
        plain = self.encode_batch_arrays(parts[0::2])
        pieces = [plain[0]]
        for special, after in zip(parts[1::2], plain[1:], strict=True):
            pieces += [np.array([self.hf.token_to_id(special)], dtype=np.int64), after]
        return np.concatenate(pieces)

    def _hf_encode_batch(self, texts: Sequence[str], chunk_chars: int = _CHUNK_CHARS) -> list:
        pieces: list[str] = []
        owner: list[int] = []  # index of the text each piece belongs to
        for i, t in enumerate(texts):
            parts = _cut(t, chunk_chars) if self._chunkable else [t]
            pieces.extend(parts)
            owner.extend([i] * len(parts))
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # no offsets
        try:
            encs = encode(pieces, add_special_tokens=False)
        except Exception as e:  # e.g. lone surrogates
            raise TokenizerError(f"cannot encode this text ({e}); pass valid Unicode") from None
        out: list[list[np.ndarray]] = [[] for _ in texts]
        for i, enc in zip(owner, encs, strict=True):
            out[i].append(np.asarray(enc.ids, dtype=np.int64))
        return [a[0] if len(a) == 1 else np.concatenate(a) for a in out]

    def decode(self, ids: Iterable[int] | np.ndarray | Any) -> str:
        """Text of `ids` (a list, numpy array or 1-D tensor); special tokens are kept."""
        arr = np.asarray(ids.tolist() if hasattr(ids, "tolist") else list(ids), dtype=np.int64)
        if arr.ndim != 1:
            raise TokenizerError(f"decode takes one sequence of ids, got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = int(arr[(arr < 0) | (arr >= self.vocab_size)][0])
            raise TokenizerError(
                f"token id {bad} is outside this tokenizer's vocabulary (0..{self.vocab_size - 1}); "
                "the ids come from a model with a larger vocab_size or another tokenizer"
            )
        if self._codec is not None:
            return self._codec.decode(arr)
        return self.hf.decode(arr.tolist(), skip_special_tokens=False)

    # ---- vocabulary --------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids (largest id + 1): the least vocab_size a model needs."""
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    def token_to_id(self, token: str) -> int | None:
        """The id of `token` (a vocabulary entry or special token), None when absent."""
        return self.hf.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.hf.id_to_token(int(token_id))

    def _first_of(self, names: Sequence[str]) -> int | None:
        for name in names:
            i = self.hf.token_to_id(name)
            if i is not None:
                return i
        return None

    @property
    def eot_id(self) -> int | None:
        """Id of the end-of-text token ("<|endoftext|>", or "</s>" etc. in foreign tokenizers)."""
        return self._first_of(EOT_NAMES)

    @property
    def pad_id(self) -> int | None:
        """Id of the padding token ("<|pad|>", "<pad>", "[PAD]"), None when there is none."""
        return self._first_of(PAD_NAMES)

    def check_fits(self, model_vocab_size: int) -> None:
        """Raise TokenizerError unless a model with `model_vocab_size` rows can embed every id.

        A model may have more rows than the tokenizer has ids (padding to a multiple of 64
        is common and faster), never fewer.
        """
        if model_vocab_size < self.vocab_size:
            raise TokenizerError(
                f"tokenizer has {self.vocab_size} tokens but the model's vocab_size is "
                f"{model_vocab_size}; set model.vocab_size >= {self.vocab_size} "
                "or retrain the tokenizer"
            )

    def token_bytes(self) -> np.ndarray:
        """(vocab_size,) int64: how many UTF-8 bytes of text each id stands for, 0 for special
        tokens. The denominator of bits per byte, which, unlike perplexity, compares models
        whose tokenizers differ."""
        if self._token_bytes is None:
            self._token_bytes = _token_byte_lengths(self)
        return self._token_bytes

    # ---- files -------------------------------------------------------------------------
    def to_json(self) -> str:
        """The Hugging Face tokenizer.json text."""
        return self.hf.to_str()

    def fingerprint(self) -> str:
        """sha256 of the tokenizer.json text: token shards record it to catch a swapped tokenizer."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write tokenizer.json to `path` (a .json file, or a folder that is created); return it."""
        p = Path(path)
        file = p if p.suffix == ".json" else p / TOKENIZER_FILE
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, file)  # atomic: a crash never leaves half a tokenizer.json
        return file

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """Byte length of each id's text: exact for char, bytes and byte-level BPE tokenizers;
    SentencePiece-style pieces ("\u2581" for a space, "<0x0A>" byte pieces) and WordPiece
    continuations ("##") are read by their conventions."""
    sizes = np.zeros(tok.vocab_size, dtype=np.int64)
    special = {tok.token_to_id(t) for t in tok.special_tokens}
    if tok._codec is not None:
        for i, raw in enumerate(tok._codec.id_bytes):
            sizes[i] = len(raw)
    else:
        spec = json.loads(tok.hf.to_str())
        byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
        unbyte = {c: b for b, c in bytes_to_unicode().items()}
        for i in range(tok.vocab_size):
            piece = tok.id_to_token(i)
            if piece is None:
                continue
            if byte_level and all(c in unbyte for c in piece):
                sizes[i] = len(piece)  # one byte per symbol of the byte-level alphabet
            elif _BYTE_NAME.fullmatch(piece):
                sizes[i] = 1
            else:
                text = piece.removeprefix("##").replace("\u2581", " ")
                sizes[i] = len(text.encode("utf-8"))
    for i in special:
        if i is not None:
            sizes[i] = 0
    return sizes


def resolve_tokenizer_file(path: str | os.PathLike[str]) -> Path:
    """`path` itself when it is a file, else `path/tokenizer.json`; MissingFileError if absent."""
    p = Path(path)
    file = p / TOKENIZER_FILE if p.is_dir() else p
    if not file.is_file():
        raise MissingFileError(
            f"tokenizer file {file} not found; train one with `groundup tokenizer CONFIG` "
            "or point to a folder holding a tokenizer.json"
        )
    return file


# ---- recognising char / bytes tokenizers in a tokenizer.json -------------------------------
_BYTE_NAME = re.compile(r"<0x([0-9A-F]{2})>")


def _plain_vocab(spec: dict) -> dict[str, int] | None:
    """The BPE vocabulary without added tokens, if the model is a BPE with no merges."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("merges") or spec.get("normalizer"):
        return None
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    added = {t["content"] for t in spec.get("added_tokens", [])}
    return {k: v for k, v in model.get("vocab", {}).items() if k not in added}


def _detect_kind(spec: dict) -> str:
    """ "char" / "bytes" when the JSON is equivalent to a plain lookup, else the model type.

    The test is on behaviour, not on a marker: any tokenizer.json of that shape (ours or
    not) encodes exactly like the numpy lookup, so the fast path is always correct.
    """
    vocab = _plain_vocab(spec)
    pre = spec.get("pre_tokenizer")
    if vocab is not None:
        table = bytes_to_unicode()
        if (
            pre
            and pre.get("type") == "ByteLevel"
            and not pre.get("add_prefix_space")
            and (spec.get("decoder") or {}).get("type") == "ByteLevel"
            and vocab == {table[b]: b for b in range(256)}
        ):
            return "bytes"
        dec = spec.get("decoder") or {}
        steps = dec.get("decoders", []) if dec.get("type") == "Sequence" else [dec]
        fallback = bool(spec["model"].get("byte_fallback"))
        want = ["ByteFallback", "Fuse"] if fallback else ["Fuse"]
        ok_decoder = [d.get("type") for d in steps] == want
        names_ok = all(
            len(k) == 1 or (fallback and _BYTE_NAME.fullmatch(k) is not None) for k in vocab
        )
        if pre is None and ok_decoder and names_ok and not spec.get("post_processor"):
            if not fallback or sum(len(k) > 1 for k in vocab) == 256:
                return "char"
    model_type = (spec.get("model") or {}).get("type", "unknown")
    return str(model_type).lower()


def _is_gpt2_split(spec: dict) -> bool:
    pre = spec.get("pre_tokenizer") or {}
    return (
        pre.get("type") == "ByteLevel"
        and bool(pre.get("use_regex", True))
        and not pre.get("add_prefix_space")
        and not spec.get("normalizer")
    )


def _cut(text: str, chunk_chars: int) -> list[str]:
    """Cut `text` into pieces of >= chunk_chars characters at token-neutral points."""
    if len(text) <= chunk_chars:
        return [text]
    parts: list[str] = []
    start = 0
    while len(text) - start > chunk_chars:
        m = _SAFE_CUT.search(text, start + chunk_chars)
        if m is None:
            break
        parts.append(text[start : m.start() + 2])
        start = m.start() + 2
    parts.append(text[start:])
    return parts


class _CharCodec:
    """Numpy encoder/decoder for char and bytes tokenizers (one table lookup per call)."""

    def __init__(
        self,
        kind: str,
        char_ids: dict[str, int],
        byte_ids: np.ndarray | None,
        specials: dict[str, int],
        vocab_size: int,
    ) -> None:
        self.kind = kind
        self.byte_ids = byte_ids  # (256,) id of each byte token, or None (no fallback)
        if kind == "char":
            cps = np.array([ord(c) for c in char_ids], dtype=np.int64)
            top = int(cps.max()) + 1 if cps.size else 0
            # dense table over code points 0..top; index `top` means "not in the vocabulary"
            self.table = np.full(top + 1, -1, dtype=np.int64)
            self.table[cps] = np.array(list(char_ids.values()), dtype=np.int64)
            self.top = top
        # code point of each character id (-1 for specials and bytes): the fast decode path
        self.id_cp = np.full(vocab_size, -1, dtype=np.int64)
        for c, i in char_ids.items():
            self.id_cp[i] = ord(c)
        # bytes of each id, for the general decode: characters, special tokens, single bytes
        self.id_bytes: list[bytes] = [b""] * vocab_size
        for c, i in char_ids.items():
            self.id_bytes[i] = c.encode("utf-8", "surrogatepass")
        for s, i in specials.items():
            self.id_bytes[i] = s.encode("utf-8")
        if byte_ids is not None:
            for b, i in enumerate(byte_ids.tolist()):
                self.id_bytes[i] = bytes([b])

    @classmethod
    def from_spec(cls, spec: dict, kind: str) -> _CharCodec:
        vocab = _plain_vocab(spec) or {}
        specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        size = max([*vocab.values(), *specials.values()]) + 1
        if kind == "bytes":
            table = bytes_to_unicode()
            return cls(kind, {}, np.array([vocab[table[b]] for b in range(256)]), specials, size)
        chars = {k: v for k, v in vocab.items() if len(k) == 1}
        byte_ids = None
        if spec["model"].get("byte_fallback"):
            byte_ids = np.zeros(256, dtype=np.int64)
            for k, v in vocab.items():
                m = _BYTE_NAME.fullmatch(k)
                if m:
                    byte_ids[int(m.group(1), 16)] = v
        return cls(kind, chars, byte_ids, specials, size)

    def encode(self, text: str) -> np.ndarray:
        try:
            if self.kind == "bytes":
                return self.byte_ids[np.frombuffer(text.encode("utf-8"), dtype=np.uint8)]
            cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        except UnicodeEncodeError as e:
            raise TokenizerError(
                f"cannot encode this text: {e.reason} at position {e.start} "
                "(a lone surrogate); pass valid Unicode"
            ) from None
        ids = self.table[np.minimum(cps, self.top)]
        unknown = np.flatnonzero(ids < 0)
        if unknown.size == 0:
            return ids
        if self.byte_ids is None:
            c = chr(int(cps[unknown[0]]))
            raise TokenizerError(
                f"character {c!r} (U+{ord(c):04X}) is not in this char tokenizer's vocabulary; "
                "retrain it on text that has it, or with byte_fallback=True so unseen "
                "characters encode as UTF-8 bytes"
            )
        # Rare path: splice the UTF-8 byte ids of each unseen character in place.
        pieces: list[np.ndarray] = []
        start = 0
        for pos in unknown.tolist():
            pieces.append(ids[start:pos])
            raw = np.frombuffer(chr(int(cps[pos])).encode("utf-8"), dtype=np.uint8)
            pieces.append(self.byte_ids[raw])
            start = pos + 1
        pieces.append(ids[start:])
        return np.concatenate(pieces)

    def decode(self, ids: np.ndarray) -> str:
        if self.kind == "bytes" and (ids < 256).all():
            return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        cps = self.id_cp[ids]
        if self.kind == "char" and (cps >= 0).all():
            return cps.astype("<u4").tobytes().decode("utf-32-le", errors="surrogatepass")
        raw = b"".join([self.id_bytes[i] for i in ids.tolist()])
        # byte-fallback ids may not form whole characters: show U+FFFD, like Hugging Face
        return raw.decode("utf-8", errors="replace")
