"""Text corpora: one iterator of documents over files, folders, JSONL, Parquet and builtins.

A `Corpus` can be iterated several times (train the tokenizer, then encode the shards) and
counts what it read. Documents come out in a fixed order (folders sorted by path, builtin
topics sorted by name), so the same source always gives the same token shards.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from groundup.errors import ConfigError, DataError, DependencyError, MissingFileError
from groundup.registry import did_you_mean

TEXT_SUFFIXES = (".txt", ".md")
SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")
BAD_ROWS = ("error", "skip")


def _pydocs() -> Iterator[str]:
    """Python's bundled documentation topics (~460 KB of English prose, ships with Python)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some Linux distributions split it out of the base package
        raise DependencyError(
            "the builtin corpus 'pydocs' needs the pydoc_data module, missing from this "
            "Python; install your distribution's python3 documentation package or use "
            "your own text files"
        ) from None
    for key in sorted(topics):
        yield topics[key]


def _stdlib_docs() -> Iterator[str]:
    """pydocs, then the standard library's docstrings ("json.dumps: Serialize obj to ..."),
    without the objects held out for the evaluation tasks: ~1 MB, on every Python."""
    from groundup.data.text_builtin import stdlib_docstring_documents

    yield from _pydocs()
    yield from stdlib_docstring_documents()


BUILTIN_CORPORA: dict[str, Callable[[], Iterator[str]]] = {
    "pydocs": _pydocs,
    "stdlib-docs": _stdlib_docs,
}


