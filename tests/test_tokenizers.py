"""Tokenizers: lossless round trips, file format, Hugging Face compatibility, errors."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from groundup.data.corpus import Corpus
from groundup.data.tokenizer_training import train_tokenizer
from groundup.data.tokenizers import Tokenizer, _cut, bytes_to_unicode
from groundup.errors import ConfigError, DataError, MissingFileError, TokenizerError

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
)
TRICKY = [
    "",
    "héllo wörld",
    "emoji 😀👍🏽 and flags 🇫🇷",
    "combining a\u0301 e\u0308 \u0345",
    "NUL \x00 bell \x07 escape \x1b del \x7f",
    "  leading and trailing  \n\n\t",
    "<|endoftext|> is just text here",
    "中文 日本語 한국어 العربية",
    "\r\n\u2028\u00a0\ufeff",
]


@functools.cache
def bpe() -> Tokenizer:
    return Tokenizer.train([TEXT * 3, *TRICKY], kind="bpe", vocab_size=300, min_frequency=1)


@functools.cache
def char(byte_fallback: bool) -> Tokenizer:
    return Tokenizer.train([TEXT], kind="char", byte_fallback=byte_fallback)


@functools.cache
def raw_bytes() -> Tokenizer:
    return Tokenizer.train(None, kind="bytes")


def lossless_kinds() -> list[Tokenizer]:
    return [bpe(), raw_bytes(), char(True)]


# ---- round trips ---------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(st.text())
@example("😀 a\u0301\x00\x01\x1f")
@example("<|endoftext|><|pad|>")
def test_round_trip_is_lossless_on_any_unicode(text: str) -> None:
    for tok in lossless_kinds():
        ids = tok.encode(text)
        assert tok.decode(ids) == text, tok.kind
        assert all(0 <= i < tok.vocab_size for i in ids)


@settings(max_examples=100, deadline=None)
@given(st.text())
@example("<|endoftext|> x")
def test_fast_paths_match_the_tokenizer_json(text: str) -> None:
    # char and bytes encode with numpy; the saved HF JSON must mean exactly the same ids
    for tok in (raw_bytes(), char(True)):
        assert tok.hf.encode(text, add_special_tokens=False).ids == tok.encode(text)


def test_bytes_ids_are_the_utf8_bytes() -> None:
    tok = raw_bytes()
    text = "aé😀\x00"
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.vocab_size == 258
    assert (tok.eot_id, tok.pad_id) == (256, 257)


def test_char_vocabulary_matches_nanogpt_stoi() -> None:
    tok = char(False)
    chars = sorted(set(TEXT))  # nanoGPT's shakespeare_char vocabulary
    stoi = {c: i for i, c in enumerate(chars)}
    assert tok.encode("Speak, speak.") == [stoi[c] for c in "Speak, speak."]
    assert tok.vocab_size == len(chars) + 2
    assert (tok.eot_id, tok.pad_id) == (len(chars), len(chars) + 1)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"


def test_char_without_fallback_rejects_unseen_characters() -> None:
    with pytest.raises(TokenizerError, match="byte_fallback=True"):
        char(False).encode("café")


def test_char_fallback_encodes_unseen_characters_as_bytes() -> None:
    tok = char(True)
    assert tok.vocab_size == len(set(TEXT)) + 2 + 256
    ids = tok.encode("é")
    byte_ids = [tok.token_to_id(f"<0x{b:02X}>") for b in "é".encode()]
    assert ids == byte_ids
    assert tok.decode(ids) == "é"


def test_special_strings_in_text_are_not_special_ids() -> None:
    for tok in (bpe(), raw_bytes(), char(True)):
        ids = tok.encode("<|endoftext|>")
        assert tok.eot_id not in ids
        assert tok.decode(ids) == "<|endoftext|>"


def test_allow_special_maps_special_strings_to_ids() -> None:
    for tok in (bpe(), raw_bytes(), char(True)):
        ids = tok.encode("ab<|endoftext|>c<|pad|>", allow_special=True)
        assert ids == tok.encode("ab") + [tok.eot_id] + tok.encode("c") + [tok.pad_id]
        assert tok.encode_batch(["<|endoftext|>"], allow_special=True) == [[tok.eot_id]]


def test_bpe_special_tokens_and_sizes() -> None:
    tok = bpe()
    assert tok.kind == "bpe"
    assert tok.vocab_size == 300
    assert (tok.eot_id, tok.pad_id) == (0, 1)
    assert tok.token_to_id("<|endoftext|>") == 0
    assert tok.token_to_id("no such token") is None
    assert tok.special_tokens == ["<|endoftext|>", "<|pad|>"]
    assert tok.decode([tok.eot_id, tok.pad_id]) == "<|endoftext|><|pad|>"
    assert len(tok.encode(TEXT)) < len(TEXT.encode())  # merges were learned


def test_encode_batch_and_arrays_agree_with_encode() -> None:
    for tok in (bpe(), raw_bytes(), char(True)):
        texts = [TEXT, "", "é😀"]
        assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
        arrays = tok.encode_batch_arrays(texts)
        assert all(a.dtype == np.int64 for a in arrays)
        assert [a.tolist() for a in arrays] == tok.encode_batch(texts)


def test_decode_accepts_arrays_and_tensors() -> None:
    torch = pytest.importorskip("torch")
    tok = bpe()
    ids = tok.encode(TEXT)
    assert tok.decode(np.array(ids)) == TEXT
    assert tok.decode(torch.tensor(ids)) == TEXT
    with pytest.raises(TokenizerError, match="outside this tokenizer's vocabulary"):
        tok.decode([tok.vocab_size])


CUT_ALPHABET = list("ab \n\t\r.,'s1\u00a0\u2028é")


@functools.cache
def whitespace_bpe() -> Tokenizer:
    # merges across spaces and newlines (" \n", "\n\n", "\na"), so a bad cut changes ids
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(CUT_ALPHABET, size=2000, p=None)) for _ in range(5)]
    return Tokenizer.train(texts, kind="bpe", vocab_size=600, min_frequency=1)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(CUT_ALPHABET), max_size=400))
@example("aaaaaaa \n\nb \n\n\tb")
def test_cutting_long_documents_never_changes_bpe_ids(text: str) -> None:
    tok = whitespace_bpe()
    pieces = _cut(text, 7)
    assert "".join(pieces) == text
    whole = tok.hf.encode(text, add_special_tokens=False).ids
    assert tok._hf_encode_batch([text], chunk_chars=7)[0].tolist() == whole


def test_byte_level_alphabet() -> None:
    from tokenizers import pre_tokenizers

    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ"  # GPT-2's space symbol


# ---- files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["bpe", "char", "char_fallback", "bytes"])
def test_save_load_round_trip(tmp_path, which: str) -> None:
    tok = {"bpe": bpe, "bytes": raw_bytes}.get(which, lambda: char(which == "char_fallback"))()
    written = tok.save(tmp_path / "tok")
    assert written == tmp_path / "tok" / "tokenizer.json"
    json.loads(written.read_text())  # a plain JSON file
    for path in (tmp_path / "tok", written):
        loaded = Tokenizer.load(path)
        assert loaded.kind == tok.kind
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.fingerprint() == tok.fingerprint()
        assert loaded.encode(TEXT) == tok.encode(TEXT)
        assert (loaded.eot_id, loaded.pad_id) == (tok.eot_id, tok.pad_id)
    tok.save(tmp_path / "named.json")
    assert Tokenizer.load(tmp_path / "named.json").encode(TEXT) == tok.encode(TEXT)


@pytest.mark.parametrize("which", ["bpe", "char", "bytes"])
def test_transformers_loads_our_tokenizer_json(tmp_path, which: str) -> None:
    transformers = pytest.importorskip("transformers")
    tok = {"bpe": bpe, "bytes": raw_bytes, "char": lambda: char(True)}[which]()
    file = tok.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(file))
    text = TEXT + "é 😀 \x00"
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf.convert_tokens_to_ids("<|endoftext|>") == tok.eot_id
    assert hf.decode(tok.encode(text)) == text
    chat = "a<|endoftext|>b<|pad|>"  # transformers maps special strings to their ids
    assert hf(chat, add_special_tokens=False)["input_ids"] == tok.encode(chat, allow_special=True)


def test_load_a_foreign_tokenizer_json(tmp_path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[SEP]": 2, "hello": 3, "world": 4}
    hf = HFTokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["[PAD]", "[UNK]", "[SEP]"])
    hf.enable_truncation(max_length=2)  # pretraining must never truncate documents
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path)
    assert tok.kind == "wordlevel"
    assert tok.encode("hello world hello") == [3, 4, 3]
    assert (tok.eot_id, tok.pad_id) == (2, 0)


def test_missing_and_corrupt_files(tmp_path) -> None:
    with pytest.raises(MissingFileError, match="groundup tokenizer"):
        Tokenizer.load(tmp_path / "nowhere")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not valid JSON.*retrain"):
        Tokenizer.load(tmp_path)
    bad.write_text(json.dumps({"model": {"type": "Nonsense"}}))
    with pytest.raises(TokenizerError, match="not a tokenizer"):
        Tokenizer.load(bad)


# ---- fitting a model, training errors ------------------------------------------------------
def test_check_fits() -> None:
    tok = bpe()
    tok.check_fits(300)
    tok.check_fits(320)  # padded embedding tables are fine
    with pytest.raises(TokenizerError) as err:
        tok.check_fits(256)
    assert str(err.value) == (
        "tokenizer has 300 tokens but the model's vocab_size is 256; "
        "set model.vocab_size >= 300 or retrain the tokenizer"
    )


def test_training_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'char'"):
        Tokenizer.train([TEXT], kind="chars")
    with pytest.raises(ConfigError, match="vocab_size >= 258"):
        Tokenizer.train([TEXT], kind="bpe", vocab_size=100)
    with pytest.raises(DataError, match="no text"):
        Tokenizer.train(["", ""], kind="char")
    with pytest.raises(DataError, match="iterable of documents"):
        Tokenizer.train(TEXT, kind="bpe")  # a bare string would train on its characters
    with pytest.raises(ConfigError, match="distinct"):
        Tokenizer.train([TEXT], special_tokens=["<a>", "<a>"])
    with pytest.raises(ConfigError, match="also a character"):
        Tokenizer.train([TEXT], kind="char", special_tokens=["?"])


def test_train_bpe_on_pydocs_with_a_small_vocab() -> None:
    corpus = Corpus("pydocs")
    tok = train_tokenizer(corpus, kind="bpe", vocab_size=512)
    assert tok.vocab_size == 512
    doc = next(iter(corpus))
    ids = tok.encode(doc)
    assert tok.decode(ids) == doc
    assert len(ids) < 0.6 * len(doc.encode())  # a real vocabulary, not bytes
