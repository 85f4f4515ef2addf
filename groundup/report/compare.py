"""What sets runs apart: the headline figures of each run and the config keys that differ.

`summarize` gives one run's headline (best validation loss and its step, tokens, samples, wall
time, params); `config_differences` the flattened dotted keys (`optim.lr`, `layers.1.units`)
whose values are not the same in every run. Both read only what `load_run` loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from groundup.report.figures import number, val_records
from groundup.report.run_data import RunData

# keys that differ between any two runs and say nothing about what was trained
NOT_COMPARED = ("run_dir",)
MISSING = "(absent)"


@dataclass
class Summary:
    """One run's headline figures; None where the run did not record it."""

    best_val_loss: float | None
    best_step: int | None
    final_loss: float | None  # the last training-loss record
    steps: int | None
    tokens: int | None
    samples: int | None
    wall_time_s: float | None
    params: int | None
    val_bpb: float | None = None  # bits per byte: compares language models across tokenizers


def _last(run: RunData, key: str) -> float | None:
    """The last finite value of `key` in the records, else in results.json."""
    for record in reversed(run.records):
        value = number(record.get(key))
        if value is not None:
            return value
    return number((run.results or {}).get(key))


def _as_int(value: float | None) -> int | None:
    return None if value is None else int(value)


def summarize(run: RunData) -> Summary:
    """The headline of `run`: best validation loss (the lowest recorded, with its step; else
    the final one in results.json), the last step, tokens, samples and wall time."""
    best_loss, best_step = None, None
    for record in val_records(run):
        loss = number(record.get("val_loss"))
        if loss is not None and (best_loss is None or loss < best_loss):
            best_loss, best_step = loss, _as_int(number(record.get("step")))
    if best_loss is None:
        results = run.results or {}
        for key in ("final_val_loss", "val_loss"):
            best_loss = number(results.get(key))
            if best_loss is not None:
                best_step = _as_int(number(results.get("steps")))
                break
    trained = run.events("train")
    return Summary(
        best_val_loss=best_loss,
        best_step=best_step,
        final_loss=number(trained[-1].get("loss")) if trained else None,
        steps=_as_int(_last(run, "step") or number((run.results or {}).get("steps"))),
        tokens=_as_int(_last(run, "tokens")),
        samples=_as_int(_last(run, "samples")),
        wall_time_s=_last(run, "time_s"),
        params=run.params,
        val_bpb=number((run.results or {}).get("final_val_bpb")) or _last(run, "val_bpb"),
    )


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys: {"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}; lists
    by index (layers.0.units), so a changed architecture shows layer by layer."""
    if isinstance(tree, dict) and tree:
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(tree, list) and tree and any(isinstance(v, (dict, list)) for v in tree):
        flat = {}
        for index, value in enumerate(tree):
            flat.update(flatten(value, f"{prefix}{index}."))
        if prefix:
            flat[f"{prefix}length"] = len(tree)
        return flat
    return {prefix.rstrip("."): tree}


def config_differences(runs: Sequence[RunData]) -> dict[str, list[Any]]:
    """Dotted key -> each run's value, for the keys whose values are not all equal (a key one
    run lacks counts as different; its value is MISSING)."""
    flats = [flatten(run.config) for run in runs]
    keys: list[str] = []
    for flat in flats:
        keys += [k for k in flat if k not in keys]
    differences = {}
    for key in keys:
        if key in NOT_COMPARED:
            continue
        values = [flat.get(key, MISSING) for flat in flats]
        if any(v != values[0] for v in values[1:]):
            differences[key] = values
    return differences


def unique_names(runs: Sequence[RunData]) -> list[str]:
    """Each run's folder name; runs that share one (a/run, b/run) are named by their parent
    folder too, so the table and the legends tell them apart."""
    plain = [run.name for run in runs]
    names = list(plain)
    for i, run in enumerate(runs):
        if plain.count(run.name) > 1:
            resolved = run.path.resolve()
            names[i] = f"{resolved.parent.name}/{resolved.name}"
    return names
