"""Tables from CSV/TSV/Parquet/NumPy files, cleaning and categorical encoding.

A `Table` is an ordered mapping of column name -> 1-D numpy array: numeric columns are float64
with NaN for missing values, the others object arrays of `str` with None for missing values.
Everything here is numpy only; pandas is not needed.

Leakage rule: anything *fitted* (imputation values, categories) is learned from the training
split only, so `CategoricalEncoder` (here) and `Imputer` (in preprocess.py) are fit/transform
objects that the pipeline applies after splitting. `clean_table` only does what is safe
before the split (bad rows, missing targets, duplicates, constant columns).
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from groundup.errors import ConfigError, DataError, DependencyError, MissingFileError
from groundup.registry import did_you_mean

# Compared lower-cased and stripped: "NA", "NaN", "NULL" are missing too.
MISSING_TOKENS = ("", "na", "n/a", "nan", "null", "?")
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".data")
_SUPPORTED = ".csv, .tsv, .txt, .data (optionally .gz), .parquet, .pq, .npy, .npz"
_MISSING_KEY = "\x00<missing>"  # stands for None where strings must be sorted


@dataclass
class Table:
    """Ordered columns of equal length; `bad_rows` counts rows skipped while loading."""

    columns: dict[str, np.ndarray]
    bad_rows: int = 0

    def __post_init__(self) -> None:
        cols = {}
        for name, values in self.columns.items():
            arr = np.asarray(values)
            if arr.ndim != 1:
                raise DataError(f"column '{name}' must be 1-D, got shape {arr.shape}")
            cols[str(name)] = _normalize_column(arr)
        lengths = {name: len(a) for name, a in cols.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"table columns have different lengths: {lengths}")
        self.columns = cols

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, name: str) -> np.ndarray:
        self.check_columns([name])
        return self.columns[name]

    def is_numeric(self, name: str) -> bool:
        return self[name].dtype.kind == "f"

    def check_columns(self, names: Sequence[str], what: str = "column") -> None:
        check_columns(self.names, names, what)

    def select(self, names: Sequence[str]) -> Table:
        self.check_columns(names)
        return Table._trusted({n: self.columns[n] for n in names}, self.bad_rows)

    def drop(self, names: Sequence[str]) -> Table:
        gone = set(names)
        kept = {n: a for n, a in self.columns.items() if n not in gone}
        return Table._trusted(kept, self.bad_rows)

    def take(self, rows: np.ndarray) -> Table:
        """Rows by index or boolean mask (fancy indexing copies, so the result is independent)."""
        return Table._trusted({n: a[rows] for n, a in self.columns.items()}, self.bad_rows)

    @classmethod
    def _trusted(cls, columns: dict[str, np.ndarray], bad_rows: int = 0) -> Table:
        # Columns that already went through _normalize_column: skip the per-value pass.
        table = object.__new__(cls)
        table.columns, table.bad_rows = columns, bad_rows
        return table


def check_columns(available: Sequence[str], names: Sequence[str], what: str = "column") -> None:
    """DataError naming the first absent column, the closest name and the available ones."""
    for name in names:
        if name not in available:
            raise DataError(
                f"{what} {name!r} not found{did_you_mean(str(name), available)}; "
                f"available columns: {', '.join(available)}"
            )


def _normalize_column(arr: np.ndarray) -> np.ndarray:
    """float64 (NaN = missing) for numbers, object array of str (None = missing) otherwise."""
    if arr.dtype.kind in "biuf":
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind in "US":
        out = np.empty(len(arr), dtype=object)
        out[:] = [str(v) for v in arr.tolist()]
        return out
    if arr.dtype.kind == "O":
        values = arr.tolist()
        # NaN inside an object array is missing too (v != v only for NaN).
        is_missing = [v is None or (isinstance(v, float) and v != v) for v in values]
        present = [v for v, m in zip(values, is_missing, strict=True) if not m]
        if present and all(isinstance(v, (int, float, np.number)) for v in present):
            return np.array(
                [np.nan if m else v for v, m in zip(values, is_missing, strict=True)], np.float64
            )
        out = np.empty(len(arr), dtype=object)
        out[:] = [None if m else str(v) for v, m in zip(values, is_missing, strict=True)]
        return out
    raise DataError(f"unsupported column dtype {arr.dtype}; use numbers or strings")


def missing_mask(col: np.ndarray) -> np.ndarray:
    """True where a column value is missing (NaN for numbers, None for strings)."""
    if col.dtype.kind == "f":
        return np.isnan(col)
    return np.equal(col, None)


def count_missing(table: Table) -> dict[str, int]:
    """Missing values per column, only for columns that have some."""
    counts = {n: int(missing_mask(a).sum()) for n, a in table.columns.items()}
    return {n: c for n, c in counts.items() if c}


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Cleaning (safe before the split: nothing here is fitted)
# ---------------------------------------------------------------------------------------------

MISSING_STRATEGIES = ("impute_mean", "impute_median", "impute_most_frequent", "drop", "error")


@dataclass
class CleaningReport:
    """What cleaning did; `values_imputed` is filled in by the pipeline after the split."""

    rows_in: int = 0
    rows_out: int = 0
    bad_rows_skipped: int = 0
    missing_target_dropped: int = 0
    missing_rows_dropped: int = 0
    duplicates_removed: int = 0
    constant_columns: list[str] = field(default_factory=list)
    values_imputed: int = 0
    imputed_columns: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()}

    def summary(self) -> str:
        parts = [f"{self.rows_out}/{self.rows_in} rows kept"]
        for label, n in (
            ("bad rows skipped", self.bad_rows_skipped),
            ("rows without target dropped", self.missing_target_dropped),
            ("rows with missing values dropped", self.missing_rows_dropped),
            ("duplicates removed", self.duplicates_removed),
            ("values imputed", self.values_imputed),
        ):
            if n:
                parts.append(f"{n} {label}")
        if self.constant_columns:
            parts.append(f"constant columns dropped: {', '.join(self.constant_columns)}")
        return "; ".join(parts)


def clean_table(
    table: Table,
    target: str | None,
    missing: str = "impute_mean",
    drop_duplicates: bool = True,
    drop_constant: bool = True,
) -> tuple[Table, CleaningReport]:
    """Drop rows without a target, handle missing features (drop/error), duplicates, constants.

    Imputation is deliberately *not* done here: its values must come from the training split,
    so `missing="impute_*"` leaves NaN/None for an `Imputer` fitted after splitting.
    """
    if missing not in MISSING_STRATEGIES:
        raise ConfigError(
            f"unknown missing strategy '{missing}'{did_you_mean(missing, MISSING_STRATEGIES)}; "
            f"valid: {', '.join(MISSING_STRATEGIES)}"
        )
    report = CleaningReport(rows_in=table.n_rows + table.bad_rows, bad_rows_skipped=table.bad_rows)
    if target is not None:
        table.check_columns([target], what="target column")
        no_target = missing_mask(table[target])
        report.missing_target_dropped = int(no_target.sum())
        table = table.take(~no_target)
    features = [n for n in table.names if n != target]
    if missing in ("drop", "error") and features:
        masks = np.stack([missing_mask(table[n]) for n in features], axis=1)  # (N, F)
        if masks.any():
            if missing == "error":
                counts = dict(zip(features, masks.sum(axis=0).tolist(), strict=True))
                found = ", ".join(f"'{n}': {c}" for n, c in counts.items() if c)
                raise DataError(
                    f"missing values in features ({found}); set missing: impute_mean, "
                    "impute_median, impute_most_frequent or drop"
                )
            bad = masks.any(axis=1)
            report.missing_rows_dropped = int(bad.sum())
            table = table.take(~bad)
    if drop_duplicates and table.n_rows > 1:
        codes = np.stack([_codes(table[n]) for n in table.names], axis=1)  # (N, C)
        _, first = np.unique(codes, axis=0, return_index=True)
        report.duplicates_removed = table.n_rows - len(first)
        if report.duplicates_removed:
            table = table.take(np.sort(first))  # keep first occurrences, in file order
    if drop_constant:
        constant = [n for n in features if _n_distinct(table[n]) <= 1]
        report.constant_columns = constant
        table = table.drop(constant)
    if table.n_rows == 0:
        raise DataError(f"no rows left after cleaning ({report.summary()}); check the data")
    report.rows_out = table.n_rows
    return table, report


def _codes(col: np.ndarray) -> np.ndarray:
    """Integer code per value (missing values share one code): rows compare as int vectors."""
    if col.dtype.kind != "f":
        col = np.where(np.equal(col, None), _MISSING_KEY, col).astype(str)
    return np.unique(col, return_inverse=True)[1].reshape(-1)


def _n_distinct(col: np.ndarray) -> int:
    present = col[~missing_mask(col)]
    return len(np.unique(present.astype(str) if col.dtype.kind != "f" else present))


# ---------------------------------------------------------------------------------------------
# Fitted transforms (fit on the training split only)
# ---------------------------------------------------------------------------------------------


def as_category_strings(col: np.ndarray) -> np.ndarray:
    """Object array of str/None; numbers print without a trailing '.0' (1.0 -> '1')."""
    if col.dtype.kind != "f":
        return col
    out = np.empty(len(col), dtype=object)
    out[:] = [
        None if v != v else (str(int(v)) if float(v).is_integer() else repr(v))
        for v in col.tolist()
    ]
    return out


class CategoricalEncoder:
    """Turn a feature Table into a float matrix: numbers pass through, strings are encoded.

    method="onehot": one column per category seen in training, named "column=category"; an
    unseen category (or a missing value) becomes all zeros. method="ordinal": the category's
    index in sorted order, -1 if unseen. unseen="error" raises DataError instead.
    """

    METHODS = ("onehot", "ordinal")

    def __init__(self, method: str = "onehot", unseen: str = "ignore") -> None:
        if method not in self.METHODS:
            raise ConfigError(
                f"unknown categorical encoding '{method}'{did_you_mean(method, self.METHODS)}; "
                f"valid: {', '.join(self.METHODS)}"
            )
        if unseen not in ("ignore", "error"):
            raise ConfigError(f"unseen must be 'ignore' or 'error', got {unseen!r}")
        self.method = method
        self.unseen = unseen
        self.columns_: list[str] = []
        self.categories_: dict[str, list[str]] = {}  # only the non-numeric columns

    def fit(self, table: Table) -> CategoricalEncoder:
        self.columns_ = table.names
        self.categories_ = {}
        for name, col in table.columns.items():
            if col.dtype.kind != "f":
                present = col[~missing_mask(col)].astype(str)
                self.categories_[name] = np.unique(present).tolist()
        return self

    @property
    def feature_names_(self) -> list[str]:
        names: list[str] = []
        for col in self.columns_:
            cats = self.categories_.get(col)
            if cats is not None and self.method == "onehot":
                names.extend(f"{col}={c}" for c in cats)
            else:
                names.append(col)
        return names

    def transform(self, table: Table) -> np.ndarray:
        """(N, F_out) float64 matrix in `feature_names_` order."""
        if not self.columns_:
            raise DataError("CategoricalEncoder is not fitted; call fit(training table) first")
        table.check_columns(self.columns_, what="feature column")
        n = table.n_rows
        out = np.zeros((n, len(self.feature_names_)), dtype=np.float64)
        pos = 0
        for name in self.columns_:
            col = table[name]
            cats = self.categories_.get(name)
            if cats is None:
                if col.dtype.kind != "f":
                    bad = [v for v in col[~missing_mask(col)][:3].tolist()]
                    raise DataError(
                        f"column '{name}' was numeric in the training data but holds text here "
                        f"(e.g. {bad}); fix those values"
                    )
                out[:, pos] = col
                pos += 1
                continue
            lookup = {c: i for i, c in enumerate(cats)}
            values = as_category_strings(col)
            codes = np.fromiter((lookup.get(v, -1) for v in values), dtype=np.int64, count=n)
            unseen = codes < 0
            if self.unseen == "error" and unseen.any():
                examples = sorted({str(v) for v in values[unseen][:5].tolist()})
                raise DataError(
                    f"column '{name}' has categories not seen in training: {examples}; "
                    "set unseen_category: ignore to encode them as all zeros"
                )
            if self.method == "onehot":
                rows = np.nonzero(~unseen)[0]
                out[rows, pos + codes[rows]] = 1.0
                pos += len(cats)
            else:
                out[:, pos] = codes
                pos += 1
        return out

    def fit_transform(self, table: Table) -> np.ndarray:
        return self.fit(table).transform(table)

    def state_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "unseen": self.unseen,
            "columns": list(self.columns_),
            "categories": {k: list(v) for k, v in self.categories_.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> CategoricalEncoder:
        self.__init__(state["method"], state["unseen"])
        self.columns_ = list(state["columns"])
        self.categories_ = {k: list(v) for k, v in state["categories"].items()}
        return self


class LabelEncoder:
    """Class labels (strings or integer-valued numbers) <-> codes 0..K-1, in sorted order."""

    def __init__(self) -> None:
        self.classes_: list[Any] = []

    def fit(self, y: np.ndarray) -> LabelEncoder:
        y = _normalize_column(np.asarray(y))
        present = y[~missing_mask(y)]
        if y.dtype.kind == "f":
            self.classes_ = [int(v) if v.is_integer() else v for v in np.unique(present).tolist()]
        else:
            self.classes_ = np.unique(present.astype(str)).tolist()
        return self

    @property
    def numeric(self) -> bool:
        return bool(self.classes_) and not isinstance(self.classes_[0], str)

    def transform(self, y: np.ndarray) -> np.ndarray:
        if not self.classes_:
            raise DataError("LabelEncoder is not fitted; call fit(labels) first")
        y = _normalize_column(np.asarray(y))
        if missing_mask(y).any():
            raise DataError("labels contain missing values; drop those rows first")
        if self.numeric:
            if y.dtype.kind != "f":
                raise DataError(f"labels must be numbers like the training ones, got e.g. {y[0]!r}")
            known = np.asarray(self.classes_, dtype=np.float64)
            codes = np.clip(np.searchsorted(known, y), 0, len(known) - 1)
            unseen = known[codes] != y
        else:
            lookup = {c: i for i, c in enumerate(self.classes_)}
            values = as_category_strings(y)
            codes = np.fromiter((lookup.get(v, -1) for v in values), np.int64, count=len(y))
            unseen = codes < 0
        if unseen.any():
            examples = sorted({str(v) for v in y[unseen][:5].tolist()})
            raise DataError(
                f"labels {examples} were not seen in training; known classes: "
                f"{', '.join(map(str, self.classes_))}"
            )
        return codes.astype(np.int64)

    def inverse_transform(self, codes: Any) -> np.ndarray:
        """Class names for codes (e.g. a model's argmax), as an object array."""
        names = np.empty(len(self.classes_), dtype=object)
        names[:] = self.classes_
        return names[np.asarray(codes, dtype=np.int64)]

    def state_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes_)}

    def load_state_dict(self, state: dict[str, Any]) -> LabelEncoder:
        self.classes_ = list(state["classes"])
        return self


MAX_AUTO_CLASSES = 50  # more distinct integer values than this reads as a regression target


def infer_task(y: np.ndarray) -> str:
    """'classification' for text or integer-valued targets with few values, else 'regression'."""
    y = _normalize_column(np.asarray(y))
    if y.dtype.kind != "f":
        return "classification"
    present = y[~np.isnan(y)]
    # inf is no class label (and np.mod(inf, 1) warns): such a target reads as regression
    integer = bool(np.all(np.isfinite(present)) and np.all(np.mod(present, 1) == 0))
    if integer and len(np.unique(present)) <= MAX_AUTO_CLASSES:
        return "classification"
    return "regression"
