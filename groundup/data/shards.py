"""Token shards: a corpus encoded once into memory-mapped files, split into train and val.

Layout of a shard folder (written by `prepare_shards`, read by `load_shards`):

    index.json         what is in the folder: dtype, vocab size, tokenizer hash, splits
    tokenizer.json     a copy of the tokenizer that made the ids
    train_0000.bin     raw token ids (uint16 when vocab_size <= 65536, else uint32)
    val_0000.bin       ... a split is one or more files, read as one array

Every document is followed by the end-of-text id, so a training window that spans two
documents sees the boundary. The val split is whole documents drawn with the seed when the
corpus has at least MIN_DOCS_FOR_DOCUMENT_SPLIT documents, else (tinyshakespeare is one
file) the last val_fraction of the token stream, as nanoGPT does.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from groundup.data.corpus import Corpus
from groundup.data.tokenizers import TOKENIZER_FILE, Tokenizer
from groundup.errors import ConfigError, DataError, MissingFileError, TokenizerError
from groundup.files import write_text_atomic

INDEX_FILE = "index.json"
FORMAT = "groundup-token-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
MIN_DOCS_FOR_DOCUMENT_SPLIT = 10
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB per uint16 file
_TMP_DIR = ".prepare-tmp"
_BATCH_CHARS = 1 << 22  # characters handed to the encoder at once (bounded memory)
_BATCH_DOCS = 1024
_COPY_TOKENS = 1 << 23  # tokens copied at once from the staging file


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32: half the disk and RAM."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class TokenArray:
    """Several shard files read as one 1-D array: len, int/slice indexing, fancy indexing.

    A split held in one file is returned as a plain read-only np.memmap instead; this class
    only exists for corpora cut into several files.
    """

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts = list(parts)
        sizes = np.array([len(p) for p in self.parts], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])  # (n_parts + 1,)
        self.dtype = self.parts[0].dtype if self.parts else np.dtype(np.uint16)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key: Any) -> Any:
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            first = int(np.searchsorted(self.starts, start, side="right")) - 1
            pieces, pos = [], start
            for p in range(max(first, 0), len(self.parts)):
                if pos >= stop:
                    break
                lo, hi = pos - self.starts[p], min(stop, self.starts[p + 1]) - self.starts[p]
                pieces.append(self.parts[p][lo:hi])
                pos = int(self.starts[p] + hi)
            return np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)
        idx = np.asarray(key)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"TokenArray indices must be integers or slices, got {idx.dtype}")
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"index out of range for a token array of length {n}")
        part = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty(idx.shape, dtype=self.dtype)
        for p in np.unique(part).tolist():  # one vectorized gather per shard touched
            sel = part == p
            out[sel] = self.parts[p][idx[sel] - self.starts[p]]
        return out[()] if out.ndim == 0 else out

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """tokens[s : s + length] for each start, shape (B, length); windows may cross shards."""
        out = np.empty((len(starts), length), dtype=self.dtype)
        first = np.searchsorted(self.starts, starts, side="right") - 1
        last = np.searchsorted(self.starts, starts + length - 1, side="right") - 1
        for p in np.unique(first).tolist():  # windows inside one shard: row copies
            sel = (first == p) & (last == p)
            if sel.any():
                view = sliding_window_view(self.parts[p], length)
                out[sel] = view[starts[sel] - self.starts[p]]
        cross = first != last
        if cross.any():  # the few that straddle a shard boundary: element gather
            out[cross] = self[starts[cross][:, None] + np.arange(length)]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


@dataclass
class ShardIndex:
    """A shard folder: `train` and `val` token arrays (read-only memmaps) plus `meta` (index.json)."""

    path: Path
    meta: dict[str, Any]
    train: np.ndarray | TokenArray
    val: np.ndarray | TokenArray
    _splits: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size: the least model.vocab_size that fits these ids."""
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        return int(self.meta["eot_id"])

    def split(self, name: str) -> np.ndarray | TokenArray:
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return self.train if name == "train" else self.val

    def tokenizer(self) -> Tokenizer:
        """The tokenizer saved beside the shards (the one that produced the ids)."""
        return Tokenizer.load(self.path / TOKENIZER_FILE)

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Raise TokenizerError when `tokenizer` is not the one these shards were encoded with."""
        if tokenizer.fingerprint() != self.meta["tokenizer"]["sha256"]:
            raise TokenizerError(
                f"the shards in {self.path} were encoded with another tokenizer; use "
                f"{self.path / TOKENIZER_FILE} or rerun `groundup prepare CONFIG`"
            )

    def check_block_size(self, block_size: int) -> None:
        """DataError unless train (and val, when it has tokens) hold a window of block_size + 1."""
        for name in SPLITS:
            n = len(self.split(name))
            if (name == "train" or n > 0) and n < block_size + 1:
                raise DataError(
                    f"the {name} split in {self.path} has {n} tokens, fewer than block_size + 1 "
                    f"= {block_size + 1}; lower model.block_size, change the val fraction, or "
                    "use a bigger corpus"
                )


# ---- prepare -------------------------------------------------------------------------------
def prepare_shards(
    documents: Iterable[str] | str | os.PathLike[str],
    tokenizer: Tokenizer,
    out_dir: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    val_tokens: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    seed: int = 0,
    num_workers: int = 2,
    progress: bool = True,
    source: str | None = None,
) -> ShardIndex:
    """Encode `documents` once into train/val token shards in `out_dir`; return the index.

    documents: an iterable of texts, a `Corpus`, or a source for `Corpus` (path or builtin
    name). val_tokens, when given, replaces val_fraction by an exact token count.
    num_workers: encoding threads; the Rust encoder releases the GIL, so reading the next
    batch of documents overlaps with encoding the last (0 encodes inline).
    source: the description stored in index.json (taken from a Corpus when not given).
    The folder is written atomically: an interrupted run leaves no index.json, so a later
    load fails with a clear message instead of reading half a corpus.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_tokens is not None and val_tokens < 0:
        raise ConfigError(f"val_tokens must be >= 0, got {val_tokens}")
    if shard_tokens < 1:
        raise ConfigError(f"shard_tokens must be >= 1, got {shard_tokens}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    eot = tokenizer.eot_id
    if eot is None:
        raise TokenizerError(
            "the tokenizer has no end-of-text token to separate documents; retrain it with "
            "'<|endoftext|>' among its special tokens"
        )
    if isinstance(documents, str | os.PathLike):
        documents = Corpus(documents)
    if source is None:
        source = getattr(documents, "description", "documents")
    dtype = token_dtype(tokenizer.vocab_size)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"the shards folder {out} is a file; point shards_dir at a folder")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / _TMP_DIR
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
    tmp.mkdir()
    try:
        meta = _prepare_in(
            tmp,
            documents,
            tokenizer,
            eot=eot,
            dtype=dtype,
            val_fraction=val_fraction,
            val_tokens=val_tokens,
            shard_tokens=shard_tokens,
            seed=seed,
            num_workers=num_workers,
            progress=progress,
            source=source,
        )
        # publish: drop the old index first (from here the folder reads as "not prepared"),
        # then shards and tokenizer, then index.json last: its presence means "complete"
        (out / INDEX_FILE).unlink(missing_ok=True)
        keep = {s["file"] for split in meta["splits"].values() for s in split["shards"]}
        for old in [*out.glob("train_*.bin"), *out.glob("val_*.bin")]:
            if old.name not in keep:
                old.unlink()
        for name in sorted(keep):
            os.replace(tmp / name, out / name)
        tokenizer.save(out / TOKENIZER_FILE)
        _write_json_atomic(out / INDEX_FILE, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_shards(out)


def _prepare_in(
    tmp: Path,
    documents: Iterable[str],
    tokenizer: Tokenizer,
    *,
    eot: int,
    dtype: np.dtype,
    val_fraction: float,
    val_tokens: int | None,
    shard_tokens: int,
    seed: int,
    num_workers: int,
    progress: bool,
    source: str,
) -> dict[str, Any]:
    """Encode, split and write the shards into `tmp`; return the index contents."""
    # 1. encode every document into one staging file, remembering document lengths
    stream = tmp / "all.bin"
    lengths: list[np.ndarray] = []
    with open(stream, "wb") as f, _Progress(progress) as bar:
        for arrays in _encode(_batches(documents), tokenizer, num_workers):
            sizes = np.array([len(a) + 1 for a in arrays], dtype=np.int64)  # + eot
            ends = np.cumsum(sizes)
            flat = np.empty(int(ends[-1]), dtype=dtype)
            is_eot = np.zeros(len(flat), dtype=bool)
            is_eot[ends - 1] = True
            flat[is_eot] = eot
            flat[~is_eot] = np.concatenate(arrays)
            f.write(flat.tobytes())
            lengths.append(sizes)
            bar.update(len(arrays), len(flat))
    doc_len = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    total = int(doc_len.sum())
    if total == 0:
        raise DataError(f"corpus {source} has no documents with text; check the source")

    # 2. choose the val split
    target = int(val_tokens) if val_tokens is not None else int(round(val_fraction * total))
    if target >= total:
        raise DataError(
            f"a val split of {target} tokens would take the whole corpus ({total} tokens); "
            "lower val_tokens / val_fraction"
        )
    val_mask = choose_val_documents(doc_len, target, seed)

    # 3. copy ranges of the staging file into the split files
    staged = np.memmap(stream, dtype=dtype, mode="r")
    writers = {name: _SplitWriter(tmp, name, dtype, shard_tokens) for name in SPLITS}
    try:
        if val_mask is None:
            writers["train"].copy(staged, 0, total - target)
            writers["val"].copy(staged, total - target, total)
        else:
            ends = np.cumsum(doc_len)
            starts = ends - doc_len
            # runs of consecutive documents going to the same split: one copy per run
            cuts = np.flatnonzero(val_mask[1:] != val_mask[:-1]) + 1
            run_starts = np.concatenate([[0], cuts]).tolist()
            run_ends = np.concatenate([cuts, [len(doc_len)]]).tolist()
            for a, b in zip(run_starts, run_ends, strict=True):
                name = "val" if val_mask[a] else "train"
                writers[name].copy(staged, int(starts[a]), int(ends[b - 1]))
    finally:
        for w in writers.values():
            w.close()
        del staged  # release the mapping before the staging file is deleted

    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": eot,
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "kind": tokenizer.kind,
            "sha256": tokenizer.fingerprint(),
        },
        "source": source,
        "seed": seed,
        "val_fraction": val_fraction,
        "val_tokens_requested": val_tokens,
        "split_mode": "tokens" if val_mask is None else "documents",
        "documents": {
            "total": len(doc_len),
            "val": None if val_mask is None else int(val_mask.sum()),
        },
        "skipped_rows": getattr(documents, "skipped", 0),
        "shard_tokens": shard_tokens,
        "splits": {name: w.describe() for name, w in writers.items()},
    }


