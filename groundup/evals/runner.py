"""Score a language model on evaluation tasks, and print the scores of several models as a table.

The runner only builds prompts and reads scores: the model sits behind a scorer with
lm-evaluation-harness's three requests (`groundup.evals.lm.LMScorer`, or any object with the
same methods):

    loglikelihood([(context, continuation), ...]) -> [(sum log p in nats, is_greedy), ...]
    generate_until([(prompt, {"until": [...], "max_gen_toks": n}), ...]) -> [text, ...]

Each task's requests go to the scorer in one call, so the scorer can batch them as it likes.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from groundup.errors import ConfigError
from groundup.evals.metrics import (
    centered,
    choice_predictions,
    distinct_n,
    exact_match,
    mean,
    perplexity,
    random_baseline,
    token_f1,
)
from groundup.evals.tasks import Item, Task, load_tasks

FormatPrompt = Callable[[str], str]


class Scorer(Protocol):
    """What the runner needs of a model (see the module docstring)."""

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]]
    ) -> list[tuple[float, bool]]: ...  # pragma: no cover

    def generate_until(
        self, requests: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[str]: ...  # pragma: no cover


def fewshot_prefix(task: Task, index: int, k: int) -> str:
    """k examples from the task's few-shot split, each "context<delim>answer", then the
    few-shot delimiter: the text before item `index`'s context. The draw is seeded by the task
    name and the item's index, so it is the same on every run and for every model."""
    if k == 0:
        return ""
    rng = random.Random(f"{task.name}/{index}")  # str seeds are hashed with SHA-512: stable
    picks = rng.sample(range(len(task.fewshot)), k)
    shots = [
        f"{ex.context}{task.target_delimiter}{ex.target}" for ex in (task.fewshot[j] for j in picks)
    ]
    return task.fewshot_delimiter.join(shots) + task.fewshot_delimiter


def _check(tasks: Sequence[Task], limit: int | None, num_fewshot: int | None, chat: bool) -> None:
    """Every setting that could fail a task is checked before the first one is scored."""
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"limit must be a positive number of items per task, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ConfigError(f"num_fewshot must be >= 0, got {num_fewshot}")
    for task in tasks:
        k = task.num_fewshot if num_fewshot is None else num_fewshot
        if k > len(task.fewshot):
            raise ConfigError(
                f"task '{task.name}' has {len(task.fewshot)} few-shot examples, fewer than "
                f"num_fewshot={k}; lower num_fewshot"
                + ("" if task.fewshot else " (or give the task fewshot_data)")
            )
        if chat and k and task.kind == "generation":
            raise ConfigError(
                f"task '{task.name}': few-shot prompts are plain text, not chat turns; use "
                "num_fewshot=0 with a chat (SFT) model's prompt format"
            )


