"""`groundup predict` for every kind of run, and `groundup evaluate` on `groundup train` runs.

The reference for a train run is the run's own model and Preprocessor loaded here by hand:
predict must give what `Sequential.predict` gives after the same preprocessing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import groundup as gu
from groundup.config import from_dict
from groundup.data.tabular_pipeline import Preprocessor
from groundup.data.tabular_readers import load_table
from groundup.data.tokenizers import Tokenizer
from groundup.errors import ConfigError, DataError, MissingFileError
from groundup.jobs.evaluate import run_evaluate
from groundup.jobs.finetune import FinetuneConfig, run_finetune
from groundup.jobs.predict import run_predict
from groundup.jobs.train_tabular import TrainJobConfig, run_train
from groundup.models.folders import load_model, save_model_dir
from groundup.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- tiny runs -------------------------------------------------------------------------------
def write_rows(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def mixed_rows(n: int, seed: int) -> list[list]:
    """a, b (some missing), a text column, label: the label follows a + b and the colour."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = rng.normal(size=2)
        color = ["red", "green", "blue"][i % 3]
        label = "yes" if a + b + (color == "red") > 0.5 else "no"
        rows.append([f"{a:.3f}", "" if i % 11 == 0 else f"{b:.3f}", color, label])
    return rows


def train_config(tmp: Path, csv_path: Path, target: str, **data) -> TrainJobConfig:
    last = {"type": "Dense", "units": 2, "activation": "softmax"}
    loss = "sparse_categorical_crossentropy"
    if data.pop("regression", False):
        last, loss = {"type": "Dense", "units": 1}, "mse"
    return from_dict(
        TrainJobConfig,
        {
            "run_dir": str(tmp / "run"),
            "data": {"path": str(csv_path), "target": target, "val_size": 0.0, **data},
            "layers": [{"type": "Dense", "units": 8, "activation": "relu"}, last],
            "loss": loss,
            "metrics": [] if loss == "mse" else ["accuracy"],
            "optim": {"lr": 0.01},
            "train": {"epochs": 4, "batch_size": 16, "device": "cpu"},
        },
    )


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory) -> Path:
    """A `groundup train` classification run: numbers with gaps (imputed) and a one-hot column."""
    tmp = tmp_path_factory.mktemp("cls")
    data = write_rows(tmp / "train.csv", ["a", "b", "color", "label"], mixed_rows(90, 0))
    run_train(None, config=train_config(tmp, data, "label"), verbose=0)
    return tmp / "run"


@pytest.fixture(scope="module")
def reg_run(tmp_path_factory) -> Path:
    """A regression run whose constant column `k` is dropped in training."""
    tmp = tmp_path_factory.mktemp("reg")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 3))
    y = 2 * x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=80)
    rows = [[*map(float, r), 1.0, float(t)] for r, t in zip(x, y, strict=True)]
    data = write_rows(tmp / "train.csv", ["a", "b", "c", "k", "y"], rows)
    cfg = train_config(tmp, data, "y", regression=True, normalize="minmax", stratify=False)
    run_train(None, config=cfg, verbose=0)
    return tmp / "run"


def reference(run: Path, data: Path, **table_options) -> tuple[np.ndarray, Preprocessor]:
    """What the run's own Sequential predicts for `data` after the saved preprocessing."""
    model = gu.load_model(run)
    pre = Preprocessor.load(run / "preprocessing.json")
    x, _ = pre.transform(load_table(data, **table_options))
    return model.predict(x, verbose=0), pre


@pytest.fixture(scope="module")
def base_gpt(tmp_path_factory) -> Path:
    """A tiny groundup GPT folder (bytes tokenizer), as `groundup pretrain` writes it."""
    root = tmp_path_factory.mktemp("base")
    tok = Tokenizer.train(None, kind="bytes")
    torch.manual_seed(0)
    cfg = GPTConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tok.vocab_size, dropout=0.0
    )
    save_model_dir(root / "model", GPT(cfg), tok)
    return root


def finetune(tmp: Path, base: Path, task: str, data: dict) -> Path:
    cfg = from_dict(
        FinetuneConfig,
        {
            "run_dir": str(tmp / "run"),
            "base": {"path": str(base)},
            "task": task,
            "data": data,
            "optim": {"name": "adamw", "lr": 3e-3},
            "train": {"max_steps": 2, "batch_size": 8, "device": "cpu", "precision": "fp32"},
        },
    )
    run_finetune(None, config=cfg, verbose=0)
    return tmp / "run"


