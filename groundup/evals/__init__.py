"""Evaluating language models: `lm` scores requests (log-likelihoods, rolling perplexity,
generation) the way lm-evaluation-harness does; `tasks`, `builtin_tasks` and `runner` define,
build and score evaluation tasks; `training` scores them during a run (train.eval_tasks);
`harness` runs lm-eval tasks on our models.

Names load on first use, so `import groundup.evals` imports neither torch models nor lm-eval.
A module adds its public names to _EXPORTS (name -> module).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "LMScorer": "groundup.evals.lm",
    "rolling_windows": "groundup.evals.lm",
    "repeat_kv_cache": "groundup.evals.lm",
    "GroundupLM": "groundup.evals.harness",
    "run_harness": "groundup.evals.harness",
    "Task": "groundup.evals.tasks",
    "Item": "groundup.evals.tasks",
    "TaskSpec": "groundup.evals.tasks",
    "load_task": "groundup.evals.tasks",
    "load_tasks": "groundup.evals.tasks",
    "evaluate_tasks": "groundup.evals.runner",
    "format_table": "groundup.evals.runner",
    "write_predictions": "groundup.evals.runner",
    "BUILTIN_TASKS": "groundup.evals.builtin_tasks",
    "TaskEvaluator": "groundup.evals.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'groundup.evals' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
