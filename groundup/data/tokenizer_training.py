"""Training tokenizers: one builder per kind ("bpe", "char", "bytes"), picked by name.

`train_tokenizer` (also reachable as `Tokenizer.train`) checks the special tokens and calls
the builder registered in TOKENIZER_KINDS; each builder returns a `Tokenizer` wrapping a
Hugging Face `tokenizers.Tokenizer`, saved as a tokenizer.json.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from groundup.data.tokenizers import DEFAULT_SPECIAL_TOKENS, Tokenizer, bytes_to_unicode
from groundup.errors import ConfigError, DataError
from groundup.registry import lookup


def train_tokenizer(
    texts: Iterable[str] | None,
    kind: str = "bpe",
    vocab_size: int | None = None,
    min_frequency: int = 2,
    special_tokens: Sequence[str] | None = None,
    byte_fallback: bool = False,
) -> Tokenizer:
    """Train a tokenizer of `kind` on `texts`; the arguments are documented at `Tokenizer.train`."""
    specials = list(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    if len(set(specials)) != len(specials) or any(not s for s in specials):
        raise ConfigError(
            f"special_tokens must be distinct non-empty strings, got {specials}; "
            "remove the duplicates"
        )
    build = lookup(TOKENIZER_KINDS, kind, "tokenizer kind")
    return build(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        byte_fallback=byte_fallback,
    )


def _byte_token(b: int) -> str:
    return f"<0x{b:02X}>"  # the name Hugging Face's byte_fallback looks up


# ---- the three kinds -----------------------------------------------------------------------
def _counted(texts: Iterable[str] | None, kind: str) -> Iterator[str]:
    """Yield the texts, checking types, and raise DataError at the end if there was no text."""
    if texts is None or isinstance(texts, str | bytes):
        raise DataError(
            f"training a {kind} tokenizer needs an iterable of documents (str), "
            f"got {type(texts).__name__}; pass a list of texts or iter_documents(source)"
        )
    seen = False
    for t in texts:
        if not isinstance(t, str):
            raise DataError(f"tokenizer training texts must be str, got {type(t).__name__}")
        if t:
            seen = True
            yield t
    if not seen:
        raise DataError(f"no text to train the {kind} tokenizer on; check the corpus source")


def _train_bpe(
    texts: Iterable[str] | None,
    *,
    vocab_size: int | None,
    min_frequency: int,
    special_tokens: list[str],
    byte_fallback: bool,
) -> Tokenizer:
    vocab_size = 4096 if vocab_size is None else int(vocab_size)
    floor = 256 + len(special_tokens)
    if vocab_size < floor:
        raise ConfigError(
            f"vocab_size {vocab_size} is below the {floor} base tokens of a byte-level BPE "
            f"(256 bytes + {len(special_tokens)} special tokens); set tokenizer.vocab_size >= "
            f"{floor} or use kind 'char'"
        )
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        # every byte in the alphabet from the start: any input encodes, nothing is unknown
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(_counted(texts, "bpe"), trainer=trainer)
    return Tokenizer(hf)


def _train_char(
    texts: Iterable[str] | None,
    *,
    vocab_size: int | None,
    min_frequency: int,
    special_tokens: list[str],
    byte_fallback: bool,
) -> Tokenizer:
    chars: set[str] = set()
    for t in _counted(texts, "char"):
        chars.update(t)
    clash = sorted(set(special_tokens) & chars)
    if clash:
        raise ConfigError(
            f"special token {clash[0]!r} is also a character of the text; use a longer name "
            "such as '<|endoftext|>'"
        )
    # Characters first, sorted, so ids match nanoGPT's shakespeare_char (0..64); then the
    # special tokens; then, only when asked, the 256 byte tokens.
    tokens = sorted(chars) + list(special_tokens)
    if byte_fallback:
        tokens += [_byte_token(b) for b in range(256)]
    hf = HFTokenizer(
        models.BPE(
            vocab={t: i for i, t in enumerate(tokens)}, merges=[], byte_fallback=byte_fallback
        )
    )
    hf.decoder = (
        decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        if byte_fallback
        else decoders.Fuse()
    )
    hf.add_special_tokens(list(special_tokens))
    return Tokenizer(hf)


def _train_bytes(
    texts: Iterable[str] | None,
    *,
    vocab_size: int | None,
    min_frequency: int,
    special_tokens: list[str],
    byte_fallback: bool,
) -> Tokenizer:
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    for i, s in enumerate(special_tokens):
        if s in vocab:
            raise ConfigError(f"special token {s!r} is a byte symbol; use a longer name")
        vocab[s] = 256 + i
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    hf.add_special_tokens(list(special_tokens))
    return Tokenizer(hf)


TOKENIZER_KINDS: dict[str, Callable[..., Tokenizer]] = {
    "bpe": _train_bpe,
    "char": _train_char,
    "bytes": _train_bytes,
}
