"""Reading one run folder for the report: its config, its metrics records, its results.

Everything the report shows comes from files a run wrote (see groundup/runs/run.py): nothing
is recomputed from the model. Old runs lack the newer record keys (grad_norm, time_s, tokens,
data_wait, val_items) and an interrupted one has no results.json; both still load. A line that
a kill cut short can only be the last one of metrics.jsonl: anywhere else a broken line means
the file was damaged, and the error names its line.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from groundup.errors import ConfigError, DataError, MissingFileError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
LR_FIND_FILE = "lr_find.json"
# written by finetune/evaluate for classifiers: the confusion matrix when results.json lacks it
CLASSIFICATION_REPORT = "report_test.json"
STEP_EVENTS = ("train", "eval", "epoch")  # one record per step each
HOW_TO_FIX = "give a folder that groundup train, pretrain or finetune wrote"


@dataclass
class RunData:
    """What the report knows about one run folder."""

    path: Path
    name: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    results: dict[str, Any] | None  # None: the run did not finish (interrupted or running)
    command: str  # train, pretrain, finetune, or "run" when the config does not say
    params: int | None = None
    lr_find: dict[str, Any] | None = None
    confusion: dict[str, Any] | None = None  # {"labels": [...], "matrix": [[...]]}
    notes: list[str] = field(default_factory=list)  # what was left out while reading

    def events(self, event: str) -> list[dict[str, Any]]:
        """The records of one kind (train, eval, epoch, message, sample), in file order."""
        return [r for r in self.records if r.get("event") == event]

    @property
    def finished(self) -> bool:
        return self.results is not None


def load_run(path: str | Path, strict: bool = True) -> RunData:
    """Read the run folder `path`.

    strict (what `groundup report` uses): a run that logged nothing (no or an empty
    metrics.jsonl) is an error. Not strict (the report written when a run ends): it loads with
    no records, and unreadable optional files are left out with a note instead of an error.
    A folder without config.yaml is never a run.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no run folder {path}; {HOW_TO_FIX}")
    if not path.is_dir():
        raise MissingFileError(f"{path} is a file, not a run folder; {HOW_TO_FIX}")
    config = read_config(path)
    notes: list[str] = []
    records = last_per_step(read_records(path / METRICS_FILE, strict=strict, notes=notes))
    results = _read_json(path / RESULTS_FILE, strict, notes)
    if results is not None and not isinstance(results, dict):
        results = _bad_json(path / RESULTS_FILE, "not a JSON object", strict, notes)
    lr_find = _read_lr_find(path, notes)
    return RunData(
        path=path,
        name=path.resolve().name,
        config=config,
        records=records,
        results=results,
        command=infer_command(config),
        params=find_params(path, results),
        lr_find=lr_find,
        confusion=find_confusion(path, results),
        notes=notes,
    )


def read_config(path: Path) -> dict[str, Any]:
    """The run's resolved config.yaml as a dict."""
    file = path / CONFIG_FILE
    if not file.is_file():
        raise MissingFileError(f"{path} is not a run folder (no {CONFIG_FILE}); {HOW_TO_FIX}")
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        raise ConfigError(
            f"{file}{line} is not valid YAML; restore the config.yaml the run wrote"
        ) from None
    if not isinstance(config, dict):
        raise ConfigError(f"{file} is not a YAML mapping; restore the config.yaml the run wrote")
    return config


def read_records(file: Path, strict: bool = True, notes: list[str] | None = None) -> list[dict]:
    """The JSON records of metrics.jsonl. The last line may be cut short by a kill (left out,
    with a note); a broken line before it is a DataError naming file:line (strict) or left out
    with a note."""
    notes = [] if notes is None else notes
    if not file.is_file():
        if strict:
            raise MissingFileError(
                f"{file.parent} has no {METRICS_FILE}: the run has logged nothing yet; "
                "report it once it has trained for train.log_every steps"
            )
        return []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{file} is not UTF-8 text; it is not a file groundup wrote") from None
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        if strict:
            raise DataError(
                f"{file} is empty: the run has logged nothing yet; report it once it has "
                "trained for train.log_every steps"
            )
        return []
    records = []
    for index, (number, line) in enumerate(numbered):
        record = _parse_line(line)
        if record is not None:
            records.append(record)
        elif index == len(numbered) - 1 and line.lstrip().startswith("{"):
            # a record a kill cut short: what rewind_records drops on resume
            notes.append(f"{METRICS_FILE}:{number} was cut short (the run was killed); left out")
        elif strict:
            raise DataError(
                f"{file}:{number} is not a JSON record; the file is damaged: fix or delete "
                "that line"
            )
        else:
            notes.append(f"{METRICS_FILE}:{number} is not a JSON record; left out")
    if strict and not records:
        raise DataError(
            f"{file} holds no complete record: the run has logged nothing yet; report it "
            "once it has trained for train.log_every steps"
        )
    return records