def texts(n: int, seed: int) -> list[list[str]]:
    g = np.random.default_rng(seed)
    words = {"pos": ["good", "great", "fine"], "neg": ["bad", "awful", "poor"]}
    return [
        [f"it was {g.choice(words[lab])} really", lab]
        for lab in ("pos" if i % 2 else "neg" for i in range(n))
    ]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, base_gpt) -> Path:
    tmp = tmp_path_factory.mktemp("clf")
    train = write_rows(tmp / "train.csv", ["text", "label"], texts(24, 0))
    return finetune(tmp, base_gpt, "classification", {"train": str(train)})


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, base_gpt) -> Path:
    """SFT trained with its own field names: predict reads prompts by the same name."""
    tmp = tmp_path_factory.mktemp("sft")
    rows = [{"instruction": f"add {a} and 1", "output": str(a + 1)} for a in range(16)]
    train = write_jsonl(tmp / "train.jsonl", rows)
    data = {"train": str(train), "prompt_field": "instruction", "response_field": "output"}
    return finetune(tmp, base_gpt, "sft", data)


# ---- groundup train runs: the test the issue asks for --------------------------------------
def test_predict_on_a_csv_equals_sequential_predict_after_the_same_preprocessing(
    cls_run, tmp_path
) -> None:
    rows = [[r[3], r[2], r[1], r[0], f"id{i}"] for i, r in enumerate(mixed_rows(25, 7))]
    # other column order, the target present (ignored), an extra id column, gaps in b
    data = write_rows(tmp_path / "new.csv", ["label", "color", "b", "a", "key"], rows)
    out = run_predict(cls_run, data, tmp_path / "p.csv", device="cpu", id_column="key", verbose=0)
    probs, pre = reference(cls_run, data)
    # the preprocessing itself, redone by hand from the saved JSON: fill, one-hot, scale
    state = json.loads((cls_run / "preprocessing.json").read_text())
    cats = state["encoder"]["categories"]["color"]
    fill = state["imputer"]["fill"]["b"]
    raw = np.array(
        [
            [float(a), float(b) if b else fill, *(float(c == k) for k in cats)]
            for _, c, b, a, _ in rows
        ]
    )
    norm = state["normalizer"]
    by_hand = (raw - np.array(norm["shift"])) / np.array(norm["scale"])
    model = gu.load_model(cls_run)
    np.testing.assert_allclose(model.predict(by_hand.astype(np.float32)), probs, rtol=1e-5)
    got = read_csv(out)
    assert list(got[0]) == ["row", "key", "label", "score", "prob_no", "prob_yes"]
    assert [r["row"] for r in got] == [str(i) for i in range(1, 26)]
    assert [r["key"] for r in got] == [f"id{i}" for i in range(25)]
    mine = np.array([[float(r["prob_no"]), float(r["prob_yes"])] for r in got])
    np.testing.assert_allclose(mine, probs, rtol=1e-6, atol=1e-7)  # fp32, shortest decimals
    assert [r["label"] for r in got] == [pre.class_names[i] for i in probs.argmax(1)]
    np.testing.assert_allclose([float(r["score"]) for r in got], probs.max(1), rtol=1e-6)
    # the same rows as JSONL in, JSONL out
    lines = [dict(zip(["a", "b", "color"], [r[3], r[2], r[1]], strict=True)) for r in rows]
    for line in lines:
        line["a"] = float(line["a"])
        line["b"] = float(line["b"]) if line["b"] else None
    jsonl = run_predict(cls_run, write_jsonl(tmp_path / "new.jsonl", lines), tmp_path / "p.jsonl",
                        device="cpu", verbose=0)  # fmt: skip
    again = [json.loads(s) for s in jsonl.read_text().splitlines()]
    np.testing.assert_allclose([r["prob_yes"] for r in again], probs[:, 1], rtol=1e-6, atol=1e-7)


