"""Reading data files into a `Table`: CSV/TSV/TXT (optionally gzipped), Parquet, .npy/.npz.

`load_table` is the one entry point; it picks the reader from the file suffix and turns
every unreadable, damaged or malformed file into a DataError that says how to fix it.
Text cells are parsed to float64 (NaN for the MISSING_TOKENS) when a whole column is
numeric, else kept as str with None for missing values.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from groundup.data.tabular import Table, check_columns
from groundup.errors import ConfigError, DataError, DependencyError, MissingFileError

# Compared lower-cased and stripped: "NA", "NaN", "NULL" are missing too.
MISSING_TOKENS = ("", "na", "n/a", "nan", "null", "?")
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".data")
_SUPPORTED = ".csv, .tsv, .txt, .data (optionally .gz), .parquet, .pq, .npy, .npz"


def load_table(
    path: str | Path,
    columns: Sequence[str] | None = None,
    bad_rows: str = "fail",
    delimiter: str | None = None,
) -> Table:
    """Load CSV/TSV (header row; delimiter sniffed unless given), Parquet, .npy or .npz."""
    if bad_rows not in ("fail", "skip"):
        raise ConfigError(f"bad_rows must be 'fail' or 'skip', got {bad_rows!r}")
    if delimiter is not None and len(delimiter) != 1:
        raise ConfigError(f"delimiter must be one character, got {delimiter!r}")
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory; give a data file ({_SUPPORTED}) inside it")
    if not path.is_file():
        raise MissingFileError(f"data file not found: {path}; check the path")
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".gz" and len(suffixes) == 2:
        kind = suffixes[0]
    if kind in _TEXT_SUFFIXES:
        if kind == ".tsv" and delimiter is None:
            delimiter = "\t"
        table = _load_delimited(path, bad_rows, delimiter, columns)
    elif kind in (".parquet", ".pq"):
        table = _load_parquet(path, columns)
    elif kind in (".npy", ".npz"):
        table = _load_numpy(path)
    else:
        raise DataError(f"unsupported data file type '{path.name}'; supported: {_SUPPORTED}")
    if columns is not None:
        table.check_columns(columns)
        table = table.select(list(columns))
    if table.n_rows == 0 or not table.columns:
        raise DataError(f"{path} has no data rows; it needs a header row and at least one row")
    return table


def _open_text(path: Path) -> io.TextIOBase:
    # utf-8-sig strips the byte-order mark that spreadsheet programs write.
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig")
    return open(path, newline="", encoding="utf-8-sig")


def _sniff_delimiter(sample: str) -> str:
    # Cut at the last newline: a half line confuses the sniffer.
    cut = sample.rfind("\n")
    sample = sample[:cut] if cut > 0 else sample
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","  # one column, or too little text to tell


def _load_delimited(
    path: Path, bad_rows: str, delimiter: str | None, columns: Sequence[str] | None
) -> Table:
    try:
        with _open_text(path) as f:
            sample = f.read(65536)
            if not sample.strip():
                raise DataError(f"{path} is empty; it needs a header row and data rows")
            if delimiter is None:
                delimiter = _sniff_delimiter(sample)
            f.seek(0)
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader)
            rows = list(reader)  # fast path: one C loop
        width, skipped = len(header), 0
        if any(len(row) != width for row in rows):
            # Blank lines or bad rows: re-read row by row for exact line numbers.
            rows, skipped = _read_rows_checked(path, delimiter, width, bad_rows)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason}); save it as UTF-8 CSV") from e
    except csv.Error as e:
        raise DataError(f"{path} is not valid CSV: {e}") from e
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # EOFError: a .gz cut short
        raise DataError(f"cannot read {path}: {e}; the file is damaged, compress it again") from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file") from e
    # A quoted header may span lines ("price\n(USD)"): one line per name keeps messages whole.
    names = [" ".join(h.strip().splitlines()) or f"unnamed_{i}" for i, h in enumerate(header)]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: column '{name}' appears twice in the header; rename one")
        seen.add(name)
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    if columns is not None:
        check_columns(names, columns)
    wanted = set(names if columns is None else columns)
    # zip(*rows) transposes in C; parse only the columns asked for.
    cols = {
        n: _parse_column(v)
        for n, v in zip(names, zip(*rows, strict=True), strict=True)
        if n in wanted
    }
    return Table._trusted(cols, skipped)


def _read_rows_checked(
    path: Path, delimiter: str, width: int, bad_rows: str
) -> tuple[list[list[str]], int]:
    rows: list[list[str]] = []
    skipped = 0
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter)
        next(reader)
        for row in reader:
            if len(row) == width:
                rows.append(row)
            elif not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            elif bad_rows == "skip":
                skipped += 1
            else:
                raise DataError(
                    f"{path}: line {reader.line_num} has {len(row)} fields but the header "
                    f"has {width}; fix the row or set bad_rows: skip to drop such rows"
                )
    return rows, skipped


def _to_float(value: str) -> float:
    try:
        return float(value)  # accepts surrounding spaces, "nan", "inf", "1e3"
    except ValueError:
        if value.strip().lower() in MISSING_TOKENS:
            return np.nan
        raise


def _parse_column(values: Sequence[str]) -> np.ndarray:
    """float64 with NaN if every present value is a number, else object array of str/None."""
    n = len(values)
    # float() per value beats numpy's string parsing by ~5x; the first text value stops it.
    try:
        return np.fromiter(map(float, values), dtype=np.float64, count=n)
    except ValueError:
        pass
    try:
        return np.fromiter(map(_to_float, values), dtype=np.float64, count=n)  # with gaps
    except ValueError:
        out = np.empty(n, dtype=object)
        stripped = [v.strip() for v in values]
        out[:] = [None if v.lower() in MISSING_TOKENS else v for v in stripped]
        return out


def _load_parquet(path: Path, columns: Sequence[str] | None) -> Table:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DependencyError(
            "reading Parquet needs pyarrow: pip install 'groundup[parquet]'"
        ) from e
    try:
        if columns is not None:
            check_columns(pq.read_schema(path).names, columns)
        data = pq.read_table(path, columns=None if columns is None else list(columns))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read {path} as Parquet: {e}") from e
    cols: dict[str, np.ndarray] = {}
    for name, col in zip(data.column_names, data.columns, strict=True):
        t = col.type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            cols[name] = col.cast(pa.float64()).to_numpy()  # nulls become NaN
        else:
            values = col.to_pylist()
            arr = np.empty(len(values), dtype=object)
            arr[:] = [None if v is None else str(v) for v in values]
            cols[name] = arr
    return Table(cols)


def _load_numpy(path: Path) -> Table:
    npz = path.suffix.lower() == ".npz"
    with open(path, "rb") as f:
        magic = f.read(6)
    # Trap: np.load reads any file that is not .npy/.npz as a pickle, so garbage bytes get
    # "contains pickled (object) data": check the magic bytes to name the real problem.
    saver = "numpy.savez" if npz else "numpy.save"
    if magic[: 2 if npz else 6] != (b"PK" if npz else b"\x93NUMPY"):
        raise DataError(f"{path} is not a NumPy {path.suffix} file; write it with {saver}")
    try:
        loaded = np.load(path, allow_pickle=False)
        arrays = dict(loaded.items()) if npz else {"x": loaded}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(
            f"cannot read {path}: {e}; save plain numeric or string arrays (no Python objects)"
        ) from e
    except Exception as e:  # numpy's header parser raises SyntaxError, TokenError, ...
        raise DataError(
            f"cannot read {path}: its NumPy header is damaged ({type(e).__name__}); "
            f"write it again with {saver}"
        ) from e
    cols: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        if arr.dtype.names:  # structured array: one column per field
            cols.update({f: arr[f] for f in arr.dtype.names})
        elif arr.ndim == 1:
            cols[name] = arr
        elif arr.ndim == 2:
            cols.update({f"{name}{j}": arr[:, j] for j in range(arr.shape[1])})  # (N, F) -> F
        else:
            raise DataError(
                f"{path}: array '{name}' has shape {arr.shape}; tables need 1-D or 2-D arrays "
                "(reshape images to (N, features) first)"
            )
    lengths = {n: len(a) for n, a in cols.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{path}: arrays have different numbers of rows: {lengths}")
    return Table(cols)