def last_per_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One train/eval/epoch record per step: the last one. A run resumed before resumes cut
    the log back to the checkpoint logged the steps after it twice; messages and samples all
    stay (several may share a step)."""
    last = {}
    for index, record in enumerate(records):
        if record.get("event") in STEP_EVENTS:
            last[(record["event"], _step_key(record.get("step")))] = index
    kept = set(last.values())
    return [
        record
        for index, record in enumerate(records)
        if record.get("event") not in STEP_EVENTS or index in kept
    ]


def _step_key(step: Any) -> Any:
    return step if isinstance(step, (int, float, str)) else repr(step)


def _parse_line(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _read_json(file: Path, strict: bool, notes: list[str]) -> Any:
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _bad_json(file, "not valid JSON", strict, notes)


def _bad_json(file: Path, what: str, strict: bool, notes: list[str]) -> None:
    if strict:
        raise DataError(f"{file} is {what}; it is damaged: delete it or restore it")
    notes.append(f"{file.name} is {what}; left out")
    return None


def _read_lr_find(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """lr_find.json ({"lrs", "losses", "suggestion"}), optional: a bad one is left out."""
    found = _read_json(path / LR_FIND_FILE, strict=False, notes=notes)
    if found is None:
        return None
    lrs, losses = (found.get(k) if isinstance(found, dict) else None for k in ("lrs", "losses"))
    if not (isinstance(lrs, list) and isinstance(losses, list) and len(lrs) == len(losses)):
        notes.append(f"{LR_FIND_FILE} lacks equal-length lists lrs and losses; left out")
        return None
    return found


def infer_command(config: dict[str, Any]) -> str:
    """Which command wrote the config (the keys only one of them has)."""
    if "layers" in config:
        return "train"
    if "base" in config and "task" in config:
        return "finetune"
    if "model" in config and ("tokenizer" in config or "objective" in config):
        return "pretrain"
    return "run"


def find_params(path: Path, results: dict[str, Any] | None) -> int | None:
    """The parameter count: results.json's, else counted from the shapes in the header of
    model/model.safetensors (no weights read, no torch needed)."""
    for key in ("params", "total_params"):
        value = (results or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return safetensors_params(path / "model" / "model.safetensors")


def safetensors_params(file: Path) -> int | None:
    """Sum of the tensor sizes a safetensors header lists; None when it cannot be read."""
    try:
        with open(file, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100_000_000:  # not a safetensors header
                return None
            header = json.loads(fh.read(size))
        return sum(
            math.prod(entry["shape"])
            for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict)
        )
    except (OSError, struct.error, ValueError, KeyError, TypeError):
        return None


def find_confusion(path: Path, results: dict[str, Any] | None) -> dict[str, Any] | None:
    """{"labels", "matrix"} from results.json, else from the classification report file."""
    found = (results or {}).get("confusion_matrix")
    if isinstance(found, dict):
        labels, matrix = found.get("labels"), found.get("matrix")
    else:
        report = _read_json(path / CLASSIFICATION_REPORT, strict=False, notes=[])
        if not isinstance(report, dict):
            return None
        labels, matrix = report.get("labels"), report.get("confusion_matrix")
    if not _is_square(matrix, labels):
        return None
    return {"labels": [str(x) for x in labels], "matrix": matrix}


def _is_square(matrix: Any, labels: Any) -> bool:
    if not (isinstance(matrix, list) and isinstance(labels, list) and labels):
        return False
    return len(matrix) == len(labels) and all(
        isinstance(row, list)
        and len(row) == len(labels)
        and all(isinstance(x, (int, float)) for x in row)
        for row in matrix
    )
