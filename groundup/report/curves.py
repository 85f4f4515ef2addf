"""The curves a run's metrics.jsonl holds, read once for the diagnosis: the training and
validation series, the non-finite and skipped steps, the data-wait shares, the notes; and the
noise and trend measures its rules are built on (thresholds come from a curve's own noise)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import yaml

from groundup.errors import DataError, MissingFileError


@dataclass
class Curves:
    """The series the detectors read, parsed once from the records."""

    train: list[tuple[int, float]]  # (step, finite training loss)
    nonfinite: list[int]  # steps whose training or validation loss was not finite
    val: list[tuple[int, float]]  # (step, finite val_loss)
    val_records: list[dict[str, Any]]  # the records behind `val`, for val_accuracy / val_items
    skipped: list[tuple[int, int]]  # (step, cumulative skipped_steps) where > 0
    data_wait: list[float]
    messages: list[tuple[int, str]]
    last_step: int
    peak_lr: float  # the largest learning rate the train records show (0: none)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line a kill cut short (or any unreadable one) is
    passed over, as the Trainer's own rewind does."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"{path} not found: point at a run folder written by groundup train, pretrain or "
            "finetune (it holds metrics.jsonl)"
        )
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_optional(path: Path) -> dict[str, Any] | None:
    """A JSON or YAML mapping, or None when the file is absent."""
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise DataError(f"{path} does not parse ({e}); restore it or delete it") from e
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a mapping, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------- parsing


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def parse_curves(records: list[dict[str, Any]]) -> Curves:
    # a record logged twice for one step (an old run's resume) counts once: the last one
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        step = r.get("step") if isinstance(r, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            last[(str(r.get("event")), step)] = r
    ordered = sorted(last.values(), key=lambda r: r["step"])
    by_event: dict[str, list[dict[str, Any]]] = {}
    for r in ordered:
        by_event.setdefault(str(r.get("event")), []).append(r)
    train_recs, epoch_recs = by_event.get("train", []), by_event.get("epoch", [])
    epoch_loss = [r for r in epoch_recs if number(r.get("loss")) is not None]
    source = train_recs if len(train_recs) >= len(epoch_loss) else epoch_loss
    train, nonfinite = [], []
    for r in source:
        loss = number(r.get("loss"))
        if loss is None:
            continue
        if math.isfinite(loss):
            train.append((r["step"], loss))
        else:
            nonfinite.append(r["step"])
    evals = [r for r in by_event.get("eval", []) if number(r.get("val_loss")) is not None]
    val_source = evals or [r for r in epoch_recs if number(r.get("val_loss")) is not None]
    val, val_records = [], []
    for r in val_source:
        loss = float(r["val_loss"])
        if math.isfinite(loss):
            val.append((r["step"], loss))
            val_records.append(r)
        else:
            nonfinite.append(r["step"])
    skipped = []
    for r in train_recs:
        count = number(r.get("skipped_steps"))
        if count:
            skipped.append((r["step"], int(count)))
    waits = [w for r in train_recs if (w := number(r.get("data_wait"))) is not None]
    messages = [
        (r["step"], r["text"])
        for r in by_event.get("message", [])
        if isinstance(r.get("text"), str)
    ]
    return Curves(
        train=train,
        nonfinite=sorted(set(nonfinite)),
        val=val,
        val_records=val_records,
        skipped=skipped,
        data_wait=[w for w in waits if math.isfinite(w)],
        messages=messages,
        last_step=ordered[-1]["step"] if ordered else 0,
        peak_lr=max((number(r.get("lr")) or 0.0 for r in train_recs), default=0.0),
    )


# ---------------------------------------------------------------- noise and trend


def mad_sigma(xs: list[float]) -> float:
    """The standard deviation a normal sample with this median absolute deviation has."""
    if not xs:
        return 0.0
    m = median(xs)
    return 1.4826 * median(abs(x - m) for x in xs)


def curve_noise(ys: list[float]) -> float:
    """Point-to-point noise of a curve: second differences cancel a locally linear trend and
    their MAD ignores a kink; an i.i.d. noise sigma gives second differences of sigma*sqrt(6)."""
    if len(ys) >= 3:
        d2 = [ys[i + 1] - 2 * ys[i] + ys[i - 1] for i in range(1, len(ys) - 1)]
        return mad_sigma(d2) / math.sqrt(6)
    if len(ys) == 2:
        return abs(ys[1] - ys[0]) / math.sqrt(2)
    return 0.0


def rms_step_noise(*segments: list[float]) -> float:
    """The noise of i.i.d. points from the RMS of their successive differences (sigma*sqrt(2)),
    each segment differenced on its own."""
    diffs = [b - a for seg in segments for a, b in zip(seg, seg[1:])]
    return math.sqrt(sum(d * d for d in diffs) / len(diffs) / 2) if diffs else 0.0


def running_median(ys: list[float], half: int) -> list[float]:
    """A centred running median; the window shrinks symmetrically at the ends, so a monotone
    curve is its own trend (no false residuals where a curve starts steep)."""
    out = []
    for i in range(len(ys)):
        h = min(half, i, len(ys) - 1 - i)
        out.append(median(ys[i - h : i + h + 1]))
    return out


def line_slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and the spread of xs around their mean (sum of squares)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0, 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx, sxx


def level_near(series: list[tuple[int, float]], step: int, count: int = 3) -> float | None:
    """The median of the last `count` points at or before `step` (a noise-resistant level)."""
    before = [y for s, y in series if s <= step][-count:]
    return median(before) if before else None


# ---------------------------------------------------------------- config keys
