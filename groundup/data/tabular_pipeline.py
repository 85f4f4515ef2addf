"""The tabular pipeline: load -> clean -> split -> impute -> encode -> normalize.

Order matters for leakage: only what needs no statistics (bad rows, missing targets,
duplicates, constant columns) happens before the split; imputation values, categories and
normalization statistics are fitted on the training split, then applied to all three. The
fitted pieces travel together as a `Preprocessor` that saves to JSON, so `evaluate` and
`predict` apply exactly the same transformation to new files.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from groundup.data.builtin import load_dataset
from groundup.data.preprocess import Imputer, Normalizer, split_indices
from groundup.data.tabular import (
    MISSING_STRATEGIES,
    CategoricalEncoder,
    CleaningReport,
    LabelEncoder,
    Table,
    as_category_strings,
    clean_table,
    count_missing,
    infer_task,
)
from groundup.data.tabular_readers import MISSING_TOKENS, load_table
from groundup.errors import ConfigError, DataError, MissingFileError
from groundup.registry import did_you_mean

TASKS = ("auto", "classification", "regression")
PREPROCESSOR_VERSION = 1


@dataclass
class TabularDataConfig:
    """Where the data comes from and how it is prepared; exactly one of `dataset` or `path`."""

    dataset: str | None = None  # a built-in dataset: digits, iris, wine, breast_cancer
    path: str | None = None  # CSV/TSV/Parquet/.npy/.npz file
    target: str | None = None  # target column; built-in datasets call it "target"
    task: str = "auto"  # auto, classification, regression
    features: list[str] | None = None  # None: every column but the target
    test_size: float = 0.2
    val_size: float = 0.1
    stratify: bool = True
    seed: int = 0
    normalize: str = "standard"  # standard, minmax, none
    missing: str = "impute_mean"  # impute_mean, impute_median, impute_most_frequent, drop, error
    drop_duplicates: bool = True
    drop_constant: bool = True
    categorical: str = "onehot"  # onehot, ordinal
    unseen_category: str = "ignore"  # ignore (all-zero one-hot / -1), error
    bad_rows: str = "fail"  # fail, skip
    delimiter: str | None = None  # CSV delimiter; None sniffs it

    def __post_init__(self) -> None:
        self.validate(require_source=False)

    def validate(self, require_source: bool = True) -> None:
        """ConfigError for a bad value; `require_source` also checks dataset/path/target."""
        choices = {
            "task": (self.task, TASKS),
            "normalize": (self.normalize, Normalizer.METHODS),
            "missing": (self.missing, MISSING_STRATEGIES),
            "categorical": (self.categorical, CategoricalEncoder.METHODS),
            "unseen_category": (self.unseen_category, ("ignore", "error")),
            "bad_rows": (self.bad_rows, ("fail", "skip")),
        }
        for key, (value, valid) in choices.items():
            if value not in valid:
                raise ConfigError(
                    f"data.{key} {value!r} is not valid{did_you_mean(str(value), valid)}; "
                    f"choose one of: {', '.join(valid)}"
                )
        for key in ("test_size", "val_size"):
            size = getattr(self, key)
            if isinstance(size, bool) or not isinstance(size, (int, float)):
                raise ConfigError(f"data.{key} must be a number, got {size!r}")
            if not 0.0 <= size < 1.0:
                raise ConfigError(f"data.{key} must be in [0, 1), got {size}")
        if self.test_size + self.val_size >= 1.0:
            raise ConfigError(
                f"data.test_size + data.val_size must be < 1, got {self.test_size} + "
                f"{self.val_size}; lower one of them"
            )
        if require_source:
            if (self.dataset is None) == (self.path is None):
                raise ConfigError(
                    "set exactly one of data.dataset (a built-in name, e.g. digits) or "
                    "data.path (a CSV/Parquet/NumPy file)"
                )
            if self.path is not None and not self.target:
                raise ConfigError(f"data.target is required with data.path={self.path}")


class Preprocessor:
    """The fitted transformation from raw columns to model inputs (and targets).

    Apply it to new data with `transform`; persist it with `save` / `load` (plain JSON).
    """

    def __init__(
        self,
        target: str | None,
        task: str,
        features: list[str],
        imputer: Imputer | None,
        encoder: CategoricalEncoder,
        normalizer: Normalizer,
        labels: LabelEncoder | None = None,
        class_names: list[Any] | None = None,
        input_columns: list[str] | None = None,
    ) -> None:
        self.target, self.task, self.features = target, task, list(features)
        # the feature columns of the training file before cleaning dropped constant ones: what
        # a bare (N, F) NumPy array of new rows lines up with (None in runs saved before it)
        self.input_columns = None if input_columns is None else list(input_columns)
        self.imputer, self.encoder, self.normalizer, self.labels = (
            imputer,
            encoder,
            normalizer,
            labels,
        )
        if class_names is None and labels is not None:
            class_names = list(labels.classes_)
        self.class_names = class_names

    @property
    def feature_names(self) -> list[str]:
        """Names of the model's input columns (after one-hot expansion)."""
        return self.encoder.feature_names_

    def transform_x(self, table: Table, unseen: str | None = None) -> np.ndarray:
        """(N, n_features) float32 model inputs for the feature columns of `table`.

        `unseen` overrides the run's unseen-category rule ("ignore": all-zero one-hot, -1
        ordinal; "error"); None keeps the rule the run was trained with."""
        table.check_columns(self.features, what="feature column")
        part = table.select(self.features)
        if self.imputer is not None:
            part = self.imputer.transform(part)
        encoder = self.encoder
        if unseen is not None and unseen != encoder.unseen:
            encoder = copy.copy(encoder)
            encoder.unseen = unseen
        x = encoder.transform(part)
        _check_finite(x, self.feature_names, "x")
        return self.normalizer.transform(x).astype(np.float32)

    def conform(self, table: Table, unseen: str = "error", source: str = "the data") -> Table:
        """New rows checked against what the run was trained on, before any work is done.

        Every feature column must be there (extra columns are ignored, the target is
        optional); a number column must hold numbers (text that parses is converted, as a
        CSV reader would); a missing value needs the run's imputer; a category the training
        split never had is an error with `unseen="error"`, and with "ignore" is encoded as
        the run encodes unseen values (all-zero one-hot, -1 ordinal). A bare (N, F) NumPy
        array (columns x0..x{F-1}) is matched to the features by position. Returns the
        feature (and target) columns, ready for `transform_x`; `source` names the data in
        errors, rows are counted from 1 (header excluded)."""
        if unseen not in ("error", "ignore"):
            raise ConfigError(f"unseen_category must be 'error' or 'ignore', got {unseen!r}")
        table = self._line_up_array(table)
        absent = [n for n in self.features if n not in table.columns]
        if absent:
            hints = "".join(did_you_mean(n, table.names) for n in absent[:1])
            raise DataError(
                f"{source} lacks the column(s) {', '.join(map(repr, absent))}{hints} that the "
                f"run was trained on; it needs: {', '.join(self.features)} (the target "
                f"'{self.target}' is optional, other columns are ignored)"
            )
        cols = {}
        for name in self.features:
            cats = self.encoder.categories_.get(name)
            if cats is None:
                cols[name] = self._check_numbers(name, table[name], source)
            else:
                self._check_categories(name, table[name], cats, unseen, source)
                cols[name] = table[name]
        if self.target is not None and self.target in table.columns:
            cols[self.target] = table[self.target]
        return Table._trusted(cols, table.bad_rows)

    def _line_up_array(self, table: Table) -> Table:
        """A NumPy (N, F) array's columns x0.. renamed to the features, when F fits."""
        names = table.names
        if any(n in table.columns for n in self.features):
            return table
        if names != [f"x{j}" for j in range(len(names))]:
            return table
        for wanted in (self.input_columns, self.features):
            if wanted is not None and len(wanted) == len(names):
                cols = dict(zip(wanted, table.columns.values(), strict=True))
                return Table._trusted(cols, table.bad_rows)
        return table

    def _check_numbers(self, name: str, col: np.ndarray, source: str) -> np.ndarray:
        """float64 values of a number column; the first bad cell is an error naming it."""
        if col.dtype.kind != "f":
            values = np.full(len(col), np.nan)
            for i, v in enumerate(col.tolist()):
                if v is None or v.strip().lower() in MISSING_TOKENS:
                    continue
                try:
                    values[i] = float(v)
                except ValueError:
                    raise DataError(
                        f"{source}: column '{name}' row {i + 1} holds {v!r}, not a number; the "
                        "run was trained on numbers there: fix the value"
                    ) from None
            col = values
        bad = np.isinf(col)
        if self.imputer is None:
            bad |= np.isnan(col)
        if bad.any():
            i = int(np.argmax(bad))
            what = "is empty" if np.isnan(col[i]) else f"holds {col[i]}"
            raise DataError(f"{source}: column '{name}' row {i + 1} {what}; {self._fill_hint()}")
        return col

    def _check_categories(
        self, name: str, col: np.ndarray, cats: list[str], unseen: str, source: str
    ) -> None:
        values = as_category_strings(col)
        missing = np.equal(values, None)
        if self.imputer is None and missing.any():
            i = int(np.argmax(missing))
            raise DataError(f"{source}: column '{name}' row {i + 1} is empty; {self._fill_hint()}")
        if unseen == "ignore":
            return
        known = set(cats)
        new = [i for i, v in enumerate(values.tolist()) if v is not None and v not in known]
        if new:
            i = new[0]
            shown = ", ".join(cats[:10]) + (" ..." if len(cats) > 10 else "")
            encoded = "all-zero one-hot" if self.encoder.method == "onehot" else "-1 (ordinal)"
            raise DataError(
                f"{source}: column '{name}' row {i + 1} holds {values[i]!r}, a category the "
                f"training data never had ({len(new)} row(s) like it; known: {shown}); fix the "
                f"value, or pass unseen_category='ignore' (--unseen-category ignore) to encode "
                f"unseen categories as {encoded}, as the run encoded its test split"
            )

    def _fill_hint(self) -> str:
        return (
            "the run has no fill value for missing or infinite values (it was trained with "
            "data.missing drop/error); fill it in or remove the row"
            if self.imputer is None
            else "replace infinite values with numbers, or leave the cell empty to impute it"
        )

    def transform_y(self, table: Table) -> np.ndarray:
        """int64 class ids (classification) or float32 values (regression) of the target."""
        if self.target is None:
            raise DataError("this preprocessor has no target column")
        y = table[self.target]
        if self.labels is not None:
            if self.labels.numeric and y.dtype.kind != "f" and self.class_names:
                # a built-in dataset's run knows its classes by name too (iris: setosa, ...)
                y = self._values_of_names(y)
            return self.labels.transform(y)
        if y.dtype.kind != "f":
            raise DataError(f"target '{self.target}' must be numeric for regression")
        _check_finite(y[:, None], [self.target], "y")
        return y.astype(np.float32)

    def _values_of_names(self, y: np.ndarray) -> np.ndarray:
        """The label values (0, 1, ...) of class names; a value that is neither is named."""
        assert self.labels is not None and self.class_names is not None
        lookup = {str(n): v for n, v in zip(self.class_names, self.labels.classes_, strict=True)}
        lookup.update({str(v): v for v in self.labels.classes_})
        out = np.full(len(y), np.nan)
        for i, v in enumerate(y.tolist()):
            if v is not None:
                if v not in lookup:
                    raise DataError(
                        f"target '{self.target}' row {i + 1} holds {v!r}, not a class of the "
                        f"run (classes: {', '.join(map(str, self.class_names))})"
                    )
                out[i] = lookup[v]
        return out

    def transform(self, data: Table | str | Path) -> tuple[np.ndarray, np.ndarray | None]:
        """(x, y) for new data; y is None when the target column is absent (prediction)."""
        table = data if isinstance(data, Table) else load_table(data)
        x = self.transform_x(table)
        has_target = self.target is not None and self.target in table.columns
        return x, (self.transform_y(table) if has_target else None)

    def decode(self, codes: Any) -> np.ndarray:
        """Class names for predicted class ids (classification only)."""
        if self.class_names is None:
            raise DataError("decode needs a classification preprocessor")
        names = np.empty(len(self.class_names), dtype=object)
        names[:] = self.class_names
        return names[np.asarray(codes, dtype=np.int64)]

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly state (lists, strings, numbers)."""
        return {
            "version": PREPROCESSOR_VERSION,
            "target": self.target,
            "task": self.task,
            "features": list(self.features),
            "imputer": None if self.imputer is None else self.imputer.state_dict(),
            "encoder": self.encoder.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "labels": None if self.labels is None else self.labels.state_dict(),
            "class_names": self.class_names,
            "input_columns": self.input_columns,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Preprocessor:
        if state.get("version") != PREPROCESSOR_VERSION:
            raise DataError(
                f"preprocessor state has version {state.get('version')!r}, expected "
                f"{PREPROCESSOR_VERSION}; re-run training to save a current one"
            )
        imputer = None if state["imputer"] is None else Imputer().load_state_dict(state["imputer"])
        labels = (
            None if state["labels"] is None else LabelEncoder().load_state_dict(state["labels"])
        )
        return cls(
            target=state["target"],
            task=state["task"],
            features=state["features"],
            imputer=imputer,
            encoder=CategoricalEncoder().load_state_dict(state["encoder"]),
            normalizer=Normalizer().load_state_dict(state["normalizer"]),
            labels=labels,
            class_names=state["class_names"],
            input_columns=state.get("input_columns"),  # absent in runs saved before it
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.state_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Preprocessor:
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"preprocessor file not found: {path}")
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e}); it is damaged") from e
        return cls.from_state_dict(state)


@dataclass
class TabularData:
    """The prepared splits; an empty split (val_size=0) has 0 rows, not None.

    `preprocessor` is the fitted transformation as a JSON-ready dict (save it beside the
    model; `Preprocessor.from_state_dict` brings it back); `fitted` is the live object.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]
    classes: list[Any] | None
    task: str
    normalizer: Normalizer
    report: CleaningReport
    preprocessor: dict[str, Any]
    fitted: Preprocessor

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def transform_new(self, data: Table | str | Path) -> tuple[np.ndarray, np.ndarray | None]:
        """(x, y) for new rows, preprocessed exactly like the training data (y None if absent)."""
        return self.fitted.transform(data)


