"""Fitted preprocessing (Imputer, Normalizer), seeded train/val/test splits, array checks.

Every statistic here is learned by `fit` on the training split and only applied to the
validation and test splits: fitting on all the data would leak the test set into training.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from groundup.data.tabular import Table, missing_mask
from groundup.errors import ConfigError, DataError, ShapeError
from groundup.registry import did_you_mean


class Imputer:
    """Fill missing values with per-column statistics learned by `fit` on training data.

    Works on a `Table` (numeric columns get the mean/median/most frequent value; string
    columns always get their most frequent value) or on a 2-D float array (N, F). A column
    with no value at all in the training data is filled with 0.0 (or "" for strings).
    """

    STRATEGIES = ("mean", "median", "most_frequent")

    def __init__(self, strategy: str = "mean") -> None:
        strategy = str(strategy).removeprefix("impute_")
        if strategy not in self.STRATEGIES:
            raise ConfigError(
                f"unknown imputation strategy '{strategy}'"
                f"{did_you_mean(strategy, self.STRATEGIES)}; valid: {', '.join(self.STRATEGIES)}"
            )
        self.strategy = strategy
        self.fill_: dict[str, Any] | list[float] | None = None  # dict for Tables, list for arrays

    def fit(self, data: Table | np.ndarray) -> Imputer:
        if isinstance(data, Table):
            self.fill_ = {n: self._stat(a) for n, a in data.columns.items()}
        else:
            x = _as_2d_float(data)
            self.fill_ = [self._stat(x[:, j]) for j in range(x.shape[1])]
        return self

    def _stat(self, col: np.ndarray) -> Any:
        present = col[~missing_mask(col)]
        if col.dtype.kind != "f":
            return _most_frequent(present) if len(present) else ""
        if not len(present):
            return 0.0
        if self.strategy == "mean":
            return float(present.mean())
        if self.strategy == "median":
            return float(np.median(present))
        return float(_most_frequent(present))

    def transform(self, data: Table | np.ndarray) -> Any:
        """Same kind as the input (Table or float64 array), with the holes filled."""
        if self.fill_ is None:
            raise DataError("Imputer is not fitted; call fit(training data) before transform")
        if isinstance(data, Table):
            if not isinstance(self.fill_, dict):
                raise DataError("this Imputer was fitted on an array; transform arrays with it")
            cols = dict(data.columns)
            for name, value in self.fill_.items():
                mask = missing_mask(cols[name]) if name in cols else None
                if mask is not None and mask.any():
                    cols[name] = cols[name].copy()
                    cols[name][mask] = value
            return Table._trusted(cols, data.bad_rows)
        if not isinstance(self.fill_, list):
            raise DataError("this Imputer was fitted on a Table; transform Tables with it")
        x = _as_2d_float(data).copy()
        if x.shape[1] != len(self.fill_):
            raise ShapeError(
                f"Imputer was fitted on {len(self.fill_)} features, got {x.shape[1]}; "
                "transform data with the same columns"
            )
        rows, cols_idx = np.nonzero(np.isnan(x))
        x[rows, cols_idx] = np.asarray(self.fill_, dtype=np.float64)[cols_idx]
        return x

    def fit_transform(self, data: Table | np.ndarray) -> Any:
        return self.fit(data).transform(data)

    def state_dict(self) -> dict[str, Any]:
        fill = dict(self.fill_) if isinstance(self.fill_, dict) else self.fill_
        return {"strategy": self.strategy, "fill": fill}

    def load_state_dict(self, state: dict[str, Any]) -> Imputer:
        fresh = Imputer(state["strategy"])
        self.strategy, self.fill_ = fresh.strategy, state["fill"]
        return self


def _as_2d_float(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ShapeError(f"expected a 2-D array (samples, features), got shape {x.shape}")
    return x


def _most_frequent(values: np.ndarray) -> Any:
    """Most frequent value; ties go to the smallest, so the result is deterministic."""
    if values.dtype.kind != "f":
        values = values.astype(str)
    uniq, counts = np.unique(values, return_counts=True)
    return uniq[int(np.argmax(counts))].item()


class Normalizer:
    """Per-feature scaling fitted on training data: (x - shift) / scale.

    "standard": zero mean, unit variance (population std, like scikit-learn).
    "minmax": [0, 1] on the training range. "none": identity (keeps one code path).
    A constant feature gets scale 1 instead of a division by zero. Statistics are taken over
    axis 0, so (N, F) and image batches (N, H, W, C) both work.
    """

    METHODS = ("standard", "minmax", "none")

    def __init__(self, method: str = "standard") -> None:
        if method not in self.METHODS:
            raise ConfigError(
                f"unknown normalization '{method}'{did_you_mean(method, self.METHODS)}; "
                f"valid: {', '.join(self.METHODS)}"
            )
        self.method = method
        self.shift_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    def fit(self, x: Any) -> Normalizer:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2 or len(x) == 0:
            raise ShapeError(f"Normalizer.fit needs (samples, features...) data, got {x.shape}")
        bad = int((~np.isfinite(x)).sum())
        if bad:
            raise DataError(
                f"cannot fit a Normalizer on data with {bad} NaN/Inf values; impute them first "
                "(groundup.data.Imputer)"
            )
        if self.method == "standard":
            shift, scale = x.mean(axis=0), x.std(axis=0)
        elif self.method == "minmax":
            shift = x.min(axis=0)
            scale = x.max(axis=0) - shift
        else:
            shift, scale = np.zeros(x.shape[1:]), np.ones(x.shape[1:])
        # Trap: a constant feature has std/range 0 (or float noise around it); scale 1 keeps it 0.
        tiny = scale <= 10 * np.finfo(np.float64).eps * np.maximum(np.abs(shift), 1.0)
        scale = np.where(tiny, 1.0, scale)
        self.shift_, self.scale_ = shift, scale
        return self

    def _check(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.shift_ is None or self.scale_ is None:
            raise DataError("Normalizer is not fitted; call fit(x_train) before transform")
        if x.shape[1:] != self.shift_.shape:
            raise ShapeError(
                f"Normalizer was fitted on features of shape {self.shift_.shape}, got "
                f"{x.shape[1:]}; transform data with the same columns"
            )
        return self.shift_, self.scale_

    def transform(self, x: Any) -> np.ndarray:
        """Scaled copy; float32 input stays float32, anything else becomes float64."""
        x = np.asarray(x)
        shift, scale = self._check(x)
        dtype = x.dtype if x.dtype.kind == "f" else np.float64
        return ((x - shift) / scale).astype(dtype, copy=False)

    def fit_transform(self, x: Any) -> np.ndarray:
        return self.fit(x).transform(x)

    def inverse_transform(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        shift, scale = self._check(x)
        dtype = x.dtype if x.dtype.kind == "f" else np.float64
        return (x * scale + shift).astype(dtype, copy=False)

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly: plain (nested) lists of floats."""
        state: dict[str, Any] = {"method": self.method}
        if self.shift_ is not None and self.scale_ is not None:
            state.update(shift=self.shift_.tolist(), scale=self.scale_.tolist())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> Normalizer:
        fresh = Normalizer(state["method"])
        self.method, self.shift_, self.scale_ = fresh.method, None, None
        if "shift" in state:
            self.shift_ = np.asarray(state["shift"], dtype=np.float64)
            self.scale_ = np.asarray(state["scale"], dtype=np.float64)
        return self


