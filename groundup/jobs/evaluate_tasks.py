"""`groundup evaluate RUN [RUN ...] --tasks ...`: language models scored on evaluation tasks
(built-in, from spec files, or lm-evaluation-harness tasks), one table for all the runs.

Every task is loaded and checked, and every run's model folder found, before the first model
is scored: a typo in the last task name costs nothing. Results go to `--out` (JSON) and, for
a single groundup run, to `<run>/eval/tasks.json`; per-item predictions on request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from groundup.errors import ConfigError

BUILTIN = "builtin"  # --tasks builtin: every built-in task


def task_refs(tasks: Sequence[str] | str | None) -> list[str]:
    """Task references from a comma-separated string or a list; "builtin" stands for every
    built-in task."""
    if tasks is None:
        return []
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",")]
    refs: list[str] = []
    for ref in tasks:
        if ref == BUILTIN:
            from groundup.evals.builtin_tasks import BUILTIN_TASKS

            refs += sorted(BUILTIN_TASKS)
        elif ref:
            refs.append(ref)
    return refs


def run_task_evaluation(
    runs: Sequence[str | Path],
    tasks: Sequence[str] | str | None = None,
    harness_tasks: Sequence[str] | str | None = None,
    *,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    device: str = "auto",
    precision: str = "fp32",
    out: str | Path | None = None,
    predictions: str | Path | None = None,
    allow_pickle: bool = False,
    verbose: int = 1,
) -> dict[str, Any]:
    """Score each run on the tasks; returns {run: {"tasks", "mean_centered", "harness"}}.

    tasks: built-in names, spec files, or "builtin". harness_tasks: lm-eval task names or
    task YAML files (needs the eval extra). predictions: a folder that gets one JSONL of
    per-item predictions per run and task."""
    from groundup.evals.runner import evaluate_tasks, format_table, write_predictions
    from groundup.evals.tasks import load_tasks
    from groundup.models.folders import model_folder

    refs = task_refs(tasks)
    if not runs:
        raise ConfigError("no run given; name one or more run directories or model folders")
    if not refs and not harness_tasks:
        raise ConfigError(
            "nothing to evaluate: give --tasks (built-in names, spec files, or builtin), "
            "--harness-tasks (lm-eval tasks) or --data FILE"
        )
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"--limit must be an integer >= 1, got {limit!r}")
    loaded = load_tasks(refs) if refs else []
    harness = None
    if harness_tasks:
        from groundup.evals import harness as harness_module  # the eval extra, checked now

        harness_module.resolve_tasks(harness_tasks)
        harness = harness_module
    names = _names(runs)
    for run in runs:
        model_folder(run)  # a wrong path is an error before any scoring
    results: dict[str, Any] = {}
    for name, run in zip(names, runs, strict=True):
        if verbose:
            print(f"== {name} ==", flush=True)
        scorer, format_prompt = _scorer(run, batch_size, device, precision, allow_pickle)
        entry: dict[str, Any] = {"run": str(run)}
        if loaded:
            log = print if verbose else None
            scored = evaluate_tasks(
                scorer, loaded, limit=limit, num_fewshot=num_fewshot,
                format_prompt=format_prompt, log=log,
            )  # fmt: skip
            items = scored.pop("predictions")
            entry.update(scored)
            if predictions is not None:
                write_predictions({"predictions": items}, Path(predictions) / name)
        if harness is not None:
            entry["harness"] = harness.run_harness(
                scorer, harness_tasks, limit=limit, num_fewshot=num_fewshot
            )
        results[name] = entry
    if verbose:
        if loaded:
            print(format_table(results), flush=True)
        if harness is not None:
            print(format_harness_table(results), flush=True)
    _save(results, runs, out, verbose)
    return results


def _names(runs: Sequence[str | Path]) -> list[str]:
    """A short column name per run: the folder's name, its parent's too where two clash."""
    names = [Path(r).name or str(r) for r in runs]
    if len(set(names)) < len(names):
        names = [str(Path(r)) for r in runs]
    if len(set(names)) < len(names):
        raise ConfigError("the same run is given twice; name each run once")
    return names


def _scorer(run: str | Path, batch_size: int, device: str, precision: str, allow_pickle: bool):
    """The scorer of `run`'s language model, and the chat prompt of an SFT run."""
    from groundup.evals.lm import LM_TASKS, LMScorer
    from groundup.evals.training import chat_formatter
    from groundup.models.folders import load_model

    tm = load_model(run, allow_pickle=allow_pickle)
    if tm.task not in LM_TASKS:
        raise ConfigError(
            f"{run} holds a {tm.family} {tm.task} model; evaluation tasks score language "
            f"models; score a classifier with groundup evaluate {run} --data FILE"
        )
    scorer = LMScorer(
        tm.model, tm.tokenizer, device=device, batch_size=batch_size, precision=precision
    )
    fmt = None
    if tm.task == "sft":
        fmt = chat_formatter(tm.tokenizer, tm.meta.get("template", "auto"))
    return scorer, fmt


def format_harness_table(results: dict[str, Any]) -> str:
    """lm-eval's figures, a row per task and metric, a column per run."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name, entry in results.items():
        for task, metrics in (entry.get("harness") or {}).items():
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) and not metric.endswith("_stderr"):
                    rows.setdefault((task, metric), {})[name] = value
    header = ["lm-eval task", "metric", *results]
    lines = [header]
    for (task, metric), values in rows.items():
        cells = [f"{values[n]:.4f}" if n in values else "-" for n in results]
        lines.append([task, metric, *cells])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in lines
    )


def _save(results: dict[str, Any], runs: Sequence[str | Path], out: Any, verbose: int) -> None:
    from groundup.files import write_text_atomic

    text = json.dumps(results, indent=2, default=str)
    targets = [Path(out)] if out is not None else []
    if len(runs) == 1 and (Path(runs[0]) / "config.yaml").is_file():
        targets.append(Path(runs[0]) / "eval" / "tasks.json")
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
        if verbose:
            print(f"saved {path}", flush=True)
