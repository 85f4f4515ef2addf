"""What a training run writes about itself: `metrics.jsonl` records and the throughput numbers
(samples or tokens per second, MFU) of each train log line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from groundup.files import write_text_atomic

METRICS_FILE = "metrics.jsonl"
# record keys measured on the clock: they differ from run to run (and after a resume)
TIMING_KEYS = ("tokens_per_s", "samples_per_s", "mfu", "mfu_datasheet", "time_s", "data_wait")


class MetricsLog:
    """`<run_dir>/metrics.jsonl`, one JSON record a line, flushed at once (a crash loses no
    line already logged). Only rank 0 writes; without a run_dir, or closed, writes do nothing."""

    def __init__(self) -> None:
        self._file: TextIO | None = None

    def open(self, run_dir: Path | None, rank: int) -> None:
        if run_dir is not None and rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(run_dir / METRICS_FILE, "a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()


def rewind_records(path: Path, step: int) -> None:
    """Cut a log of JSON records (metrics.jsonl) back to what a checkpoint of `step` had
    seen: records of later steps, and a line a kill cut short, are dropped (the resumed run
    writes them again). Written to a temporary file and renamed, so a kill here loses nothing.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


def rate_logs(
    items: int,
    elapsed: float,
    *,
    samples_seen: int,
    tokens_seen: int,
    world_size: int,
    flops_per_sample: float | None,
    peak_flops: float | None,
    datasheet_flops: float | None = None,
) -> dict[str, float]:
    """Throughput over a log window of `items` samples (every rank's) in `elapsed` seconds:
    tokens_per_s for token data, else samples_per_s; and, when the FLOPs are known, mfu
    against the measured peak `peak_flops` and mfu_datasheet against `datasheet_flops`."""
    logs: dict[str, float] = {}
    if tokens_seen:
        per_sample = tokens_seen / max(samples_seen, 1)
        logs["tokens_per_s"] = items * per_sample / elapsed
    else:
        logs["samples_per_s"] = items / elapsed
    if flops_per_sample:
        # items count every rank's samples; a peak is one device's
        achieved = items * flops_per_sample / elapsed / world_size
        if peak_flops:
            logs["mfu"] = achieved / peak_flops
        if datasheet_flops:
            logs["mfu_datasheet"] = achieved / datasheet_flops
    return logs


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    """One record added to a finished fit's metrics.jsonl (a generated sample, say)."""
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def sample_record(step: int, text: str) -> dict[str, Any]:
    """The record of a generated sample and the step of the weights that wrote it."""
    return {"event": "sample", "step": step, "text": text}