def split_indices(
    n: int,
    y: Any = None,
    test_size: float = 0.2,
    val_size: float = 0.0,
    stratify: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (train, val, test) row indices; stratified by class when `y` is given.

    Split sizes are ceil(size * n) for test and val, the rest is train. Stratified: each
    class gets its proportional share of every split, rounded so the totals are exact (the
    leftover rows go to the classes with the largest fractional shares, ties broken by the
    seed). Pass `y=None` (or stratify=False) for regression: a plain shuffle.
    """
    for name, size in (("test_size", test_size), ("val_size", val_size)):
        if not 0.0 <= size < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {size}")
    if test_size + val_size >= 1.0:
        raise ConfigError(
            f"test_size + val_size must be < 1 to leave training rows, got "
            f"{test_size} + {val_size}; lower one of them"
        )
    n_test, n_val = math.ceil(test_size * n), math.ceil(val_size * n)
    n_train = n - n_test - n_val
    if n_train < 1:
        raise DataError(
            f"{n} rows are too few for test_size={test_size} and val_size={val_size}; "
            "add data or lower the split sizes"
        )
    rng = np.random.default_rng(seed)
    if y is None or not stratify:
        perm = rng.permutation(n)
        return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]

    y = np.asarray(y)
    if len(y) != n:
        raise DataError(f"split_indices got n={n} but y has {len(y)} labels")
    classes, y_codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    y_codes = y_codes.reshape(-1)
    n_splits = 1 + (n_test > 0) + (n_val > 0)
    rare = counts < n_splits
    if rare.any():
        label = classes[int(np.argmax(rare))]
        label = label.item() if isinstance(label, np.generic) else label  # 1, not np.int64(1)
        raise DataError(
            f"class {label!r} has {int(counts[rare][0])} member(s); stratified splitting into "
            f"{n_splits} parts needs at least {n_splits} per class; add data, drop the class, "
            "or set stratify: false"
        )
    test_per_class = _allocate(counts, n_test, rng)
    val_per_class = _allocate(counts - test_per_class, n_val, rng)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    # Group rows by class with one stable argsort, then shuffle inside each class.
    order = np.argsort(y_codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    for k in range(len(classes)):
        members = rng.permutation(order[starts[k] : starts[k + 1]])
        t, v = test_per_class[k], val_per_class[k]
        parts[2].append(members[:t])
        parts[1].append(members[t : t + v])
        parts[0].append(members[t + v :])
    train, val, test = (rng.permutation(np.concatenate(p)).astype(np.int64) for p in parts)
    return train, val, test


def _allocate(counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Split `total` across classes in proportion to `counts`, summing exactly to `total`."""
    if total == 0:
        return np.zeros_like(counts)
    exact = counts * (total / counts.sum())
    share = np.floor(exact).astype(np.int64)
    left = total - int(share.sum())
    # Largest fractional part first; a random key breaks ties reproducibly.
    order = np.lexsort((rng.random(len(counts)), -(exact - share)))
    share[order[:left]] += 1
    return np.minimum(share, counts)


def check_arrays(x: Any, y: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tensors for training from numpy arrays, lists or tensors, with clear errors.

    Floating data becomes float32 (the Keras default), integer y stays int64 (class ids).
    Raises DataError when x and y lengths differ or when either holds NaN/Inf. The check is
    one vectorized isfinite pass; details are only computed when it fails.
    """
    xt = _to_tensor(x, "x")
    if xt.ndim == 0 or len(xt) == 0:
        raise DataError(f"x must hold at least one sample, got shape {tuple(xt.shape)}")
    _check_finite(xt, "x")
    if y is None:
        return xt, None
    yt = _to_tensor(y, "y")
    if yt.ndim == 0:
        raise DataError("y must have one label per sample, got a scalar")
    if len(yt) != len(xt):
        raise DataError(
            f"x has {len(xt)} samples but y has {len(yt)}; they must have the same length "
            "(first dimension)"
        )
    _check_finite(yt, "y")
    return xt, yt


def _to_tensor(a: Any, name: str) -> torch.Tensor:
    if not isinstance(a, torch.Tensor):
        arr = np.asarray(a)
        if arr.dtype.kind not in "biuf":
            raise DataError(
                f"{name} must be numeric, got dtype {arr.dtype}; encode text columns first "
                "(groundup.data.CategoricalEncoder or prepare_tabular)"
            )
        a = torch.as_tensor(arr)  # shares memory with the numpy array when it can
    if a.dtype == torch.bool:
        return a.float()
    if a.is_floating_point() and a.dtype != torch.float32:
        return a.float()
    if not a.is_floating_point() and not a.is_complex() and a.dtype != torch.int64:
        return a.long()
    return a


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not t.is_floating_point():
        return
    # Fast path: a finite sum proves every value finite (NaN/Inf propagate through a sum);
    # only an overflowing sum or a real NaN/Inf pays for the elementwise pass.
    if bool(torch.isfinite(t.sum(dtype=torch.float64))):
        return
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return
    n_nan = int(torch.isnan(t).sum())
    n_inf = int((~finite).sum()) - n_nan
    what = " and ".join(
        part
        for part in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "")
        if part
    )
    first = int((~finite).reshape(len(t), -1).any(dim=1).nonzero()[0, 0])
    raise DataError(
        f"{name} contains {what} values (first at row {first}); clean or impute them, "
        "e.g. groundup.data.Imputer"
    )
