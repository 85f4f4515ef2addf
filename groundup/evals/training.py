"""Evaluation tasks during training (`train.eval_tasks`): scored at each evaluation step, their
figures join the evaluation's record (metrics.jsonl, the loggers, the report) as
`val_<task>_<metric>` and `val_tasks_centered` (the mean centered score).

The evaluator is built, and its tasks loaded and checked, before the run starts; scoring is
greedy and in eval mode, so it draws no random numbers and a run trains the same with or
without it (a resume may add or drop tasks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from groundup.errors import ConfigError
from groundup.evals.runner import evaluate_tasks
from groundup.evals.tasks import Task, load_tasks

FormatPrompt = Callable[[str], str]


def chat_formatter(tokenizer: Any, template: str) -> FormatPrompt:
    """Turns a question into the prompt an SFT model was trained on: the user's turn in the
    run's chat template, then the assistant's header."""
    from groundup.finetune.sft import Conversation, Message, _eot_token, get_template, render

    chosen = get_template(template, tokenizer)
    eot = _eot_token(tokenizer)

    def format_prompt(question: str) -> str:
        segments = render(
            Conversation([Message("user", question)]), chosen, eot, add_generation_prompt=True
        )
        return "".join(s.text for s in segments)

    return format_prompt


class TaskEvaluator:
    """Scores a model on tasks: a Trainer evaluator (`Trainer(evaluators=[...])`)."""

    def __init__(
        self,
        tasks: Sequence[str | Task],
        tokenizer: Any,
        *,
        limit: int | None = None,
        batch_size: int = 16,
        precision: str = "fp32",
        format_prompt: FormatPrompt | None = None,
    ) -> None:
        self.tasks = load_tasks(list(tasks))  # every spec and data line checked here
        self.tokenizer = tokenizer
        check_encodable(self.tasks, tokenizer, limit)
        self.limit = limit
        self.batch_size = batch_size
        self.precision = "fp32" if precision in ("auto", "fp16") else precision
        self.format_prompt = format_prompt
        self.last: dict[str, Any] | None = None  # the full results of the latest evaluation

    def __call__(self, model: nn.Module) -> dict[str, float]:
        from groundup.evals.lm import LMScorer

        device = next(model.parameters()).device
        scorer = LMScorer(
            model,
            self.tokenizer,
            device=device,
            batch_size=self.batch_size,
            precision=self.precision,
        )
        results = evaluate_tasks(
            scorer, self.tasks, limit=self.limit, format_prompt=self.format_prompt
        )
        results.pop("predictions", None)
        self.last = results
        return task_logs(results)


def check_encodable(tasks: Sequence[Task], tokenizer: Any, limit: int | None = None) -> None:
    """Every text the tasks will score encodes with `tokenizer`: a character a char-level
    tokenizer lacks is found before training, not at the first evaluation."""
    from groundup.errors import TokenizerError

    for task in tasks:
        items = task.items[:limit] if limit else task.items
        texts = [*(t for i in items for t in (i.context, *i.choices, *i.references))]
        for few in task.fewshot if task.num_fewshot else ():
            texts += [few.context, *few.choices, *few.references]
        for text in texts:
            try:
                tokenizer.encode(text, allow_special=True)
            except TokenizerError as exc:
                raise ConfigError(
                    f"evaluation task '{task.name}' has text this tokenizer cannot encode "
                    f"({exc}); drop the task from train.eval_tasks or use a tokenizer that "
                    "covers it (bytes, bpe, or char with byte_fallback: true)"
                ) from None


def task_logs(results: dict[str, Any], prefix: str = "val_") -> dict[str, float]:
    """The figures of `evaluate_tasks` results a record keeps: each task's score under its
    metric's name, and the mean centered score."""
    logs = {
        f"{prefix}{name}_{task['metric']}": float(task["score"])
        for name, task in results["tasks"].items()
    }
    logs[f"{prefix}tasks_centered"] = float(results["mean_centered"])
    return logs


def eval_tasks_of(loop: Any, kind: str) -> list[Task]:
    """The tasks a job's `train:` section asks for, loaded and checked before the run starts
    ([] without eval_tasks). `kind` is what the job trains: only language models can be
    scored on tasks."""
    names = getattr(loop, "eval_tasks", None) or []
    if not names:
        return []
    if kind not in ("causal_lm", "sft"):
        raise ConfigError(
            f"train.eval_tasks scores language models; this run trains a {kind} model, "
            "whose validation figures are its loss and accuracy: remove train.eval_tasks"
        )
    return load_tasks(names)


def task_evaluators(
    tasks: Sequence[Task], loop: Any, tokenizer: Any, format_prompt: FormatPrompt | None = None
) -> list[TaskEvaluator]:
    """The Trainer evaluators for `tasks` ([] when there are none)."""
    if not tasks:
        return []
    evaluator = TaskEvaluator(
        tasks,
        tokenizer,
        limit=loop.eval_tasks_limit,
        batch_size=loop.batch_size,
        precision=loop.precision,
        format_prompt=format_prompt,
    )
    return [evaluator]
