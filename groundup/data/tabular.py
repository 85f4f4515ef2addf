"""The `Table` type, cleaning and categorical/label encoding (reading files: tabular_readers).

A `Table` is an ordered mapping of column name -> 1-D numpy array: numeric columns are float64
with NaN for missing values, the others object arrays of `str` with None for missing values.
Everything here is numpy only; pandas is not needed.

Leakage rule: anything *fitted* (imputation values, categories) is learned from the training
split only, so `CategoricalEncoder` (here) and `Imputer` (in preprocess.py) are fit/transform
objects that the pipeline applies after splitting. `clean_table` only does what is safe
before the split (bad rows, missing targets, duplicates, constant columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from groundup.errors import ConfigError, DataError
from groundup.registry import did_you_mean

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
    # text columns turned into numbers: column -> the model's columns it became (one-hot), or 1
    encoded_columns: dict[str, int] = field(default_factory=dict)
    encoding: str = ""

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
        if self.encoded_columns:
            shown = ", ".join(f"{c} -> {n}" for c, n in self.encoded_columns.items())
            parts.append(f"{self.encoding}-encoded: {shown}")
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
