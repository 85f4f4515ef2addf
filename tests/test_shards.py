"""Corpus reading, token shards (prepare/load) and window batching."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from groundup.data.corpus import Corpus, iter_documents
from groundup.data.shards import (
    MIN_DOCS_FOR_DOCUMENT_SPLIT,
    TokenArray,
    choose_val_documents,
    load_shards,
    prepare_shards,
    token_dtype,
)
from groundup.data.tokenizers import Tokenizer
from groundup.data.windows import RandomWindows, SequentialWindows
from groundup.errors import (
    ConfigError,
    DataError,
    DependencyError,
    MissingFileError,
    TokenizerError,
)


@pytest.fixture(scope="module")
def byte_tok() -> Tokenizer:
    return Tokenizer.train(None, kind="bytes")  # ids are the UTF-8 bytes, eot = 256


def expected_stream(docs: list[str], eot: int = 256) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += list(d.encode("utf-8")) + [eot]
    return out


def split_docs(tokens: np.ndarray, eot: int = 256) -> list[str]:
    """Documents of a split, cut at the eot ids."""
    ids = np.asarray(tokens).tolist()
    docs, cur = [], []
    for i in ids:
        if i == eot:
            docs.append(bytes(cur).decode("utf-8"))
            cur = []
        else:
            cur.append(i)
    assert not cur, "every document ends with eot"
    return docs


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("second file\n")
    (root / "a.md").write_text("# first file\nhéllo\n")
    (root / "sub" / "c.jsonl").write_text(
        '{"text": "row one"}\n\n{"text": "row two", "id": 2}\n{"text": "   "}\n'
    )
    (root / ".hidden.txt").write_text("never read")
    (root / "notes.csv").write_text("not,a,corpus\n")
    return root


# ---- corpus --------------------------------------------------------------------------------
def test_folder_corpus_is_sorted_and_filtered(corpus_dir) -> None:
    corpus = Corpus(corpus_dir)
    docs = list(corpus)
    assert docs == ["# first file\nhéllo\n", "second file\n", "row one", "row two"]
    assert list(iter_documents(corpus_dir)) == docs
    assert (corpus.documents, corpus.skipped) == (4, 0)
    assert corpus.description == str(corpus_dir.resolve())


def test_pydocs_builtin() -> None:
    from pydoc_data.topics import topics

    docs = list(iter_documents("pydocs"))
    assert docs == [topics[k] for k in sorted(topics)]
    assert Corpus("PyDocs").description.startswith("builtin:pydocs")


def test_jsonl_errors_name_the_line_and_field(tmp_path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "ok"}\n{"body": "x"}\n{bad json\n{"text": 3}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: no 'text' field \(keys: body\).*bad_rows"):
        list(iter_documents(f))
    corpus = Corpus(f, bad_rows="skip")
    assert list(corpus) == ["ok"]
    assert corpus.skipped == 3
    assert list(Corpus(f, text_field="body", bad_rows="skip")) == ["x"]
    f.write_text('{"text": "ok"}\n{bad json\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: invalid JSON"):
        list(iter_documents(f))
    with pytest.raises(ConfigError, match="bad_rows"):
        Corpus(f, bad_rows="ignore")


def test_empty_and_missing_corpora(tmp_path) -> None:
    (tmp_path / "blank.txt").write_text("  \n\n ")
    with pytest.raises(DataError, match="empty"):
        list(iter_documents(tmp_path))
    with pytest.raises(MissingFileError, match="did you mean 'pydocs'"):
        Corpus("pydoc")
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(DataError, match="unsupported file type"):
        Corpus(tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no .txt"):
        Corpus(tmp_path / "empty")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        list(iter_documents(tmp_path / "latin1.txt"))


def test_parquet(tmp_path, monkeypatch) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["one", None, "three"], "n": [1, 2, 3]}), f)
    assert list(Corpus(f, bad_rows="skip")) == ["one", "three"]
    with pytest.raises(DataError, match="row 2"):
        list(Corpus(f))
    with pytest.raises(DataError, match="no column 'body'"):
        list(Corpus(f, text_field="body"))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if not installed
    with pytest.raises(DependencyError, match="pip install pyarrow"):
        list(Corpus(f))


# ---- prepare / load ------------------------------------------------------------------------
def test_token_dtype() -> None:
    assert token_dtype(258) == np.uint16
    assert token_dtype(65536) == np.uint16  # ids 0..65535
    assert token_dtype(65537) == np.uint32


def test_prepare_folder_few_documents_splits_the_stream(tmp_path, corpus_dir, byte_tok) -> None:
    docs = list(Corpus(corpus_dir))
    shards = prepare_shards(corpus_dir, byte_tok, tmp_path / "out", val_fraction=0.25)
    stream = expected_stream(docs)
    n_val = round(0.25 * len(stream))
    # fewer than MIN_DOCS_FOR_DOCUMENT_SPLIT documents: the last 25% of the tokens is val
    assert shards.train.tolist() == stream[:-n_val]
    assert shards.val.tolist() == stream[-n_val:]
    assert isinstance(shards.train, np.memmap) and not shards.train.flags.writeable
    meta = json.loads((tmp_path / "out" / "index.json").read_text())
    assert meta["split_mode"] == "tokens"
    assert meta["dtype"] == "uint16" and shards.train.dtype == np.uint16
    assert meta["vocab_size"] == 258 and meta["eot_id"] == 256
    assert meta["tokenizer"]["sha256"] == byte_tok.fingerprint()
    assert meta["source"] == str(corpus_dir.resolve())
    assert meta["val_fraction"] == 0.25
    assert meta["documents"]["total"] == 4
    assert meta["splits"]["train"]["tokens"] == len(stream) - n_val
    assert shards.tokenizer().fingerprint() == byte_tok.fingerprint()
    assert not (tmp_path / "out" / ".prepare-tmp").exists()


def test_single_document_split_like_nanogpt(tmp_path) -> None:
    text = "".join(chr(97 + i % 26) for i in range(1000))
    tok = Tokenizer.train([text], kind="char")
    shards = prepare_shards([text], tok, tmp_path, progress=False)
    ids = tok.encode(text) + [tok.eot_id]
    assert shards.train.tolist() == ids[:901]  # 1001 tokens, the last 100 are val
    assert shards.val.tolist() == ids[901:]


def test_many_documents_split_by_document(tmp_path, byte_tok) -> None:
    docs = [f"document {i} " + "x" * (i % 7) for i in range(40)]
    assert len(docs) >= MIN_DOCS_FOR_DOCUMENT_SPLIT
    a = prepare_shards(docs, byte_tok, tmp_path / "a", val_fraction=0.2, seed=1, progress=False)
    train, val = split_docs(a.train), split_docs(a.val)
    assert sorted(train + val) == sorted(docs)  # every document whole, in exactly one split
    assert train == [d for d in docs if d in train]  # original order kept
    assert a.meta["split_mode"] == "documents" and a.meta["documents"]["val"] == len(val)
    total = len(expected_stream(docs))
    assert 0.1 * total <= len(a.val) <= 0.2 * total  # never above the target, close to it
    b = prepare_shards(docs, byte_tok, tmp_path / "b", val_fraction=0.2, seed=1, progress=False)
    c = prepare_shards(docs, byte_tok, tmp_path / "c", val_fraction=0.2, seed=2, progress=False)
    assert np.array_equal(a.val, b.val)  # seeded
    assert not np.array_equal(a.val, c.val)


def test_choose_val_documents() -> None:
    lengths = np.array([10] * 20)
    mask = choose_val_documents(lengths, 50, seed=0)
    assert mask.sum() == 5
    assert choose_val_documents(lengths[:5], 10, seed=0) is None  # too few documents
    big = np.array([100] * 10 + [1])
    assert choose_val_documents(big, 60, seed=0) is None  # whole documents cannot fit
    assert choose_val_documents(lengths, 0, seed=0).sum() == 0


def test_uint32_shards_for_a_large_vocabulary(tmp_path) -> None:
    chars = [chr(0x4E00 + i) for i in range(20_000)] + [chr(0x20000 + i) for i in range(46_000)]
    text = "".join(chars)
    tok = Tokenizer.train([text], kind="char")
    assert tok.vocab_size > 65536
    shards = prepare_shards([text], tok, tmp_path, val_fraction=0.0, progress=False)
    assert shards.train.dtype == np.uint32 and shards.meta["dtype"] == "uint32"
    assert shards.train[-2] == tok.encode(chars[-1])[0] > 65535
    assert tok.decode(shards.train[:-1]) == text


def test_several_shards_read_as_one_array(tmp_path, byte_tok) -> None:
    docs = ["abcdefghij", "klmnopqrst", "uvwxyz"]
    shards = prepare_shards(
        docs, byte_tok, tmp_path, val_fraction=0.0, shard_tokens=7, progress=False
    )
    stream = np.array(expected_stream(docs))
    assert [s["tokens"] for s in shards.meta["splits"]["train"]["shards"]] == [
        7,
        7,
        7,
        7,
        1,
    ]  # 29 tokens
    assert isinstance(shards.train, TokenArray)
    assert len(shards.train) == len(stream)
    assert shards.train[:].tolist() == stream.tolist()
    assert shards.train[5:16].tolist() == stream[5:16].tolist()
    assert shards.train[-1] == stream[-1]
    idx = np.array([[0, 6, 7], [20, 13, 14]])
    assert np.array_equal(shards.train[idx], stream[idx])
    starts = np.array([0, 5, 6, 7, 17])  # inside a shard and across boundaries
    assert np.array_equal(shards.train.windows(starts, 5), stream[starts[:, None] + np.arange(5)])
    assert len(shards.val) == 0


def test_reprepare_and_interrupted_prepare(tmp_path, byte_tok) -> None:
    out = tmp_path / "out"
    prepare_shards(["one " * 50], byte_tok, out, shard_tokens=50, progress=False)
    assert (out / "train_0003.bin").exists()
    prepare_shards(["two " * 20], byte_tok, out, shard_tokens=50, progress=False)
    assert not (out / "train_0003.bin").exists()  # stale shards removed
    before = (out / "index.json").read_text()

    def broken():
        yield "three " * 20
        raise DataError("bad row")

    with pytest.raises(DataError, match="bad row"):
        prepare_shards(broken(), byte_tok, out, progress=False)
    assert (out / "index.json").read_text() == before  # the old index still stands
    assert split_docs(np.concatenate([load_shards(out).train, load_shards(out).val])) == [
        "two " * 20
    ]
    assert not (out / ".prepare-tmp").exists()


def test_prepare_errors(tmp_path, byte_tok) -> None:
    with pytest.raises(DataError, match="no documents"):
        prepare_shards([], byte_tok, tmp_path / "a", progress=False)
    with pytest.raises(DataError, match="no documents"):
        prepare_shards(["  ", "\n"], byte_tok, tmp_path / "a", progress=False)
    with pytest.raises(DataError, match="must be text"):
        prepare_shards([b"bytes"], byte_tok, tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="val_fraction"):
        prepare_shards(["x"], byte_tok, tmp_path / "a", val_fraction=1.0)
    with pytest.raises(DataError, match="whole corpus"):
        prepare_shards(["abc"], byte_tok, tmp_path / "a", val_tokens=4, progress=False)
    no_eot = Tokenizer.train(None, kind="bytes", special_tokens=["<|pad|>"])
    with pytest.raises(TokenizerError, match="end-of-text"):
        prepare_shards(["abc"], no_eot, tmp_path / "a")
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{"x": 1}\n')
    with pytest.raises(DataError, match="d.jsonl:2"):
        prepare_shards(tmp_path / "d.jsonl", byte_tok, tmp_path / "a", progress=False)
    shards = prepare_shards(
        Corpus(tmp_path / "d.jsonl", bad_rows="skip"), byte_tok, tmp_path / "b", progress=False
    )
    assert shards.meta["skipped_rows"] == 1


def test_load_errors(tmp_path, byte_tok) -> None:
    with pytest.raises(MissingFileError, match="run `groundup prepare CONFIG` first"):
        load_shards(tmp_path)
    shards = prepare_shards(["a" * 100], byte_tok, tmp_path, progress=False)
    assert len(shards.train) == 91 and len(shards.val) == 10
    load_shards(tmp_path / "index.json", block_size=9)
    with pytest.raises(DataError, match="val split .* 10 tokens, fewer than block_size"):
        load_shards(tmp_path, block_size=10)
    with pytest.raises(DataError, match="train split"):
        load_shards(tmp_path, block_size=100)
    other = Tokenizer.train(["abc"], kind="char")
    with pytest.raises(TokenizerError, match="another tokenizer"):
        shards.check_tokenizer(other)
    shards.check_tokenizer(byte_tok)
    (tmp_path / "val_0000.bin").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="inconsistent"):
        load_shards(tmp_path)
    (tmp_path / "val_0000.bin").unlink()
    with pytest.raises(MissingFileError, match="missing"):
        load_shards(tmp_path)
    (tmp_path / "index.json").write_text("{")
    with pytest.raises(DataError, match="not a valid shard index"):
        load_shards(tmp_path)


def test_prepare_pydocs_end_to_end(tmp_path) -> None:
    corpus = Corpus("pydocs")
    tok = Tokenizer.train(corpus, kind="char")
    shards = prepare_shards(corpus, tok, tmp_path, progress=False)
    assert shards.meta["split_mode"] == "documents"
    assert shards.meta["source"].startswith("builtin:pydocs")
    n = len(shards.train) + len(shards.val)
    assert n == corpus.chars + corpus.documents  # one token per character, plus eot
    assert 0.05 * n < len(shards.val) <= 0.1 * n


# ---- windows -------------------------------------------------------------------------------
def test_random_windows_shift_and_bounds() -> None:
    T, n = 8, 11  # valid starts: 0, 1, 2 (the last window's y ends at token 10)
    tokens = np.arange(n, dtype=np.uint16)
    rw = RandomWindows(tokens, block_size=T, batch_size=4, seed=0)
    seen = set()
    for _ in range(50):
        x, y = next(rw)
        assert x.shape == y.shape == (4, T) and x.dtype == y.dtype == torch.int64
        assert x.is_contiguous() and y.is_contiguous()
        assert torch.equal(y, x + 1)
        assert torch.equal(x, x[:, :1] + torch.arange(T))
        seen.update(x[:, 0].tolist())
    assert seen == {0, 1, 2}
    assert int(y.max()) <= n - 1


def test_random_windows_seeded_and_resumable() -> None:
    tokens = np.arange(10_000, dtype=np.uint16)
    a = RandomWindows(tokens, 16, 4, seed=3)
    b = RandomWindows(tokens, 16, 4, seed=3)
    c = RandomWindows(tokens, 16, 4, seed=4)
    r = RandomWindows(tokens, 16, 4, seed=3, rank=1)
    xa, xb, xc, xr = next(a)[0], next(b)[0], next(c)[0], next(r)[0]
    assert torch.equal(xa, xb) and not torch.equal(xa, xc) and not torch.equal(xa, xr)
    for _ in range(4):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # JSON-safe, as in a checkpoint
    expected = [next(a)[0] for _ in range(3)]
    resumed = RandomWindows(tokens, 16, 4, seed=3)
    resumed.load_state_dict(state)
    assert all(torch.equal(next(resumed)[0], e) for e in expected)
    with pytest.warns(UserWarning, match="block_size"):
        RandomWindows(tokens, 8, 4, seed=3).load_state_dict(state)


def test_windows_on_several_shards_match_one_array() -> None:
    stream = np.arange(500, dtype=np.uint16)
    parts = TokenArray([stream[:123], stream[123:130], stream[130:]])
    a, b = RandomWindows(stream, 32, 8, seed=5), RandomWindows(parts, 32, 8, seed=5)
    for _ in range(10):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert [x.tolist() for x, _ in SequentialWindows(parts, 32, 8)] == [
        x.tolist() for x, _ in SequentialWindows(stream, 32, 8)
    ]


def test_sequential_windows_cover_the_split() -> None:
    T, n = 4, 23  # windows at 0, 4, 8, 12, 16 (16 + 5 <= 23); 20 would need token 24
    tokens = torch.arange(n)
    sw = SequentialWindows(tokens, block_size=T, batch_size=2)
    assert len(sw) == 3 and sw.n_windows == 5
    batches = list(sw)
    assert [x.shape[0] for x, _ in batches] == [2, 2, 1]
    ys = torch.cat([y for _, y in batches]).flatten().tolist()
    assert ys == list(range(1, 21))  # every target once, in order
    assert len(list(SequentialWindows(tokens, T, 2, drop_last=True))) == 2
    shifted = SequentialWindows(tokens, T, 8, offset=2, stride=2)
    assert shifted.starts.tolist() == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    quick = SequentialWindows(np.arange(1001), 10, 2, max_batches=2)
    assert len(quick) == 2 and quick.starts.tolist() == [0, 330, 660, 990]  # spread evenly


def test_windows_errors() -> None:
    with pytest.raises(DataError, match="fewer than block_size"):
        RandomWindows(np.arange(8), block_size=8, batch_size=2)
    with pytest.raises(DataError, match="fewer than block_size"):
        SequentialWindows(np.arange(8), block_size=8, batch_size=2)
    with pytest.raises(DataError, match="drop_last"):
        SequentialWindows(np.arange(20), block_size=8, batch_size=4, drop_last=True)
    with pytest.raises(ConfigError, match="block_size and batch_size"):
        RandomWindows(np.arange(20), block_size=0, batch_size=2)
    with pytest.raises(DataError, match="1-D"):
        RandomWindows(np.zeros((4, 4)), block_size=2, batch_size=2)


def test_builtin_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    """`source: pydocs` means the builtin corpus even where ./pydocs is a run directory."""
    from groundup.data.corpus import Corpus

    (tmp_path / "pydocs").mkdir()
    (tmp_path / "pydocs" / "metrics.jsonl").write_text('{"step": 1}\n')
    monkeypatch.chdir(tmp_path)
    assert Corpus("pydocs").files is None
    assert Corpus("./pydocs").files == [Path("pydocs") / "metrics.jsonl"]