class Corpus:
    """An iterable of documents (str) read from `source`.

    source: a .txt/.md file (the whole file is one document), a .jsonl file (one document
    per line, from `text_field`), a .parquet file (the `text_field` column), a folder
    (its files of those types, recursively, sorted by path; hidden ones skipped), or a
    builtin name ("pydocs", "stdlib-docs"; a local folder of that name is "./pydocs"). Whitespace-only
    documents are dropped. bad_rows="error"
    raises DataError on a bad JSONL line or missing value; "skip" counts it in `skipped`.
    After an iteration, `documents`, `skipped` and `chars` hold what that pass read.
    """

    def __init__(
        self, source: str | os.PathLike[str], text_field: str = "text", bad_rows: str = "error"
    ) -> None:
        if bad_rows not in BAD_ROWS:
            raise ConfigError(
                f"bad_rows must be one of {', '.join(BAD_ROWS)}, got {bad_rows!r}"
                f"{did_you_mean(str(bad_rows), BAD_ROWS)}"
            )
        self.source = source
        self.text_field = text_field
        self.bad_rows = bad_rows
        self.documents = 0
        self.skipped = 0
        self.chars = 0
        self.files = self._resolve()  # checked now, so a wrong path fails before any work

    def _resolve(self) -> list[Path] | None:
        """The files to read (None for a builtin corpus)."""
        name = str(self.source)
        path = Path(self.source)
        if name.lower() in BUILTIN_CORPORA:
            # A bare builtin name always means the builtin, even if the working directory holds
            # a folder of that name (a run directory, say); reach such a folder as ./pydocs.
            return None
        if not path.exists():
            raise MissingFileError(
                f"corpus source {name!r} not found{did_you_mean(name, BUILTIN_CORPORA)}; "
                f"give a file ({', '.join(SUFFIXES)}), a folder of them, or a builtin "
                f"corpus ({', '.join(BUILTIN_CORPORA)})"
            )
        if path.is_dir():
            files = sorted(
                (
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                ),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if not files:
                raise DataError(
                    f"folder {path} has no {', '.join(SUFFIXES)} files; put the corpus text "
                    "in such files or point the source at one"
                )
            return files
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(
                f"cannot read {path}: unsupported file type {path.suffix!r}; use one of "
                f"{', '.join(SUFFIXES)}"
            )
        return [path]

    @property
    def description(self) -> str:
        """A short text naming the source, recorded in the shard index."""
        if self.files is None:
            name = str(self.source).lower()
            return f"builtin:{name} (Python {sys.version_info.major}.{sys.version_info.minor})"
        return str(Path(self.source).resolve())

    def __iter__(self) -> Iterator[str]:
        self.documents = self.skipped = self.chars = 0
        parts = (
            [BUILTIN_CORPORA[str(self.source).lower()]()]
            if self.files is None
            else [self._read(p) for p in self.files]
        )
        for part in parts:
            for doc in part:
                if not doc.strip():
                    continue
                self.documents += 1
                self.chars += len(doc)
                yield doc
        if self.documents == 0:
            raise DataError(
                f"corpus {self.description} is empty (no document with text"
                f"{f', {self.skipped} bad rows skipped' if self.skipped else ''}); "
                "point the source at files that hold text"
            )

    # ---- readers -----------------------------------------------------------------------
    def _read(self, path: Path) -> Iterator[str]:
        # a generator: a file is opened only when the iteration reaches it
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            yield _read_text(path)
        elif suffix == ".jsonl":
            yield from self._read_jsonl(path)
        else:
            yield from self._read_parquet(path)

    def _bad(self, message: str) -> None:
        if self.bad_rows == "error":
            raise DataError(f"{message}; fix the data or set bad_rows='skip' to skip such rows")
        self.skipped += 1

    def _read_jsonl(self, path: Path) -> Iterator[str]:
        field = self.text_field
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(_lines(f, path), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    self._bad(f"{path}:{lineno}: invalid JSON ({e.msg})")
                    continue
                except ValueError:  # Trap: json raises plain ValueError past 4300 digits
                    self._bad(f"{path}:{lineno}: a number has more than 4300 digits")
                    continue
                except RecursionError:
                    self._bad(f"{path}:{lineno}: JSON nested too deeply")
                    continue
                if not isinstance(row, dict) or field not in row:
                    keys = ", ".join(map(str, row)) if isinstance(row, dict) else "not an object"
                    self._bad(f"{path}:{lineno}: no {field!r} field (keys: {keys})")
                    continue
                text = row[field]
                if not isinstance(text, str):
                    self._bad(
                        f"{path}:{lineno}: field {field!r} is {type(text).__name__}, not text"
                    )
                    continue
                yield text

    def _read_parquet(self, path: Path) -> Iterator[str]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DependencyError(
                f"reading {path} needs pyarrow; pip install pyarrow (or 'groundup[parquet]')"
            ) from None
        pf = pq.ParquetFile(path)
        columns = pf.schema_arrow.names
        if self.text_field not in columns:
            raise DataError(
                f"{path} has no column {self.text_field!r}{did_you_mean(self.text_field, columns)}"
                f"; columns: {', '.join(columns)}; set text_field to the text column"
            )
        row = 0
        for batch in pf.iter_batches(columns=[self.text_field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                row += 1
                if not isinstance(text, str):
                    what = "empty (null)" if text is None else type(text).__name__
                    self._bad(f"{path}: row {row}: column {self.text_field!r} is {what}")
                    continue
                yield text


def _lines(f, path: Path) -> Iterator[str]:
    """Lines of a text file, with a DataError (not a traceback) on bytes that are not UTF-8."""
    try:
        yield from f
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 ({e.reason}); convert it to UTF-8") from None


def _read_text(path: Path) -> str:
    try:
        # newline=None (the default): "\r\n" becomes "\n", as nanoGPT reads its text
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 (byte {e.start}: {e.reason}); convert it to UTF-8"
        ) from None


def iter_documents(
    source: str | os.PathLike[str], text_field: str = "text", bad_rows: str = "error"
) -> Iterator[str]:
    """Iterate the documents of `source` once (see `Corpus` for the sources and options)."""
    return iter(Corpus(source, text_field=text_field, bad_rows=bad_rows))