def evaluate_tasks(
    scorer: Scorer,
    tasks: Sequence[Task | str | os.PathLike[str]],
    limit: int | None = None,
    num_fewshot: int | None = None,
    format_prompt: FormatPrompt | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score `scorer` on each task (a Task, a built-in name or a spec file).

    limit: score only the first `limit` items of each task. num_fewshot: override each task's
    own number of few-shot examples. format_prompt: turns a generation item's question into a
    chat model's prompt (an SFT model's chat template); multiple-choice and cloze tasks are
    always scored on raw text. log: called with one line per finished task.

    Returns {"tasks": {name: {"kind", "n", "metric", "score", "baseline", "centered", ...}},
    "mean_centered": mean over tasks, "predictions": {name: [one dict per item]}}; pop
    "predictions" before saving the rest as results (`write_predictions` writes them).
    """
    loaded = load_tasks(tasks)
    _check(loaded, limit, num_fewshot, format_prompt is not None)
    results: dict[str, Any] = {"tasks": {}, "predictions": {}}
    for task in loaded:
        start = time.perf_counter()
        k = task.num_fewshot if num_fewshot is None else num_fewshot
        items = task.items[:limit] if limit else task.items
        contexts = [fewshot_prefix(task, i, k) + item.context for i, item in enumerate(items)]
        score = _SCORERS[task.kind]
        summary, predictions = score(scorer, task, items, contexts, format_prompt)
        summary["score"] = summary[task.metric]
        summary["centered"] = centered(summary["score"], summary["baseline"])
        results["tasks"][task.name] = {
            "kind": task.kind,
            "n": len(items),
            "num_fewshot": k,
            "metric": task.metric,
            **summary,
            "source": task.source,
            "time_s": round(time.perf_counter() - start, 3),
        }
        results["predictions"][task.name] = predictions
        if log is not None:
            log(
                f"{task.name}: {task.metric} {summary['score']:.4f} "
                f"(random {summary['baseline']:.4f}, {len(items)} items)"
            )
    results["mean_centered"] = mean([t["centered"] for t in results["tasks"].values()])
    return results


Scored = tuple[dict[str, float], list[dict[str, Any]]]


def _loglikelihoods(scorer: Scorer, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
    out = list(scorer.loglikelihood(requests))
    if len(out) != len(requests):
        raise RuntimeError(f"the scorer answered {len(out)} of {len(requests)} requests")
    return [(float(ll), bool(greedy)) for ll, greedy in out]


def _multiple_choice(
    scorer: Scorer, task: Task, items: Sequence[Item], contexts: list[str], _: object
) -> Scored:
    delim = task.target_delimiter
    requests = [(ctx, f"{delim}{c}") for ctx, item in zip(contexts, items) for c in item.choices]
    answers = iter(_loglikelihoods(scorer, requests))
    acc, acc_norm, rows = [], [], []
    for ctx, item in zip(contexts, items):
        lls = [next(answers)[0] for _ in item.choices]
        pred, pred_norm = choice_predictions(lls, item.choices)
        acc.append(float(pred == item.gold))
        acc_norm.append(float(pred_norm == item.gold))
        rows.append(
            {
                "context": ctx,
                "choices": list(item.choices),
                "gold": item.gold,
                "predicted": pred,
                "predicted_norm": pred_norm,
                "logliks": lls,
                "doc": dict(item.doc),
            }
        )
    baseline = random_baseline([len(item.choices) for item in items])
    return {"acc": mean(acc), "acc_norm": mean(acc_norm), "baseline": baseline}, rows


def _cloze(
    scorer: Scorer, task: Task, items: Sequence[Item], contexts: list[str], _: object
) -> Scored:
    delim = task.target_delimiter
    requests = [
        (ctx, f"{delim}{ref}") for ctx, item in zip(contexts, items) for ref in item.references
    ]
    answers = iter(_loglikelihoods(scorer, requests))
    acc, best_lls, rows = [], [], []
    for ctx, item in zip(contexts, items):
        scored = [next(answers) for _ in item.references]
        lls = [ll for ll, _ in scored]
        hit = any(greedy for _, greedy in scored)  # right if the greedy continuation is a reference
        acc.append(float(hit))
        best_lls.append(max(lls))
        rows.append(
            {
                "context": ctx,
                "gold": list(item.references),
                "correct": hit,
                "logliks": lls,
                "doc": dict(item.doc),
            }
        )
    summary = {
        "acc": mean(acc),
        "loglik": mean(best_lls),
        "perplexity": perplexity(best_lls),
        "baseline": 0.0,
    }
    return summary, rows


def _cut(text: str, until: Sequence[str]) -> str:
    """The text before the first stop string (the scorer should stop there; this makes sure)."""
    for stop in until:
        at = text.find(stop)
        if at >= 0:
            text = text[:at]
    return text


def _generation(
    scorer: Scorer,
    task: Task,
    items: Sequence[Item],
    contexts: list[str],
    format_prompt: FormatPrompt | None,
) -> Scored:
    if format_prompt is not None:  # a chat model: the question as its user turn, no few-shot
        prompts = [format_prompt(item.chat_prompt or item.context) for item in items]
    else:
        prompts = contexts
    options = {"until": list(task.until), "max_gen_toks": task.max_gen_toks}
    outputs = list(scorer.generate_until([(p, dict(options)) for p in prompts]))
    if len(outputs) != len(prompts):
        raise RuntimeError(f"the scorer answered {len(outputs)} of {len(prompts)} requests")
    ems, f1s, rows = [], [], []
    for prompt, item, out in zip(prompts, items, outputs):
        pred = _cut(out, task.until)
        ems.append(exact_match(pred, item.references))
        f1s.append(token_f1(pred, item.references))
        rows.append(
            {
                "context": prompt,
                "gold": list(item.references),
                "predicted": pred,
                "exact_match": ems[-1],
                "f1": f1s[-1],
                "doc": dict(item.doc),
            }
        )
    summary = {"exact_match": mean(ems), "f1": mean(f1s), "baseline": 0.0}
    summary["distinct_2"] = distinct_n([row["predicted"] for row in rows], 2)  # degenerate: ~0
    return summary, rows


_SCORERS = {"multiple_choice": _multiple_choice, "cloze": _cloze, "generation": _generation}


def write_predictions(results: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write each task's per-item predictions as `<out_dir>/<task>.jsonl`; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in results.get("predictions", {}).items():
        path = out / f"{_file_name(name)}.jsonl"
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def _file_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip(".") or "task"


# ---- the table -----------------------------------------------------------------------------
_SHOWN = {
    "multiple_choice": ("acc", "acc_norm"),
    "cloze": ("acc", "perplexity"),
    "generation": ("exact_match", "f1", "distinct_2"),
}


def _number(value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    if math.isnan(value):
        return "nan"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def _counts(results_by_model: Mapping[str, Mapping[str, Any]], task: str) -> str:
    """The task's item count, or each model's ("405/50") when a limit made them differ."""
    counts = [
        str(r["tasks"][task].get("n", ""))
        for r in results_by_model.values()
        if task in r.get("tasks", {})
    ]
    return counts[0] if len(set(counts)) == 1 else "/".join(counts)


def format_table(results_by_model: Mapping[str, Mapping[str, Any]]) -> str:
    """One plain-text table of every task's metrics, a column per model (the keys, in order),
    then the mean centered score. `*` marks the metric a task's centered score is taken from."""
    if not results_by_model:
        raise ConfigError("no results to tabulate; evaluate at least one model")
    models = list(results_by_model)
    tasks: dict[str, Mapping[str, Any]] = {}  # task -> its first model's entry (n, baseline)
    for res in results_by_model.values():
        for name, entry in res.get("tasks", {}).items():
            tasks.setdefault(name, entry)
    header = ["task", "n", "metric", "random", *models]
    rows: list[list[str]] = []
    for name, first in tasks.items():
        metrics = [*_SHOWN.get(first.get("kind", ""), (first.get("metric", "score"),)), "centered"]
        for j, metric in enumerate(metrics):
            mark = "*" if metric == first.get("metric") else ""
            no_baseline = ("perplexity", "centered", "distinct_2")
            baseline = first.get("baseline") if metric not in no_baseline else None
            if metric == "centered":
                baseline = 0.0
            values = [
                res.get("tasks", {}).get(name, {}).get(metric) for res in results_by_model.values()
            ]
            rows.append(
                [
                    name if j == 0 else "",
                    _counts(results_by_model, name) if j == 0 else "",
                    metric + mark,
                    _number(baseline),
                    *map(_number, values),
                ]
            )
    means = [res.get("mean_centered") for res in results_by_model.values()]
    rows.append(["mean centered", "", "", _number(0.0), *map(_number, means)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        left = [c.ljust(w) for c, w in zip(cells[:3], widths[:3])]
        right = [c.rjust(w) for c, w in zip(cells[3:], widths[3:])]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])])
