"""Text-classification data: labelled text files, a label vocabulary, encoded batches, a report.

Labels are strings from end to end (a CSV says "2", a JSONL may say 2: both are "2"); their
ids come from the training split only, so a label that appears first in validation is an
error that names it, never a silent new class.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from groundup.data.tokenizers import Tokenizer
from groundup.errors import ConfigError, DataError, MissingFileError, ShapeError, TokenizerError
from groundup.finetune.sft import decode_utf8
from groundup.registry import did_you_mean
from groundup.train.metrics import confusion_matrix

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
STYLES = ("bert", "gpt")
CLS_NAMES = ("[CLS]", "<s>")  # BERT, RoBERTa
SEP_NAMES = ("[SEP]", "</s>")


# ---- reading -------------------------------------------------------------------------------
def _missing_field(name: str, what: str, key: str, available: Sequence[str], option: str) -> str:
    return (
        f"{name} has no {what} '{key}'{did_you_mean(key, available)}; available: "
        f"{', '.join(map(str, available)) or 'none'}; set data.{option} (or --{option.replace('_', '-')})"
    )


def _label_str(value: Any, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: missing label; fill it in or remove the row")
    if isinstance(value, (str, int, float, bool)):
        return str(value).strip()
    raise DataError(
        f"{where}: label must be a string or number, got {type(value).__name__}; "
        "one label per example"
    )


def _text_str(value: Any, where: str) -> str:
    if value is not None and not isinstance(value, str):
        raise DataError(
            f"{where}: text must be a string, got {type(value).__name__}; quote it in the file"
        )
    if not value or not value.strip():
        raise DataError(f"{where}: empty text; fill it in or remove the row")
    return value


def _read_table(
    text: str, name: str, delimiter: str, text_field: str, label_field: str
) -> tuple[list[str], list[str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    if not header:
        raise DataError(f"{name} is empty; write a header row with '{text_field}' and labels")
    for key, option in ((text_field, "text_field"), (label_field, "label_field")):
        if key not in header:
            raise DataError(_missing_field(name, "column", key, header, option))
    texts, labels = [], []
    for row in reader:
        if not any((v or "").strip() for k, v in row.items() if k is not None):
            continue  # blank line
        where = f"{name} line {reader.line_num}"  # line_num: where the record ends
        texts.append(_text_str(row[text_field], where))
        labels.append(_label_str(row[label_field], where))
    return texts, labels


def _read_jsonl(
    text: str, name: str, text_field: str, label_field: str
) -> tuple[list[str], list[str]]:
    if text.lstrip().startswith("["):  # a .json holding one array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{name} line {e.lineno}: invalid JSON ({e.msg}); fix the syntax"
            ) from None
        rows = [(f"{name} item {i}", obj) for i, obj in enumerate(items, 1)]
    else:
        rows = []
        # Trap: str.splitlines also splits on U+2028, which JSON strings may hold raw.
        for i, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{name} line {i}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{name} line {i}: invalid JSON ({e.msg} at column {e.colno}); "
                    "write one JSON object per line"
                ) from None
    texts, labels = [], []
    for where, obj in rows:
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        for key, option in ((text_field, "text_field"), (label_field, "label_field")):
            if key not in obj:
                raise DataError(_missing_field(where, "field", key, list(obj), option))
        texts.append(_text_str(obj[text_field], where))
        labels.append(_label_str(obj[label_field], where))
    return texts, labels


def read_labelled_text(
    path: str | os.PathLike[str], text_field: str = "text", label_field: str = "label"
) -> tuple[list[str], list[str]]:
    """Texts and their labels (as strings) from a .csv/.tsv (header row) or .jsonl/.json file."""
    p = Path(path)
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot read {p}: unknown extension '{p.suffix}'; use .csv, .tsv, .jsonl or .json"
        )
    if not p.is_file():
        raise MissingFileError(f"data file {p} not found; check the path")
    text = decode_utf8(p.read_bytes(), str(p))
    if fmt == "jsonl":
        texts, labels = _read_jsonl(text, str(p), text_field, label_field)
    else:
        delim = "," if fmt == "csv" else "\t"
        texts, labels = _read_table(text, str(p), delim, text_field, label_field)
    if not texts:
        raise DataError(f"{p} has no examples; add rows with '{text_field}' and '{label_field}'")
    return texts, labels


# ---- labels --------------------------------------------------------------------------------
_INT = re.compile(r"[+-]?\d+")


def _label_key(label: str) -> tuple[int, int, str]:
    # int-like labels first, by value ("2" < "10"), then the others alphabetically
    return (0, int(label), label) if _INT.fullmatch(label) else (1, 0, label)


class LabelVocab:
    """Class names <-> ids, fixed by the training split; saved in the run directory."""

    def __init__(self, labels: Sequence[str]) -> None:
        labels = [str(x) for x in labels]
        if not labels:
            raise DataError("no labels: a classifier needs at least one class")
        if len(set(labels)) != len(labels):
            raise DataError(f"duplicate labels in {labels}; each class must appear once")
        self.labels: list[str] = labels
        self.index: dict[str, int] = {x: i for i, x in enumerate(labels)}

    @classmethod
    def from_labels(cls, labels: Sequence[str]) -> LabelVocab:
        """Sorted unique training labels (int-like ones numerically)."""
        return cls(sorted(set(map(str, labels)), key=_label_key))

    def encode(self, labels: Sequence[str], where: str = "train") -> Tensor:
        """(N,) int64 class ids; labels never seen in training raise DataError naming them."""
        index = self.index
        unseen = sorted({str(x) for x in labels} - index.keys(), key=_label_key)
        if unseen:
            shown = ", ".join(repr(x) for x in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
            raise DataError(
                f"{len(unseen)} label(s) in {where} never appear in training: {shown}; add "
                f"training examples of them or remove them from {where} "
                f"(training labels: {', '.join(self.labels[:20])})"
            )
        return torch.tensor([index[str(x)] for x in labels], dtype=torch.int64)

    def decode(self, ids: Sequence[int] | Tensor) -> list[str]:
        values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return [self.labels[int(i)] for i in values]

    def to_list(self) -> list[str]:
        return list(self.labels)

    @classmethod
    def from_list(cls, labels: Sequence[str]) -> LabelVocab:
        return cls(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"LabelVocab({self.labels!r})"


# ---- encoding ------------------------------------------------------------------------------
class EncodedTexts(NamedTuple):
    input_ids: Tensor  # (N, L) int64, right-padded with pad_id
    attention_mask: Tensor  # (N, L) int64, 1 on real tokens
    truncated: int  # texts cut to fit max_len


def _special_id(tokenizer: Tokenizer, names: Sequence[str], style: str) -> int:
    for n in names:
        i = tokenizer.token_to_id(n)
        if i is not None:
            return i
    raise TokenizerError(
        f"style '{style}' wraps each text in [CLS] ... [SEP] but this tokenizer has no "
        f"{names[0]} token; use style='gpt' or a BERT tokenizer.json"
    )


def encode_texts(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    max_len: int,
    style: str = "bert",
    pad_id: int | None = None,
) -> EncodedTexts:
    """Token ids and attention mask, right-padded to the longest text (<= max_len).

    bert: [CLS] text [SEP] (the head reads position 0). gpt: text then the eot id when the
    tokenizer has one, so the last real token (at attention_mask.sum(1) - 1, where a
    causal model has seen the whole text) is the same boundary for every example.
    Longer texts keep their start and still end with [SEP] / eot.
    """
    if style not in STYLES:
        raise ConfigError(
            f"unknown encoding style '{style}'{did_you_mean(style, STYLES)}; valid: bert, gpt"
        )
    if not texts:
        raise DataError("no texts to encode; check the data file")
    if style == "bert":
        head = [_special_id(tokenizer, CLS_NAMES, style)]
        tail = [_special_id(tokenizer, SEP_NAMES, style)]
    else:
        head, tail = [], ([] if tokenizer.eot_id is None else [tokenizer.eot_id])
    extra = len(head) + len(tail)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len <= extra:
        raise ConfigError(
            f"max_len must be an integer > {extra} for style '{style}' (room for one token "
            f"besides the special ones), got {max_len!r}"
        )
    if pad_id is None:
        pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    room = max_len - extra
    arrays = tokenizer.encode_batch_arrays(list(texts))  # parallel in Rust for BPE
    truncated = sum(len(a) > room for a in arrays)
    head_a, tail_a = np.array(head, dtype=np.int64), np.array(tail, dtype=np.int64)
    rows = [np.concatenate([head_a, a[:room], tail_a]) for a in arrays]
    lengths = np.array([len(r) for r in rows])
    width = int(lengths.max())
    real = np.arange(width)[None, :] < lengths[:, None]  # (N, L)
    ids = np.full((len(rows), width), int(pad_id), dtype=np.int64)
    ids[real] = np.concatenate(rows)  # row-major scatter, no per-token loop
    return EncodedTexts(torch.from_numpy(ids), torch.from_numpy(real.astype(np.int64)), truncated)


# ---- evaluation ----------------------------------------------------------------------------
def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # 0 where the denominator is 0: sklearn's zero_division default (after its warning)
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def classification_report(pred: Tensor, target: Tensor, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class scores and the confusion matrix.

    pred: (N,) class ids or (N, C) scores (argmax is taken). Macro averages run over the
    classes present in target or pred, like sklearn's f1_score(average="macro") without
    `labels`; the confusion matrix has rows = true class, columns = predicted.
    """
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.dim() == 2:
        pred = pred.argmax(-1)
    pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
    if pred.numel() != target.numel():
        raise ShapeError(
            f"classification_report: {pred.numel()} predictions for {target.numel()} targets; "
            "pass one prediction per example"
        )
    if target.numel() == 0:
        raise DataError("classification_report: no examples to score")
    c = len(labels)
    for name, t in (("pred", pred), ("target", target)):
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= c:
            raise DataError(
                f"classification_report: {name} holds class id {lo if lo < 0 else hi} but there "
                f"are {c} labels (ids 0..{c - 1}); pass the label list the model was trained on"
            )
    cm = confusion_matrix(target, pred, c).numpy()  # (C, C), rows = true
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(0).astype(np.float64), cm.sum(1).astype(np.float64)
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
    f1 = _safe_div(2 * tp, predicted + support)
    present = (predicted + support) > 0
    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": float(tp.sum() / n),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float((f1 * support).sum() / n),
        "per_class": {
            str(label): {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": [str(x) for x in labels],
        "confusion_matrix": cm.tolist(),
    }


def write_confusion_matrix(report: dict[str, Any], path_csv: str | os.PathLike[str]) -> Path:
    """CSV of the report's confusion matrix: a header of predicted labels, a row per true one."""
    p = Path(path_csv)
    p.parent.mkdir(parents=True, exist_ok=True)
    labels, cm = report["labels"], report["confusion_matrix"]
    with p.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true\\predicted", *labels])
        for label, row in zip(labels, cm, strict=True):
            w.writerow([label, *row])
    return p