def test_evaluate_a_train_run_with_its_saved_preprocessing(cls_run, tmp_path) -> None:
    data = write_rows(tmp_path / "held.csv", ["a", "b", "color", "label"], mixed_rows(40, 3))
    res = run_evaluate(cls_run, data, device="cpu", predictions=tmp_path / "e.csv", verbose=0)
    probs, pre = reference(cls_run, data)
    y = np.array([pre.class_names.index(r[3]) for r in mixed_rows(40, 3)])
    assert res["task"] == "classification" and res["examples"] == 40
    assert res["accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()))
    p_true = probs[np.arange(40), y]
    assert res["log_loss"] == pytest.approx(float(-np.log(p_true).mean()), rel=1e-5)
    matrix = read_csv(cls_run / "eval" / "confusion_matrix_held.csv")
    assert sum(int(v) for r in matrix for k, v in r.items() if k != "true\\predicted") == 40
    saved = json.loads((cls_run / "eval" / "held.json").read_text())
    assert saved["macro_f1"] == res["macro_f1"]
    rows = read_csv(tmp_path / "e.csv")
    assert [r["target"] for r in rows] == [r[3] for r in mixed_rows(40, 3)]
    with pytest.raises(DataError, match="no target column 'label'"):
        run_evaluate(cls_run, write_rows(tmp_path / "x.csv", ["a", "b", "color"], [[1, 2, "red"]]))


def test_regression_values_metrics_and_numpy_rows_by_position(reg_run, tmp_path) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 3))
    y = 2 * x[:, 0] - x[:, 1]
    rows = [[*map(float, r), 1.0, float(t)] for r, t in zip(x, y, strict=True)]
    data = write_rows(tmp_path / "new.csv", ["a", "b", "c", "k", "y"], rows)
    pred, _ = reference(reg_run, data)
    out = run_predict(reg_run, data, tmp_path / "p.csv", device="cpu", verbose=0)
    got = np.array([float(r["prediction"]) for r in read_csv(out)])
    np.testing.assert_allclose(got, pred[:, 0], rtol=1e-6, atol=1e-6)
    res = run_evaluate(reg_run, data, device="cpu", verbose=0)
    err = pred[:, 0].astype(np.float64) - y
    assert res["mse"] == pytest.approx(float((err**2).mean()), rel=1e-5)
    assert res["mae"] == pytest.approx(float(np.abs(err).mean()), rel=1e-5)
    assert res["r2"] == pytest.approx(1 - (err**2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-5)
    # a bare (N, 4) array: the training file's feature columns, by position (k dropped)
    np.save(tmp_path / "x.npy", np.c_[x, np.ones(12)])
    arr = run_predict(reg_run, tmp_path / "x.npy", device="cpu", verbose=0)
    assert arr == tmp_path / "x.predictions.csv"
    np.testing.assert_allclose([float(r["prediction"]) for r in read_csv(arr)], got)


def test_unseen_categories_are_refused_unless_asked_for(cls_run, tmp_path) -> None:
    rows = [[0.5, 0.1, "red"], [0.2, -0.3, "purple"], [1.0, 0.0, "green"]]
    data = write_rows(tmp_path / "new.csv", ["a", "b", "color"], rows)
    out = tmp_path / "p.csv"
    with pytest.raises(DataError, match=r"column 'color' row 2 holds 'purple', a category the "):
        run_predict(cls_run, data, out, verbose=0)
    assert not out.exists()
    run_predict(cls_run, data, out, unseen_category="ignore", device="cpu", verbose=0)
    probs, _ = reference(cls_run, data)  # the run's own rule: all-zero one-hot
    got = np.array([float(r["prob_yes"]) for r in read_csv(out)])
    np.testing.assert_allclose(got, probs[:, 1], rtol=1e-6, atol=1e-7)


# ---- text classifiers and language models --------------------------------------------------
def test_text_classifier_predictions_agree_with_evaluate(classifier_run, tmp_path) -> None:
    held = texts(12, 4)
    labelled = write_rows(tmp_path / "held.csv", ["text", "label"], held)
    unlabelled = write_jsonl(tmp_path / "held.jsonl", [{"text": t} for t, _ in held])
    out = run_predict(classifier_run, unlabelled, device="cpu", verbose=0)
    assert out == tmp_path / "held.predictions.csv"
    rows = read_csv(out)
    assert list(rows[0]) == ["row", "label", "score", "prob_neg", "prob_pos"]
    probs = np.array([[float(r["prob_neg"]), float(r["prob_pos"])] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert [r["label"] for r in rows] == [["neg", "pos"][i] for i in probs.argmax(1)]
    res = run_evaluate(
        classifier_run, labelled, device="cpu", predictions=tmp_path / "e.jsonl", verbose=0
    )
    agree = np.mean([r["label"] == lab for r, (_, lab) in zip(rows, held, strict=True)])
    assert res["accuracy"] == pytest.approx(agree)
    per_row = [json.loads(s) for s in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [r["target"] for r in per_row] == [lab for _, lab in held]
    assert [r["label"] for r in per_row] == [r["label"] for r in rows]


def test_language_models_complete_prompts_greedily(base_gpt, sft_run, tmp_path) -> None:
    from groundup.generate import SampleConfig, sample_reply, sample_text

    prompts = ["add 3 and 1", "the", ""]
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p, "n": i} for i, p in enumerate(prompts)])
    out = run_predict(base_gpt, data, max_new_tokens=6, device="cpu", id_column="n", verbose=0)
    assert out == tmp_path / "p.predictions.jsonl"
    got = [json.loads(s) for s in out.read_text().splitlines()]
    tm = load_model(base_gpt)
    eot = tm.tokenizer.decode([tm.tokenizer.eot_id])
    for row, (i, prompt) in zip(got, enumerate(prompts), strict=True):
        want = sample_text(tm.model, tm.tokenizer, SampleConfig(prompt, 6, 0.0, None))
        assert row == {"n": i, "prompt": prompt, "completion": want.split(eot)[0]}
    # SFT: answered through its chat template, prompts read by the field it was trained on
    asks = write_jsonl(tmp_path / "a.jsonl", [{"instruction": p} for p in prompts[:2]])
    out = run_predict(sft_run, asks, tmp_path / "a.csv", max_new_tokens=5, device="cpu", verbose=0)
    sft = load_model(sft_run)
    for row, prompt in zip(read_csv(out), prompts[:2], strict=True):
        want = sample_reply(sft.model, sft.tokenizer, SampleConfig(prompt, 5, 0.0, None), "auto")
        assert row == {"prompt": prompt, "completion": want}


def test_language_model_losses_per_row(base_gpt, sft_run, tmp_path) -> None:
    rows = [{"instruction": f"add {a} and 1", "output": str(a + 1)} for a in range(5)]
    data = write_jsonl(tmp_path / "s.jsonl", rows)
    res = run_evaluate(sft_run, data, device="cpu", predictions=tmp_path / "s.csv", verbose=0)
    per = read_csv(tmp_path / "s.csv")
    n = np.array([int(r["response_tokens"]) for r in per])
    loss = np.array([float(r["loss"]) for r in per])
    assert n.sum() == res["response_tokens"]
    assert float((n * loss).sum() / n.sum()) == pytest.approx(res["loss"], rel=1e-5)
    docs = write_jsonl(tmp_path / "d.jsonl", [{"text": "the cat sat"}, {"text": "on a mat."}])
    res = run_evaluate(base_gpt, docs, device="cpu", predictions=tmp_path / "d.csv", verbose=0)
    per = read_csv(tmp_path / "d.csv")
    assert [int(r["tokens"]) for r in per] == [11, 9]  # bytes, each document's eot a target
    assert res["tokens"] == 11 + 9 + 2


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory) -> Path:
    from groundup.interop import export_hf
    from groundup.models.bert import BertConfig, BertForMaskedLM

    tok = Tokenizer.train(
        ["a few words to learn", "some more words"],
        kind="bpe",
        vocab_size=300,
        min_frequency=1,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    )
    cfg = BertConfig(
        n_layer=1, n_head=2, n_embd=16, intermediate_size=32, block_size=32, vocab_size=320
    )
    return export_hf(BertForMaskedLM(cfg), tmp_path_factory.mktemp("mlm") / "bert", tok)


