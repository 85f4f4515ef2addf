"""What a sweep leaves besides its run folders: `sweep.json` (every trial: state, values,
best val_loss and its step, folder), `best_config.yaml` (the best trial's resolved config, to
train with the command as is) and the comparison table printed at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from groundup.files import write_text_atomic
from groundup.sweep.study import resumed_numbers

SUMMARY_FILE = "sweep.json"
BEST_CONFIG = "best_config.yaml"
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}


def summarize(study: Any, sweep_dir: Path, command: str, keys: list[str]) -> dict[str, Any]:
    """The sweep's record: one entry per trial, and the best complete one."""
    resumed = resumed_numbers(study)
    trials = []
    for t in study.get_trials(deepcopy=False):
        state = STATES.get(t.state.name, t.state.name.lower())
        if t.state.name == "WAITING":
            continue
        if state == "failed" and t.number in resumed:
            state = "interrupted"  # another trial goes on with its folder
        values = t.user_attrs.get("values", t.params)
        best = t.value if t.value is not None else _best(t.intermediate_values)
        steps = sorted(t.intermediate_values)
        trials.append(
            {
                "number": t.number,
                "state": state,
                "values": {k: values.get(k) for k in keys},
                "best_val_loss": best,
                "best_step": t.user_attrs.get("best_step"),
                "last_step": steps[-1] if steps else None,
                "evaluations": len(steps),
                "run_dir": str(sweep_dir / t.user_attrs.get("run_dir", "")),
                "resume_of": t.user_attrs.get("resume_of"),
                "seconds": t.user_attrs.get("seconds"),
                "results": t.user_attrs.get("results", {}),
                **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {}),
            }
        )
    complete = [t for t in trials if t["state"] == "complete" and t["best_val_loss"] is not None]
    best = min(complete, key=lambda t: t["best_val_loss"]) if complete else None
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    return {
        "command": command,
        "sweep_dir": str(sweep_dir),
        "objective": "val_loss: the lowest over the run's evaluations (minimized)",
        "counts": counts,
        "best": best,
        "trials": trials,
    }


def write_summary(summary: dict[str, Any], sweep_dir: Path) -> Path:
    path = sweep_dir / SUMMARY_FILE
    write_text_atomic(path, json.dumps(summary, indent=2))
    return path


def write_best_config(summary: dict[str, Any], sweep_dir: Path, run_dir: str) -> Path | None:
    """The best trial's config.yaml with `run_dir` set back to the base config's, so
    `groundup COMMAND best_config.yaml` trains the chosen config in the usual place."""
    best = summary.get("best")
    if best is None:
        return None
    saved = Path(best["run_dir"]) / "config.yaml"
    config = yaml.safe_load(saved.read_text(encoding="utf-8"))
    config["run_dir"] = run_dir
    header = (
        f"# the best of the sweep in {sweep_dir}: trial {best['number']}, val_loss "
        f"{best['best_val_loss']:.4f} at step {best['best_step']}\n"
        f"# groundup {summary['command']} {sweep_dir / BEST_CONFIG}\n"
    )
    path = sweep_dir / BEST_CONFIG
    write_text_atomic(path, header + yaml.safe_dump(config, sort_keys=False))
    return path


def format_table(summary: dict[str, Any], keys: list[str]) -> str:
    """The trials side by side, best first; one row per trial."""
    order = {"complete": 0, "pruned": 1, "failed": 2, "interrupted": 3, "running": 4}

    def rank(t: dict[str, Any]) -> tuple:
        loss = t["best_val_loss"]
        return (order.get(t["state"], 5), loss if loss is not None else math.inf, t["number"])

    header = ["trial", "state", *keys, "best val_loss", "at step", "folder"]
    rows = []
    best = summary.get("best")
    for t in sorted(summary["trials"], key=rank):
        mark = "*" if best is not None and t["number"] == best["number"] else ""
        loss = t["best_val_loss"]
        rows.append(
            [
                f"{t['number']}{mark}",
                t["state"],
                *(_cell(t["values"].get(k)) for k in keys),
                "-" if loss is None else f"{loss:.4f}",
                "-" if t["best_step"] is None else str(t["best_step"]),
                Path(t["run_dir"]).name,
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items())
    footer = f"{len(summary['trials'])} trials ({counts})"
    if best is not None:
        footer += f"; best: trial {best['number']} (*)"
    return "\n".join([*lines, footer])


def _best(values: dict[int, float]) -> float | None:
    finite = [v for v in values.values() if math.isfinite(v)]
    return min(finite) if finite else None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 24 else text[:21] + "..."
