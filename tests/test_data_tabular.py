"""Loading tables (CSV/TSV/Parquet/NumPy), cleaning, imputation, encoding, and IDX files."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest

from groundup.data.idx import load_idx, load_mnist
from groundup.data.preprocess import Imputer
from groundup.data.tabular import (
    CategoricalEncoder,
    LabelEncoder,
    Table,
    clean_table,
    infer_task,
)
from groundup.data.tabular_readers import load_table
from groundup.errors import ConfigError, DataError, DependencyError, MissingFileError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------- load_table


def test_csv_types_and_missing_tokens(tmp_path):
    path = write(
        tmp_path,
        "d.csv",
        "a,b,color\n1,2.5,red\n,NA,blue\nnan,null,?\n4, 5 ,NULL\n-1e3,?, green \n",
    )
    t = load_table(path)
    assert t.names == ["a", "b", "color"]
    assert t["a"].dtype == np.float64 and t["b"].dtype == np.float64
    np.testing.assert_array_equal(t["a"], [1, np.nan, np.nan, 4, -1000])
    np.testing.assert_array_equal(t["b"], [2.5, np.nan, np.nan, 5, np.nan])
    assert t["color"].dtype == object
    assert t["color"].tolist() == ["red", "blue", None, None, "green"]
    assert t.n_rows == 5 and t.bad_rows == 0
    long = "w" * 100  # long text takes the per-value path; same result
    t = load_table(write(tmp_path, "long.csv", f"txt\n{long}\n NA \n short \n"))
    assert t["txt"].tolist() == [long, None, "short"]


def test_delimiters_sniffed_given_and_tsv(tmp_path):
    semi = load_table(write(tmp_path, "s.csv", "x;y\n1;2\n3;4\n"))
    assert semi.names == ["x", "y"]
    np.testing.assert_array_equal(semi["y"], [2, 4])
    tsv = load_table(write(tmp_path, "t.tsv", "x\ty\n1\t2\n"))
    assert tsv.names == ["x", "y"]
    piped = load_table(write(tmp_path, "p.txt", "x|y\n1|2\n"), delimiter="|")
    np.testing.assert_array_equal(piped["x"], [1])
    one = load_table(write(tmp_path, "one.csv", "x\n1\n2\n"))
    assert one.names == ["x"] and one.n_rows == 2


def test_csv_gz_and_bom(tmp_path):
    path = tmp_path / "d.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\ufeffa,b\n1,x\n2,y\n")
    t = load_table(path)
    assert t.names == ["a", "b"]  # no BOM glued to the first name
    assert t["b"].tolist() == ["x", "y"]


def test_bad_rows_fail_names_line_and_fix(tmp_path):
    path = write(tmp_path, "bad.csv", "a,b,c\n1,2,3\n4,5\n6,7,8\n")
    with pytest.raises(DataError, match=r"line 3 has 2 fields.*bad_rows: skip"):
        load_table(path)


def test_bad_rows_skip_counts_and_report(tmp_path):
    path = write(tmp_path, "bad.csv", "a,b,c\n1,2,3\n4,5\n\n6,7,8\n9,9,9,9\n")
    t = load_table(path, bad_rows="skip")
    assert t.n_rows == 2 and t.bad_rows == 2  # the blank line is not a bad row
    _, report = clean_table(t, target="c")
    assert report.bad_rows_skipped == 2 and report.rows_in == 4 and report.rows_out == 2
    with pytest.raises(ConfigError, match="bad_rows"):
        load_table(path, bad_rows="ignore")


def test_missing_empty_and_header_only_files(tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        load_table(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="empty"):
        load_table(write(tmp_path, "empty.csv", ""))
    with pytest.raises(DataError, match="no data rows"):
        load_table(write(tmp_path, "header.csv", "a,b\n"))
    with pytest.raises(DataError, match="unsupported data file type"):
        load_table(write(tmp_path, "d.xlsx", "a"))
    with pytest.raises(DataError, match="appears twice"):
        load_table(write(tmp_path, "dup.csv", "a,a\n1,2\n"))


def test_columns_selection_and_did_you_mean(tmp_path):
    path = write(tmp_path, "d.csv", "color,size,label\nred,1,a\n")
    t = load_table(path, columns=["label", "size"])
    assert t.names == ["label", "size"]
    with pytest.raises(DataError, match=r"'colour' not found \(did you mean 'color'\?\)"):
        load_table(path, columns=["colour"])
    with pytest.raises(DataError, match="available columns: color, size, label"):
        Table({"color": ["a"], "size": [1], "label": ["b"]})["lable"]


def test_numpy_files(tmp_path):
    x = np.arange(12, dtype=np.int32).reshape(4, 3)
    np.save(tmp_path / "x.npy", x)
    t = load_table(tmp_path / "x.npy")
    assert t.names == ["x0", "x1", "x2"]
    np.testing.assert_array_equal(t["x1"], [1, 4, 7, 10])
    assert t["x1"].dtype == np.float64

    np.savez(tmp_path / "d.npz", x=x, y=np.array(["a", "b", "a", "b"]))
    t = load_table(tmp_path / "d.npz")
    assert t.names == ["x0", "x1", "x2", "y"]
    assert t["y"].tolist() == ["a", "b", "a", "b"]

    np.savez(tmp_path / "bad.npz", x=x, y=np.zeros(3))
    with pytest.raises(DataError, match="different numbers of rows"):
        load_table(tmp_path / "bad.npz")
    np.save(tmp_path / "img.npy", np.zeros((2, 3, 3)))
    with pytest.raises(DataError, match="1-D or 2-D"):
        load_table(tmp_path / "img.npy")


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    data = pa.table({"n": [1, None, 3], "f": [0.5, 1.5, None], "s": ["a", None, "c"]})
    pq.write_table(data, tmp_path / "d.parquet")
    t = load_table(tmp_path / "d.parquet")
    np.testing.assert_array_equal(t["n"], [1, np.nan, 3])
    np.testing.assert_array_equal(t["f"], [0.5, 1.5, np.nan])
    assert t["s"].tolist() == ["a", None, "c"]
    assert load_table(tmp_path / "d.parquet", columns=["s"]).names == ["s"]
    with pytest.raises(DataError, match="did you mean 's'"):
        load_table(tmp_path / "d.parquet", columns=["ss"])


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DependencyError, match=r"pip install 'groundup\[parquet\]'"):
        load_table(path)


def test_table_normalizes_columns_and_checks_lengths():
    t = Table({"a": [1, None, 3.0], "b": np.array(["x", "y", "z"]), "c": [True, False, True]})
    assert t["a"].dtype == np.float64 and np.isnan(t["a"][1])
    assert t["b"].dtype == object and t["c"].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(DataError, match="different lengths"):
        Table({"a": [1, 2], "b": [1]})


# -------------------------------------------------------------------------------- clean_table


def make_table():
    return Table(
        {
            "a": [1.0, 2.0, 2.0, np.nan, 5.0, 6.0],
            "k": [7.0, 7.0, 7.0, 7.0, 7.0, np.nan],  # constant apart from a missing value
            "s": ["u", "v", "v", "u", None, "u"],
            "y": ["p", "q", "q", None, "p", "q"],
        }
    )


def test_clean_table_defaults():
    t, report = clean_table(make_table(), target="y")
    assert report.missing_target_dropped == 1  # row 3
    assert report.duplicates_removed == 1  # row 2 repeats row 1
    assert report.constant_columns == ["k"]
    assert t.names == ["a", "s", "y"]
    np.testing.assert_array_equal(t["a"], [1, 2, 5, 6])
    assert t["s"].tolist() == ["u", "v", None, "u"]  # imputation is left for after the split
    assert report.rows_in == 6 and report.rows_out == 4
    assert "duplicates removed" in report.summary()
    json.dumps(report.to_dict())


def test_clean_table_options():
    t, report = clean_table(make_table(), "y", drop_duplicates=False, drop_constant=False)
    assert t.n_rows == 5 and "k" in t.names and report.duplicates_removed == 0
    t, report = clean_table(make_table(), "y", missing="drop", drop_constant=False)
    assert report.missing_rows_dropped == 2  # s=None (row 4) and k=NaN (row 5)
    np.testing.assert_array_equal(t["a"], [1, 2])
    with pytest.raises(DataError, match=r"missing values in features \('k': 1, 's': 1\)"):
        clean_table(make_table(), "y", missing="error")
    with pytest.raises(ConfigError, match="did you mean 'drop'"):
        clean_table(make_table(), "y", missing="dorp")
    with pytest.raises(DataError, match="target column 'label' not found"):
        clean_table(make_table(), "label")


def test_duplicates_compare_missing_values_equal():
    t = Table({"a": [np.nan, np.nan, 1.0], "s": [None, None, "x"], "y": [1.0, 1.0, 2.0]})
    cleaned, report = clean_table(t, "y", drop_constant=False)
    assert report.duplicates_removed == 1 and cleaned.n_rows == 2


# ---------------------------------------------------------------------------------- Imputer


def test_imputer_fits_on_training_rows_only():
    train = Table({"a": [1.0, np.nan, 3.0, 10.0], "s": ["x", None, "y", "y"]})
    test = Table({"a": [np.nan, 1000.0, 2000.0], "s": [None, "z", "z"]})
    imp = Imputer("mean").fit(train)
    assert imp.fill_ == {"a": pytest.approx(14.0 / 3.0), "s": "y"}
    out = imp.transform(test)
    assert out["a"][0] == pytest.approx(14.0 / 3.0)  # not the mean of the test column
    assert out["s"].tolist() == ["y", "z", "z"]
    assert np.isnan(test["a"][0])  # the input is not modified
    assert Imputer("impute_median").fit(train).fill_["a"] == 3.0
    assert Imputer("most_frequent").fit(Table({"a": [2.0, 1.0, 2.0, 1.0, 5.0]})).fill_["a"] == 1.0
    with pytest.raises(ConfigError, match="imputation strategy"):
        Imputer("mode")


def test_imputer_on_arrays_and_state():
    x = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, np.nan]])
    imp = Imputer("mean").fit(x)
    np.testing.assert_allclose(imp.transform(x), [[1, 4], [3, 4], [2, 4]])
    again = Imputer().load_state_dict(json.loads(json.dumps(imp.state_dict())))
    np.testing.assert_allclose(again.transform(x), imp.transform(x))
    assert Imputer().fit(np.full((2, 1), np.nan)).fill_ == [0.0]  # nothing seen: 0, not NaN
    with pytest.raises(DataError, match="not fitted"):
        Imputer().transform(x)


# ----------------------------------------------------------------------------------- encoding


def test_onehot_encoding_with_unseen_categories():
    train = Table({"n": [1.0, 2.0, 3.0], "c": ["red", "blue", "red"]})
    enc = CategoricalEncoder().fit(train)
    assert enc.feature_names_ == ["n", "c=blue", "c=red"]
    np.testing.assert_array_equal(enc.transform(train), [[1, 0, 1], [2, 1, 0], [3, 0, 1]])
    new = Table({"c": ["green", "blue"], "n": [9.0, 8.0]})  # column order does not matter
    np.testing.assert_array_equal(enc.transform(new), [[9, 0, 0], [8, 1, 0]])
    strict = CategoricalEncoder(unseen="error").fit(train)
    with pytest.raises(DataError, match=r"not seen in training: \['green'\]"):
        strict.transform(new)
    with pytest.raises(DataError, match="feature column 'c' not found"):
        enc.transform(Table({"n": [1.0]}))
    with pytest.raises(DataError, match="numeric in the training data"):
        enc.transform(Table({"n": ["oops"], "c": ["red"]}))


def test_ordinal_encoding_and_state():
    train = Table({"c": ["b", "a", "c", "a"]})
    enc = CategoricalEncoder("ordinal").fit(train)
    assert enc.feature_names_ == ["c"]
    np.testing.assert_array_equal(enc.transform(Table({"c": ["c", "z", "a"]}))[:, 0], [2, -1, 0])
    again = CategoricalEncoder().load_state_dict(json.loads(json.dumps(enc.state_dict())))
    np.testing.assert_array_equal(again.transform(train), enc.transform(train))
    with pytest.raises(ConfigError, match="did you mean 'onehot'"):
        CategoricalEncoder("one_hot")


def test_categories_read_as_numbers_match_strings():
    enc = CategoricalEncoder().fit(Table({"c": ["1", "2", "x"]}))
    np.testing.assert_array_equal(enc.transform(Table({"c": [2.0, 1.0]})), [[0, 1, 0], [1, 0, 0]])


def test_label_encoder():
    labels = LabelEncoder().fit(np.array(["dog", "cat", "dog", None], dtype=object))
    assert labels.classes_ == ["cat", "dog"]
    np.testing.assert_array_equal(labels.transform(np.array(["dog", "cat"])), [1, 0])
    assert labels.inverse_transform([1, 1, 0]).tolist() == ["dog", "dog", "cat"]
    with pytest.raises(DataError, match=r"labels \['cow'\] were not seen"):
        labels.transform(np.array(["cow"]))
    nums = LabelEncoder().fit(np.array([3.0, 7.0, 5.0, 3.0]))
    assert nums.classes_ == [3, 5, 7] and isinstance(nums.classes_[0], int)
    np.testing.assert_array_equal(nums.transform(np.array([7.0, 3.0])), [2, 0])
    with pytest.raises(DataError, match=r"labels \['4.0'\] were not seen"):
        nums.transform(np.array([4.0]))


def test_infer_task():
    assert infer_task(np.array(["a", "b"], dtype=object)) == "classification"
    assert infer_task(np.array([0.0, 1.0, 2.0, 1.0])) == "classification"
    assert infer_task(np.array([0.5, 1.25, 3.0])) == "regression"
    assert infer_task(np.arange(200.0)) == "regression"  # too many integer values for classes


# --------------------------------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray, type_code: int, be_dtype: str) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(be_dtype).tobytes()


def test_load_idx_types_and_gzip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "img.idx").write_bytes(idx_bytes(images, 0x08, ">u1"))
    out = load_idx(tmp_path / "img.idx")
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, images)

    ints = np.array([-5, 70000, 3], dtype=np.int32)
    (tmp_path / "i.idx.gz").write_bytes(gzip.compress(idx_bytes(ints, 0x0C, ">i4")))
    out = load_idx(tmp_path / "i.idx.gz")
    np.testing.assert_array_equal(out, ints)
    assert out.dtype.isnative

    floats = np.array([[0.5, -1.25]], dtype=np.float64)
    (tmp_path / "f.idx").write_bytes(idx_bytes(floats, 0x0E, ">f8"))
    np.testing.assert_array_equal(load_idx(tmp_path / "f.idx"), floats)


def test_load_idx_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="bad magic number 12340801"):
        load_idx(tmp_path / "bad")
    full = idx_bytes(np.zeros((2, 2), np.uint8), 0x08, ">u1")
    (tmp_path / "short").write_bytes(full[:-1])
    with pytest.raises(DataError, match=r"shape \(2, 2\) \(4 bytes of data\) but the file has 3"):
        load_idx(tmp_path / "short")
    with pytest.raises(MissingFileError):
        load_idx(tmp_path / "nope")


def test_load_mnist(tmp_path):
    rng = np.random.default_rng(0)
    x_tr = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    y_tr = np.array([0, 1, 2, 3, 9], np.uint8)
    x_te = rng.integers(0, 256, (2, 28, 28)).astype(np.uint8)
    y_te = np.array([7, 8], np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(x_tr, 0x08, ">u1"))
    )
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(y_tr, 0x08, ">u1"))
    (tmp_path / "t10k-images.idx3-ubyte").write_bytes(idx_bytes(x_te, 0x08, ">u1"))
    with pytest.raises(MissingFileError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(y_te, 0x08, ">u1"))
    a, b, c, d = load_mnist(tmp_path)
    np.testing.assert_array_equal(a, x_tr)
    np.testing.assert_array_equal(d, y_te)
    assert b.dtype == np.int64 and c.shape == (2, 28, 28)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(y_te[:1], 0x08, ">u1"))
    with pytest.raises(DataError, match="2 images but labels of shape"):
        load_mnist(tmp_path)