def prepare_tabular(cfg: TabularDataConfig) -> TabularData:
    """Run the whole pipeline for `cfg` and return train/val/test arrays plus fitted state."""
    cfg.validate()
    table, target, class_names = _load(cfg)
    features = list(cfg.features) if cfg.features else [n for n in table.names if n != target]
    input_columns = list(features)
    table.check_columns([target], what="target column")
    table.check_columns(features, what="feature column")
    if target in features:
        raise ConfigError(f"target '{target}' is also listed in data.features; remove it there")
    table, report = clean_table(
        table.select([*features, target]),
        target,
        missing=cfg.missing,
        drop_duplicates=cfg.drop_duplicates,
        drop_constant=cfg.drop_constant,
    )
    features = [n for n in features if n in table.columns]
    if not features:
        raise DataError(
            f"no feature column left after cleaning ({report.summary()}); "
            "choose other features or set drop_constant: false"
        )

    y_col = table[target]
    task = infer_task(y_col) if cfg.task == "auto" else cfg.task
    labels = None
    if task == "classification":
        labels = LabelEncoder().fit(y_col)
        if len(labels.classes_) < 2:
            raise DataError(
                f"target '{target}' has a single class ({labels.classes_[0]!r}); "
                "classification needs at least two"
            )
        y = labels.transform(y_col)
        if class_names is not None:  # built-in: the dataset's names for ids 0..K-1
            class_names = [class_names[int(c)] for c in labels.classes_]
    else:
        class_names = None
        if y_col.dtype.kind != "f":
            raise DataError(
                f"target '{target}' holds text, so it cannot be a regression target; "
                "set task: classification"
            )
        y = y_col.astype(np.float32)

    idx = split_indices(
        table.n_rows,
        y_col if task == "classification" else None,  # raw labels: errors name the class
        test_size=cfg.test_size,
        val_size=cfg.val_size,
        stratify=cfg.stratify,
        seed=cfg.seed,
    )
    names = ("train", "val", "test")
    x_table = table.select(features)
    parts = {name: x_table.take(i) for name, i in zip(names, idx, strict=True)}

    imputer = None
    if cfg.missing.startswith("impute_"):
        imputer = Imputer(cfg.missing).fit(parts["train"])  # training rows only
        for part in parts.values():
            for col, n in count_missing(part).items():
                report.imputed_columns[col] = report.imputed_columns.get(col, 0) + n
        report.values_imputed = sum(report.imputed_columns.values())
        parts = {k: imputer.transform(v) for k, v in parts.items()}

    encoder = CategoricalEncoder(cfg.categorical, cfg.unseen_category).fit(parts["train"])
    report.encoding = cfg.categorical
    report.encoded_columns = {
        col: len(cats) if cfg.categorical == "onehot" else 1
        for col, cats in encoder.categories_.items()
    }
    mats = {k: encoder.transform(v) for k, v in parts.items()}
    for name, mat in mats.items():
        _check_finite(mat, encoder.feature_names_, f"x_{name}")
    normalizer = Normalizer(cfg.normalize).fit(mats["train"])
    xs = {k: normalizer.transform(m).astype(np.float32) for k, m in mats.items()}
    ys = {k: y[i] for k, i in zip(names, idx, strict=True)}
    if task == "regression":
        _check_finite(y[:, None], [target], "y")

    pre = Preprocessor(
        target, task, features, imputer, encoder, normalizer, labels, class_names, input_columns
    )
    return TabularData(
        x_train=xs["train"],
        y_train=ys["train"],
        x_val=xs["val"],
        y_val=ys["val"],
        x_test=xs["test"],
        y_test=ys["test"],
        feature_names=encoder.feature_names_,
        classes=pre.class_names if task == "classification" else None,
        task=task,
        normalizer=normalizer,
        report=report,
        preprocessor=pre.state_dict(),
        fitted=pre,
    )