def test_a_masked_language_model_is_refused_naming_what_works(mlm_folder, tmp_path) -> None:
    data = write_jsonl(tmp_path / "p.jsonl", [{"text": "a few words"}])
    with pytest.raises(ConfigError, match="masked language model.*fine-tune it into a classifier"):
        run_predict(mlm_folder, data, verbose=0)


# ---- bad input through the command line: one line, exit code 2, no output file -------------
@pytest.fixture
def cli(monkeypatch):
    """`groundup.cli.main`, with predict registered when cli.py does not list it yet."""
    from groundup import cli as cli_module
    from groundup.cli_predict import PREDICT_COMMAND

    if "predict" not in cli_module.COMMANDS:
        monkeypatch.setitem(cli_module.COMMANDS, "predict", PREDICT_COMMAND)
    return cli_module.main


def one_line_error(capsys, main, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line_exit_2_and_leaves_no_output(
    cls_run, base_gpt, mlm_folder, tmp_path, capsys, cli
) -> None:
    def bad(name: str, text: str) -> Path:
        (tmp_path / name).write_text(text, encoding="utf-8")
        return tmp_path / name

    out = tmp_path / "out.csv"
    cases = [
        (cls_run, bad("cols.csv", "a,colour\n1,red\n"), "lacks the column(s) 'b', 'color'"),
        (cls_run, bad("cat.csv", "a,b,color\n1,2,red\n1,2,teal\n"), "row 2 holds 'teal'"),
        (cls_run, bad("type.csv", "a,b,color\n1,2,red\n1,two,red\n"), "'b' row 2 holds 'two'"),
        (cls_run, bad("empty.csv", ""), "is empty"),
        (cls_run, tmp_path / "nowhere.csv", "data file not found"),
        (base_gpt, bad("p.jsonl", '{"prompt": "hi"}\n{"text": "x"}\n'), "line 2: no 'prompt'"),
        (base_gpt, bad("e.jsonl", "\n"), "has no rows"),
        (mlm_folder, bad("m.jsonl", '{"text": "x"}\n'), "masked language model"),
    ]
    for run, data, message in cases:
        argv = ["predict", str(run), "--data", str(data), "--out", str(out), "--device", "cpu"]
        assert message in one_line_error(capsys, cli, argv)
        assert not out.exists(), data
    # a failed run leaves an earlier output as it was, and no temporary file beside it
    out.write_text("earlier\n")
    argv = ["predict", str(cls_run), "--data", str(tmp_path / "cat.csv"), "--out", str(out)]
    one_line_error(capsys, cli, argv)
    assert out.read_text() == "earlier\n" and sorted(p.name for p in tmp_path.glob(".*")) == []
    err = one_line_error(
        capsys, cli, ["predict", str(cls_run), "--data", str(out), "--out", "x.txt"]
    )
    assert "must end with .csv or .jsonl" in err
    assert cli(["predict", str(cls_run), "--data", str(tmp_path / "cat.csv"), "--out", str(out),
                "--unseen-category", "ignore"]) == 0  # fmt: skip
    assert len(read_csv(out)) == 2


def test_cli_evaluate_writes_predictions(cls_run, tmp_path, capsys) -> None:
    from groundup.cli import main

    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    if "--predictions" not in capsys.readouterr().out:
        pytest.skip("cli.py does not wire evaluate --predictions yet")
    data = write_rows(tmp_path / "held.csv", ["a", "b", "color", "label"], mixed_rows(10, 9))
    argv = ["evaluate", str(cls_run), "--data", str(data), "--predictions", str(tmp_path / "e.csv")]
    assert main(argv) == 0
    assert len(read_csv(tmp_path / "e.csv")) == 10
    bad = write_rows(tmp_path / "bad.csv", ["a", "b", "color", "label"], [[1, 2, "teal", "no"]])
    argv = ["evaluate", str(cls_run), "--data", str(bad), "--predictions", str(tmp_path / "f.csv")]
    assert "holds 'teal'" in one_line_error(capsys, main, argv)
    assert not (tmp_path / "f.csv").exists()


def test_python_errors_are_typed(cls_run, tmp_path) -> None:
    with pytest.raises(MissingFileError):
        run_predict(cls_run, tmp_path / "none.csv", verbose=0)
    with pytest.raises(ConfigError, match="batch-size"):
        run_predict(cls_run, tmp_path / "none.csv", batch_size=0, verbose=0)
    with pytest.raises(ConfigError, match="temperature"):
        run_predict(cls_run, tmp_path / "none.csv", temperature=-1.0, verbose=0)


def test_conform_without_an_imputer_and_class_names_of_a_builtin_run(tmp_path) -> None:
    from groundup.data.tabular import Table
    from groundup.data.tabular_pipeline import TabularDataConfig, prepare_tabular

    data = write_rows(tmp_path / "t.csv", ["a", "b", "color", "label"], mixed_rows(40, 2))
    pre = prepare_tabular(TabularDataConfig(path=str(data), target="label", missing="drop")).fitted
    new = Table({"a": ["1.5", "2"], "b": [0.1, np.nan], "color": ["red", "red"]})
    with pytest.raises(DataError, match=r"column 'b' row 2 is empty; the run has no fill value"):
        pre.conform(new)
    ok = pre.conform(Table({"a": ["1.5", " 2"], "b": [0.1, 0.2], "color": ["red", "blue"]}))
    assert ok["a"].dtype.kind == "f" and ok["a"][0] == 1.5  # numbers written as text
    iris = prepare_tabular(TabularDataConfig(dataset="iris", val_size=0.0)).fitted
    names = Table({"target": ["setosa", "virginica", "1"]})
    assert iris.transform_y(names).tolist() == [0, 2, 1]
    with pytest.raises(DataError, match="row 1 holds 'rose', not a class of the run"):
        iris.transform_y(Table({"target": ["rose"]}))
