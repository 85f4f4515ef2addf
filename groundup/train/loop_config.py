"""The `train:` section every training command shares: how long, how big, how precise, how
often to log and save. `Trainer.from_config` takes it (with an `OptimConfig`).

Each command subclasses `LoopConfig` for its own defaults and the few keys only it has
(`epochs` for data that ends, `tokens_per_step` for pretraining). Every value is checked
when the config is loaded, so a mistake is one line before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from groundup.config import check
from groundup.train.loggers import check_loggers

NanPolicy = Literal["stop", "skip", "rollback"]
Precision = Literal["auto", "fp32", "bf16", "fp16", "fp64"]


@dataclass
class LoopConfig:
    """Steps, batch geometry, evaluation and checkpoint cadence, precision."""

    max_steps: int | None = None  # optimizer steps (with epochs: whichever comes first)
    batch_size: int = 32  # examples (sequences) per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    eval_every: int | None = None  # steps between evaluations; null: at each epoch end
    eval_batches: int | None = None  # validation batches per evaluation; null: all
    log_every: int = 50  # steps between train records in metrics.jsonl
    checkpoint_every: int | None = None  # steps between checkpoints (besides each evaluation)
    keep_last: int | None = 3  # step checkpoints kept besides best/ (null: all)
    nan_policy: NanPolicy = "stop"  # on a non-finite loss or gradient norm
    clip_grad_norm: float | None = None  # max global gradient norm; null: no clipping
    precision: Precision = "fp32"  # auto: bf16 where the device has it; fp64 for numerics
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    compile: bool = False  # torch.compile the model's forward
    check_memory: bool = (
        True  # refuse a run whose predicted peak memory exceeds the device's free memory
    )
    # tensorboard, wandb, mlflow, csv, jsonl (metrics.jsonl is always written); see docs/loggers.md
    loggers: list[str] = field(default_factory=list)
    # language models: evaluation tasks scored at each evaluation (built-in names such as
    # stdlib-describe, or task spec files); see docs/evaluation.md
    eval_tasks: list[str] = field(default_factory=list)
    eval_tasks_limit: int | None = 100  # items scored per task at each evaluation; null: all

    def __post_init__(self) -> None:
        for key in ("batch_size", "grad_accum", "log_every"):
            _at_least_one(key, getattr(self, key))
        for key in (
            "max_steps",
            "eval_every",
            "eval_batches",
            "checkpoint_every",
            "keep_last",
            "eval_tasks_limit",
        ):
            value = getattr(self, key)
            if value is not None:
                _at_least_one(key, value, " or null")
        clip = self.clip_grad_norm
        check(
            clip is None or (math.isfinite(clip) and clip > 0),
            f"train.clip_grad_norm must be > 0 (or null to disable clipping), got {clip}",
        )
        check(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        self.loggers = check_loggers(self.loggers)  # names, and their packages installed
        check(
            isinstance(self.eval_tasks, list)
            and all(isinstance(t, str) and t.strip() for t in self.eval_tasks),
            "train.eval_tasks must be a list of built-in task names or task spec files "
            f"(e.g. [stdlib-describe, stdlib-qa]), got {self.eval_tasks!r}",
        )

    def fit_options(self) -> dict[str, Any]:
        """The keyword arguments of `Trainer.fit` this section decides."""
        options = {
            "max_steps": self.max_steps,
            "eval_every": self.eval_every,
            "eval_batches": self.eval_batches,
            "checkpoint_every": self.checkpoint_every,
        }
        epochs = getattr(self, "epochs", None)
        if epochs is not None:
            options["epochs"] = epochs
        return options


def _at_least_one(key: str, value: Any, alternative: str = "") -> None:
    check(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"train.{key} must be an integer >= 1{alternative}, got {value!r}",
    )
