"""Normalizer, splits, array checks, built-in datasets and the prepare_tabular pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from groundup.data.builtin import BUILTIN_DATASETS, load_dataset
from groundup.data.preprocess import Normalizer, check_arrays, split_indices
from groundup.data.tabular import Table
from groundup.data.tabular_pipeline import Preprocessor, TabularDataConfig, prepare_tabular
from groundup.data.tabular_readers import load_table
from groundup.errors import ConfigError, DataError, MissingFileError, ShapeError

# --------------------------------------------------------------------------------- Normalizer


def test_standard_normalizer_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(50, 4))
    x[:, 2] = 7.0  # constant feature: must not divide by zero
    norm = Normalizer("standard").fit(x)
    np.testing.assert_allclose(norm.shift_, x.mean(axis=0))
    expected = (x - x.mean(axis=0)) / np.where(x.std(axis=0) == 0, 1, x.std(axis=0))
    out = norm.transform(x)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert np.all(out[:, 2] == 0)
    np.testing.assert_allclose(norm.inverse_transform(out), x)
    assert norm.transform(x.astype(np.float32)).dtype == np.float32


def test_minmax_and_none_normalizers():
    x = np.array([[0.0, 10.0, 5.0], [2.0, 20.0, 5.0], [4.0, 30.0, 5.0]])
    out = Normalizer("minmax").fit_transform(x)
    np.testing.assert_allclose(out, [[0, 0, 0], [0.5, 0.5, 0], [1, 1, 0]])
    np.testing.assert_array_equal(Normalizer("none").fit_transform(x), x)


def test_normalizer_state_and_errors():
    x = np.arange(12.0).reshape(4, 3)
    norm = Normalizer().fit(x)
    state = json.loads(json.dumps(norm.state_dict()))
    again = Normalizer().load_state_dict(state)
    np.testing.assert_allclose(again.transform(x), norm.transform(x))
    with pytest.raises(DataError, match="not fitted"):
        Normalizer().transform(x)
    with pytest.raises(ShapeError, match="fitted on features of shape"):
        norm.transform(x[:, :2])
    with pytest.raises(DataError, match="1 NaN/Inf"):
        Normalizer().fit(np.array([[1.0], [np.nan]]))
    with pytest.raises(ConfigError, match="did you mean 'minmax'"):
        Normalizer("min_max")


# ------------------------------------------------------------------------------------- splits


def test_split_sizes_disjoint_and_seeded():
    tr, va, te = split_indices(103, test_size=0.2, val_size=0.1, seed=1)
    assert (len(tr), len(va), len(te)) == (71, 11, 21)  # ceil for test and val
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(103))
    again = split_indices(103, test_size=0.2, val_size=0.1, seed=1)
    for a, b in zip((tr, va, te), again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(tr, split_indices(103, test_size=0.2, val_size=0.1, seed=2)[0])
    assert tr.dtype == np.int64


def test_stratified_split_matches_sklearn_counts():
    from sklearn.model_selection import StratifiedShuffleSplit

    y = np.repeat([0, 1, 2], [47, 33, 20])
    _, _, te = split_indices(100, y, test_size=0.2, seed=0)
    counts = np.bincount(y[te], minlength=3)
    assert counts.tolist() == [9, 7, 4]  # 9.4, 6.6, 4.0 -> the leftover row goes to class 1
    ref_test = next(StratifiedShuffleSplit(1, test_size=0.2, random_state=0).split(y, y))[1]
    assert counts.tolist() == np.bincount(y[ref_test], minlength=3).tolist()


def test_stratified_three_way_proportions():
    y = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10, dtype=object)
    tr, va, te = split_indices(100, y, test_size=0.2, val_size=0.1, seed=3)
    for idx, n in ((te, 20), (va, 10), (tr, 70)):
        labels, counts = np.unique(y[idx], return_counts=True)
        assert labels.tolist() == ["a", "b", "c"]
        np.testing.assert_array_equal(counts, np.array([0.6, 0.3, 0.1]) * n)


def test_split_bad_inputs():
    with pytest.raises(ConfigError, match=r"test_size must be in \[0, 1\)"):
        split_indices(10, test_size=1.0)
    with pytest.raises(ConfigError, match="test_size \\+ val_size must be < 1"):
        split_indices(10, test_size=0.5, val_size=0.5)
    with pytest.raises(DataError, match="too few"):
        split_indices(2, test_size=0.5, val_size=0.4)
    y = np.array([0] * 9 + [1])
    with pytest.raises(DataError, match=r"class 1 has 1 member.*stratify: false"):
        split_indices(10, y, test_size=0.3)
    tr, _, te = split_indices(10, y, test_size=0.3, stratify=False)
    assert len(tr) == 7 and len(te) == 3


# ------------------------------------------------------------------------------- check_arrays


def test_check_arrays_converts():
    x, y = check_arrays(np.ones((4, 3)), [0, 1, 2, 1])
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4, 3)
    x, y = check_arrays([[1, 2], [3, 4]], np.array([0.5, 1.5]))
    assert x.dtype == torch.int64 and y.dtype == torch.float32
    t = torch.zeros(2, 2)
    x, none = check_arrays(t)
    assert x is t and none is None


def test_check_arrays_errors():
    with pytest.raises(DataError, match="x has 4 samples but y has 3"):
        check_arrays(np.ones((4, 2)), np.zeros(3))
    x = np.zeros((8, 2))
    x[5, 1] = x[6, 0] = x[7, 1] = np.nan
    with pytest.raises(DataError, match=r"x contains 3 NaN values \(first at row 5\).*Imputer"):
        check_arrays(x)
    x = np.zeros((4, 2))
    x[2, 0] = np.inf
    with pytest.raises(DataError, match=r"1 infinite values \(first at row 2\)"):
        check_arrays(x)
    with pytest.raises(DataError, match="y contains 1 NaN"):
        check_arrays(np.zeros((2, 1)), np.array([0.0, np.nan]))
    with pytest.raises(DataError, match="must be numeric"):
        check_arrays(np.array([["a"], ["b"]]))


# ---------------------------------------------------------------------------------- builtins


def test_builtin_datasets():
    x, y, info = load_dataset("digits")
    assert x.shape == (1797, 64) and x.dtype == np.float32 and y.dtype == np.int64
    assert info.classes == [str(i) for i in range(10)] and np.unique(y).tolist() == list(range(10))
    assert x.max() == 16.0  # raw values; scaling is the Normalizer's job
    images, _, _ = load_dataset("Digits", as_images=True)
    assert images.shape == (1797, 8, 8, 1)
    np.testing.assert_array_equal(images[3, :, :, 0].ravel(), x[3])
    shapes = {"iris": (150, 4, 3), "wine": (178, 13, 3), "breast_cancer": (569, 30, 2)}
    for name, (n, f, k) in shapes.items():
        x, y, info = load_dataset(name)
        assert x.shape == (n, f) and len(info.classes) == k and y.max() == k - 1
    assert set(BUILTIN_DATASETS) == {"digits", "iris", "wine", "breast_cancer"}
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        load_dataset("digit")
    with pytest.raises(ConfigError, match="not an image dataset"):
        load_dataset("iris", as_images=True)


# ---------------------------------------------------------------------------------- pipeline


def write_csv(tmp_path, n=60, seed=0):
    """id (unique per row), x with strong outliers and gaps, a category, a string label."""
    rng = np.random.default_rng(seed)
    lines = ["id,x,color,label"]
    for i in range(n):
        x = "" if i % 7 == 3 else f"{(1000.0 if i % 5 == 0 else 0.0) + rng.normal():.4f}"
        color = ["red", "blue", "green"][i % 3]
        label = "cat" if i % 3 else "dog"  # 2/3 cats
        lines.append(f"{i},{x},{color},{label}")
    path = tmp_path / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_no_leakage_normalizer_and_imputer(tmp_path):
    path = write_csv(tmp_path)
    data = prepare_tabular(TabularDataConfig(path=str(path), target="label", seed=1))
    raw = load_table(path)
    norm = data.normalizer
    train_raw = norm.inverse_transform(data.x_train.astype(np.float64))
    train_ids = np.rint(train_raw[:, 0]).astype(int)  # the id column survives exactly
    assert len(set(train_ids)) == len(train_ids)
    x_train_raw = raw["x"][train_ids]
    fill = data.fitted.imputer.fill_["x"]
    assert fill == pytest.approx(np.nanmean(x_train_raw))
    assert fill != pytest.approx(np.nanmean(raw["x"]), rel=1e-3)  # the test could fail
    # Normalizer statistics: the imputed training column only.
    x_imputed = np.where(np.isnan(x_train_raw), fill, x_train_raw)
    assert norm.shift_[1] == pytest.approx(x_imputed.mean())
    assert norm.scale_[1] == pytest.approx(x_imputed.std())
    assert norm.shift_[0] == pytest.approx(train_ids.mean())
    assert norm.shift_[0] != pytest.approx(np.arange(60).mean(), rel=1e-4)
    for part in (data.x_train, data.x_val, data.x_test):
        assert np.isfinite(part).all() and part.dtype == np.float32
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-5)


def test_pipeline_classification_outputs(tmp_path):
    path = write_csv(tmp_path)
    data = prepare_tabular(TabularDataConfig(path=str(path), target="label"))
    assert data.task == "classification" and data.classes == ["cat", "dog"]
    assert data.feature_names == ["id", "x", "color=blue", "color=green", "color=red"]
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (42, 6, 12)
    assert data.y_train.dtype == np.int64
    for y, n in ((data.y_train, 42), (data.y_val, 6), (data.y_test, 12)):
        assert np.bincount(y).tolist() == [n * 2 // 3, n // 3]  # stratified exactly
    report = data.report
    assert report.values_imputed == 9 and report.imputed_columns == {"x": 9}
    assert report.encoded_columns == {"color": 3} and report.encoding == "onehot"
    assert (
        "9 values imputed" in report.summary() and "onehot-encoded: color -> 3" in report.summary()
    )
    assert data.n_features == 5 and data.n_classes == 2


def test_pipeline_is_seeded(tmp_path):
    path = str(write_csv(tmp_path))
    a = prepare_tabular(TabularDataConfig(path=path, target="label", seed=4))
    b = prepare_tabular(TabularDataConfig(path=path, target="label", seed=4))
    c = prepare_tabular(TabularDataConfig(path=path, target="label", seed=5))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_pipeline_cleaning_options(tmp_path):
    path = tmp_path / "d.csv"
    rows = ["a,b,k,y"] + [f"{i},{'' if i == 4 else i % 3},1,{i % 2}" for i in range(20)]
    rows += ["1,1,1,1", "5,2,1,", "oops"]  # duplicate of row 1, missing target, bad row
    path.write_text("\n".join(rows) + "\n")
    cfg = TabularDataConfig(path=str(path), target="y", bad_rows="skip", test_size=0.25)
    data = prepare_tabular(cfg)
    r = data.report
    assert (r.bad_rows_skipped, r.missing_target_dropped, r.duplicates_removed) == (1, 1, 1)
    assert r.constant_columns == ["k"] and r.values_imputed == 1
    assert data.feature_names == ["a", "b"] and data.classes == [0, 1]
    cfg.missing, cfg.drop_constant, cfg.drop_duplicates = "drop", False, False
    data = prepare_tabular(cfg)
    assert data.report.missing_rows_dropped == 1 and data.feature_names == ["a", "b", "k"]
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 20
    cfg.missing = "error"
    with pytest.raises(DataError, match="missing values in features"):
        prepare_tabular(cfg)
    cfg.bad_rows = "fail"
    with pytest.raises(DataError, match="line 24"):
        prepare_tabular(cfg)


def test_pipeline_regression_detected(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    target = x @ [1.5, -2.0] + 0.1
    np.savez(tmp_path / "r.npz", x=x, price=target)
    data = prepare_tabular(TabularDataConfig(path=str(tmp_path / "r.npz"), target="price"))
    assert data.task == "regression" and data.classes is None
    assert data.y_train.dtype == np.float32 and data.feature_names == ["x0", "x1"]
    np.testing.assert_allclose(
        np.sort(np.concatenate([data.y_train, data.y_val, data.y_test])),
        np.sort(target.astype(np.float32)),
    )


def test_pipeline_explicit_task_and_bad_targets(tmp_path):
    path = str(write_csv(tmp_path))
    with pytest.raises(DataError, match="set task: classification"):
        prepare_tabular(TabularDataConfig(path=path, target="label", task="regression"))
    data = prepare_tabular(TabularDataConfig(path=path, target="id", task="regression"))
    assert data.task == "regression"
    with pytest.raises(DataError, match=r"target column 'lable' not found \(did you mean 'label'"):
        prepare_tabular(TabularDataConfig(path=path, target="lable"))
    with pytest.raises(DataError, match="feature column 'colour'.*available columns: id, x"):
        prepare_tabular(TabularDataConfig(path=path, target="label", features=["colour"]))
    with pytest.raises(ConfigError, match="also listed"):
        prepare_tabular(TabularDataConfig(path=path, target="label", features=["label"]))
    with pytest.raises(MissingFileError):
        prepare_tabular(TabularDataConfig(path=path + ".missing", target="label"))


def test_config_validation():
    with pytest.raises(ConfigError, match="exactly one of data.dataset"):
        prepare_tabular(TabularDataConfig())
    with pytest.raises(ConfigError, match="exactly one of data.dataset"):
        prepare_tabular(TabularDataConfig(dataset="iris", path="x.csv", target="y"))
    with pytest.raises(ConfigError, match="data.target is required"):
        prepare_tabular(TabularDataConfig(path="x.csv"))
    with pytest.raises(ConfigError, match="did you mean 'standard'"):
        TabularDataConfig(dataset="iris", normalize="standart")
    with pytest.raises(ConfigError, match="must be < 1"):
        TabularDataConfig(dataset="iris", test_size=0.6, val_size=0.4)
    with pytest.raises(ConfigError, match="data.test_size must be a number"):
        TabularDataConfig(dataset="iris", test_size="0.2")


def test_infinite_values_are_caught(tmp_path):
    path = tmp_path / "inf.csv"
    path.write_text("a,y\n" + "".join(f"{v},{i % 2}\n" for i, v in enumerate([1, 2, "inf", 4])))
    cfg = TabularDataConfig(path=str(path), target="y", normalize="none", test_size=0.5)
    cfg.val_size, cfg.stratify = 0.0, False
    with pytest.raises(DataError, match=r"NaN/infinite values after preprocessing.*'a': 1"):
        prepare_tabular(cfg)


def test_preprocessor_roundtrip_on_new_data(tmp_path):
    path = write_csv(tmp_path)
    cfg = TabularDataConfig(path=str(path), target="label", categorical="ordinal")
    data = prepare_tabular(cfg)
    pre = data.fitted
    (tmp_path / "pre.json").write_text(json.dumps(data.preprocessor))  # what `train` saves
    loaded = Preprocessor.load(tmp_path / "pre.json")
    new = Table({"x": [np.nan, 1000.0], "color": ["purple", "red"], "id": [3.0, 4.0]})
    x1, y1 = data.transform_new(new)
    x2, _ = loaded.transform(new)
    np.testing.assert_array_equal(x1, x2)
    assert y1 is None and x1.shape == (2, 3)
    fill = pre.imputer.fill_["x"]
    assert x1[0, 1] == pytest.approx((fill - pre.normalizer.shift_[1]) / pre.normalizer.scale_[1])
    raw_color = pre.normalizer.inverse_transform(x1.astype(np.float64))[:, 2]
    np.testing.assert_allclose(raw_color, [-1, 2])  # unseen -> -1; red is the 3rd category
    _, y = loaded.transform(path)
    assert y.tolist()[:3] == [1, 0, 0] and loaded.decode([0, 1]).tolist() == ["cat", "dog"]
    with pytest.raises(DataError, match="feature column 'color' not found"):
        pre.transform(Table({"x": [1.0], "id": [1.0]}))


def test_unseen_category_strict(tmp_path):
    path = write_csv(tmp_path)
    cfg = TabularDataConfig(path=str(path), target="label", unseen_category="error")
    pre = Preprocessor.from_state_dict(prepare_tabular(cfg).preprocessor)
    ok = Table({"id": [1.0], "x": [0.0], "color": ["red"]})
    x, _ = pre.transform(ok)
    assert x.shape == (1, 5)
    with pytest.raises(DataError, match=r"not seen in training: \['pink'\]"):
        pre.transform(Table({"id": [1.0], "x": [0.0], "color": ["pink"]}))


def test_pipeline_builtin_dataset():
    data = prepare_tabular(TabularDataConfig(dataset="digits", drop_constant=False))
    assert data.x_train.shape == (1257, 64) and data.x_val.shape == (180, 64)
    assert data.x_test.shape == (360, 64)
    assert data.classes == [str(i) for i in range(10)] and data.task == "classification"
    default = prepare_tabular(TabularDataConfig(dataset="digits"))
    assert default.report.constant_columns == ["pixel_0_0", "pixel_4_0", "pixel_4_7"]
    assert default.n_features == 61
    iris = prepare_tabular(TabularDataConfig(dataset="iris", val_size=0.0))
    assert iris.classes == ["setosa", "versicolor", "virginica"]
    assert iris.report.duplicates_removed == 1 and iris.x_val.shape == (0, 4)