def load_rows(path: str | Path) -> Table:
    """New rows to predict or evaluate: what `load_table` reads (CSV/TSV, Parquet, NumPy), or
    a JSONL file of one object per row (a key a line lacks is a missing value)."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        return load_table(path)
    if not path.is_file():
        raise MissingFileError(f"data file not found: {path}; check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason}); save it as UTF-8") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    # Trap: str.splitlines also splits on U+2028, which JSON strings may hold raw.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path} line {lineno}: invalid JSON ({e.msg} at column {e.colno}); write one "
                "JSON object per line"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{path} line {lineno}: expected a JSON object of column values, got "
                f"{type(obj).__name__}"
            )
        for key, value in obj.items():
            if isinstance(value, (dict, list)):
                raise DataError(
                    f"{path} line {lineno}: '{key}' holds a {type(value).__name__}; a row holds "
                    "plain numbers, strings or null"
                )
        rows.append((lineno, obj))
    if not rows:
        raise DataError(f"{path} has no rows; write one JSON object per line")
    names = list(dict.fromkeys(k for _, obj in rows for k in obj))
    cols = {}
    for name in names:
        col = np.empty(len(rows), dtype=object)
        col[:] = [obj.get(name) for _, obj in rows]
        cols[name] = col
    return Table(cols)


def _load(cfg: TabularDataConfig) -> tuple[Table, str, list[Any] | None]:
    """(table, target column, class names or None) for a built-in dataset or a file."""
    if cfg.dataset is not None:
        x, y, info = load_dataset(cfg.dataset)
        cols = {name: x[:, j] for j, name in enumerate(info.feature_names)}
        cols["target"] = y
        return Table(cols), cfg.target or "target", list(info.classes)
    assert cfg.path is not None and cfg.target is not None  # validate() guarantees both
    table = load_table(cfg.path, bad_rows=cfg.bad_rows, delimiter=cfg.delimiter)
    return table, cfg.target, None


def _check_finite(x: np.ndarray, names: list[str], label: str) -> None:
    """The pipeline must hand out no NaN/Inf: imputation or dropping removed the missing."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return
    per_col = bad.sum(axis=0)
    cols = [f"'{names[j]}': {int(per_col[j])}" for j in np.nonzero(per_col)[0][:5]]
    first = int(np.nonzero(bad.any(axis=1))[0][0])
    raise DataError(
        f"{label} has {int(bad.sum())} NaN/infinite values after preprocessing (first at row "
        f"{first}; {', '.join(cols)}); replace infinite values in the data, or use "
        "missing: impute_mean / drop for missing ones"
    )