def choose_val_documents(doc_len: np.ndarray, target: int, seed: int) -> np.ndarray | None:
    """Which documents go to val (a bool mask), or None to split the token stream instead.

    Documents are taken in a seeded random order while they fit in `target` tokens, so val
    is close to the requested size and never larger. With few documents (or documents so
    big that val would get less than half of the target) whole documents cannot make a
    fair split: None asks for nanoGPT's split, the last `target` tokens.
    """
    n = len(doc_len)
    mask = np.zeros(n, dtype=bool)
    if target <= 0:
        return mask
    if n < MIN_DOCS_FOR_DOCUMENT_SPLIT:
        return None
    order = np.random.default_rng(seed).permutation(n)
    csum = np.cumsum(doc_len[order])
    k = int(np.searchsorted(csum, target, side="right"))  # order[:k] fit together
    mask[order[:k]] = True
    got = int(csum[k - 1]) if k else 0
    for j in order[k + 1 : k + 1 + 10_000].tolist():  # fill the gap with smaller documents
        if got >= target:
            break
        if got + doc_len[j] <= target:
            mask[j] = True
            got += int(doc_len[j])
    return mask if got * 2 >= target else None


def _batches(documents: Iterable[str]) -> Iterator[list[str]]:
    """Group documents into batches of bounded size; drop whitespace-only ones."""
    if isinstance(documents, bytes):
        raise DataError("documents must be text (str), got bytes; decode them first")
    batch: list[str] = []
    chars = 0
    for doc in documents:
        if not isinstance(doc, str):
            raise DataError(f"documents must be text (str), got {type(doc).__name__}")
        if not doc.strip():
            continue
        batch.append(doc)
        chars += len(doc)
        if chars >= _BATCH_CHARS or len(batch) >= _BATCH_DOCS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encode(
    batches: Iterator[list[str]], tokenizer: Tokenizer, num_workers: int
) -> Iterator[list[np.ndarray]]:
    """Encoded batches, in order; with workers, up to num_workers batches encode at once."""
    if num_workers <= 0:
        for b in batches:
            yield tokenizer.encode_batch_arrays(b)
        return
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        pending: deque = deque()
        for b in batches:
            pending.append(pool.submit(tokenizer.encode_batch_arrays, b))
            if len(pending) > num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _SplitWriter:
    """Appends tokens to <split>_0000.bin, <split>_0001.bin, ... of at most shard_tokens each."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.name, self.dtype, self.limit = folder, name, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file = None

    def _write(self, arr: np.ndarray) -> None:
        while len(arr):
            if self._file is None or self.shards[-1]["tokens"] == self.limit:
                self.close()
                name = f"{self.name}_{len(self.shards):04d}.bin"
                self._file = open(self.folder / name, "wb")
                self.shards.append({"file": name, "tokens": 0})
            room = self.limit - self.shards[-1]["tokens"]
            piece = arr[:room]
            self._file.write(np.ascontiguousarray(piece, dtype=self.dtype).tobytes())
            self.shards[-1]["tokens"] += len(piece)
            arr = arr[room:]

    def copy(self, source: np.ndarray, start: int, stop: int) -> None:
        for a in range(start, stop, _COPY_TOKENS):
            self._write(source[a : min(stop, a + _COPY_TOKENS)])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def describe(self) -> dict[str, Any]:
        return {"tokens": sum(s["tokens"] for s in self.shards), "shards": self.shards}


class _Progress:
    """A rich progress line on a terminal, a plain line every 10 s elsewhere, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.docs = self.tokens = 0
        self._rich = None
        self._t0 = self._last = time.perf_counter()

    def __enter__(self) -> _Progress:
        if not self.enabled:
            return self
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        if self.console.is_terminal:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._rich = Progress(
                SpinnerColumn(),
                TextColumn(
                    "encoding: {task.fields[docs]:,} documents, {task.completed:,.0f} tokens"
                ),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._rich.start()
            self._task = self._rich.add_task("encode", total=None, docs=0)
        return self

    def update(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        if self._rich is not None:
            self._rich.update(self._task, completed=self.tokens, docs=self.docs)
        elif self.enabled and time.perf_counter() - self._last > 10:
            self._last = time.perf_counter()
            self.console.print(f"encoding: {self.docs:,} documents, {self.tokens:,} tokens")

    def __exit__(self, *exc: Any) -> None:
        if self._rich is not None:
            self._rich.stop()
        if self.enabled and exc[0] is None:
            dt = time.perf_counter() - self._t0
            self.console.print(
                f"encoded {self.docs:,} documents into {self.tokens:,} tokens in {dt:.1f} s"
            )


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


# ---- load ----------------------------------------------------------------------------------
def load_shards(path: str | os.PathLike[str], block_size: int | None = None) -> ShardIndex:
    """Open a shard folder (or its index.json) read-only; check sizes, and block_size if given."""
    folder = Path(path)
    if folder.name == INDEX_FILE:
        folder = folder.parent
    index = folder / INDEX_FILE
    if not index.is_file():
        raise MissingFileError(
            f"no token shards in {folder} ({INDEX_FILE} missing); run `groundup prepare CONFIG` "
            "first"
        )
    try:
        meta = json.loads(index.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, not {FORMAT!r}")
        dtype = np.dtype(meta["dtype"])
        specs = {name: meta["splits"][name] for name in SPLITS}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(
            f"{index} is not a valid shard index ({e}); rerun `groundup prepare CONFIG`"
        ) from None
    if meta.get("version", 0) > FORMAT_VERSION:
        raise DataError(
            f"{index} has format version {meta['version']}, newer than this groundup reads "
            f"({FORMAT_VERSION}); upgrade groundup or rerun `groundup prepare CONFIG`"
        )
    arrays = {name: _open_split(folder, spec, dtype) for name, spec in specs.items()}
    shards = ShardIndex(path=folder, meta=meta, train=arrays["train"], val=arrays["val"])
    if block_size is not None:
        shards.check_block_size(block_size)
    return shards


def _open_split(folder: Path, spec: dict[str, Any], dtype: np.dtype) -> np.ndarray | TokenArray:
    parts = []
    for shard in spec["shards"]:
        file = folder / shard["file"]
        if not file.is_file():
            raise MissingFileError(
                f"shard {file} listed in {INDEX_FILE} is missing; rerun `groundup prepare CONFIG`"
            )
        size = file.stat().st_size
        if size != shard["tokens"] * dtype.itemsize:
            raise DataError(
                f"shard {file} holds {size // dtype.itemsize} tokens but {INDEX_FILE} says "
                f"{shard['tokens']}; the folder is inconsistent: rerun `groundup prepare CONFIG`"
            )
        if shard["tokens"]:
            parts.append(np.memmap(file, dtype=dtype, mode="r"))
    if not parts:
        return np.zeros(0, dtype=dtype)
    return parts[0] if len(parts) == 1 else TokenArray(parts)
