"""lm-evaluation-harness on groundup models: the lm-eval model "groundup" and `run_harness`.

Importing this module makes "groundup" an lm-eval model name (`GroundupLM`, on `LMScorer`).
lm-eval 0.4 finds models only in its own registry (it reads no plugin entry points), so its
command line is reached through this module, which registers the model first and then hands
the arguments to lm-eval's own CLI, unchanged:

    python -m groundup.evals.harness --model groundup --model_args run=runs/x \\
        --tasks arc_easy,my_task.yaml --batch_size 16 --device cpu

model_args: run (any folder `load_model` reads), use_cache, precision, max_length,
add_prefix_token, allow_pickle. The batch size and device come from lm-eval's own --batch_size
(default 1: one request a forward; "auto" means 16 here) and --device (its default cuda:0 falls
back to the CPU without a GPU); lm-eval refuses them a second time inside --model_args.
From Python, `run_harness(run, tasks)` returns {task: {metric: value}}; tasks are lm-eval task
names, task YAML files or folders of them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from groundup.errors import ConfigError, DependencyError, MissingFileError
from groundup.evals.lm import LMScorer

try:
    import lm_eval.models  # noqa: F401  (registers lm-eval's own models: see below)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry
except ImportError:
    raise DependencyError(
        'lm-evaluation-harness is not installed: pip install "groundup[eval]"'
    ) from None

log = logging.getLogger(__name__)
MODEL_NAME = "groundup"
DEFAULT_BATCH_SIZE = 16


def _device(value: str | None) -> str:
    """lm-eval's CLI asks for cuda:0 unless told otherwise; like its hf model, fall back to
    the best device there is when that one is absent."""
    if value is None:
        return "auto"
    if str(value).startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s is not available (no CUDA GPU): scoring on the CPU", value)
        return "cpu"
    return str(value)


def _batch_size(value: Any) -> int:
    """lm-eval passes ints, digit strings or "auto[:N]"; we have no search: auto means 16."""
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return DEFAULT_BATCH_SIZE
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"batch_size must be a positive integer or 'auto', got {value!r}")


class GroundupLM(LM):
    """A groundup causal LM as an lm-eval model: the three request types go to `LMScorer`.

    Build it from `run=PATH` (what lm-eval's --model_args gives) or around a ready scorer.
    """

    def __init__(
        self,
        run: str | None = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        device: str | None = "auto",
        use_cache: bool = True,
        precision: str = "fp32",
        max_length: int | None = None,
        add_prefix_token: bool | None = None,
        allow_pickle: bool = False,
        scorer: LMScorer | None = None,
        max_batch_size: int | None = None,  # lm-eval passes it to every model; no search here
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(
                f"unknown groundup model_args {', '.join(sorted(unknown))}; use run, "
                "batch_size, device, use_cache, precision, max_length, add_prefix_token, "
                "allow_pickle"
            )
        if scorer is None:
            if run is None:
                raise ConfigError(
                    "the groundup model needs the model to score: --model_args run=RUN_DIR "
                    "(a run directory, its model/ folder or a Hugging Face folder)"
                )
            scorer = LMScorer.from_run(
                run,
                allow_pickle=allow_pickle,
                device=_device(device),
                batch_size=_batch_size(batch_size),
                use_cache=use_cache,
                precision=precision,
                max_length=max_length,
                add_prefix_token=add_prefix_token,
            )
        self.scorer = scorer
        self.run = run
        self._device = scorer.device

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list:
        args = [tuple(r.args) for r in requests]
        out = self.scorer.loglikelihood(args)
        for a, res in zip(args, out):
            self.cache_hook.add_partial("loglikelihood", a, res)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list:
        texts = [r.args[0] for r in requests]
        out = self.scorer.loglikelihood_rolling(texts)
        for text, res in zip(texts, out):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), res)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        args = [tuple(r.args) for r in requests]
        out = self.scorer.generate_until(args)
        for a, res in zip(args, out):
            self.cache_hook.add_partial("generate_until", a, res)
        return out

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records in its results' config."""
        model = self.scorer.model
        return {
            "groundup_run": str(self.run) if self.run is not None else None,
            "model_num_parameters": sum(p.numel() for p in model.parameters()),
            "model_dtype": str(next(model.parameters()).dtype),
        }


# A lazy "module:Class" entry: `python -m groundup.evals.harness` runs this file as __main__
# too, and lm-eval refuses a second class under one name; the entry always means this module.
# Trap: lm-eval fills its registry with its own models only while the registry is empty, so
# lm_eval.models is imported above, before this entry, or "hf" would no longer be found.
if MODEL_NAME not in model_registry:
    model_registry.register(MODEL_NAME, target=f"groundup.evals.harness:{GroundupLM.__name__}")


# ------------------------------------------------------------------------- tasks and results
def resolve_tasks(
    tasks: Sequence[str] | str, include_path: Sequence[str | Path] | str | Path | None = None
) -> tuple[list[str], Any]:
    """(task specs for simple_evaluate, the TaskManager that knows them) for task names
    (glob patterns too), task YAML files and folders of task YAMLs. lm-eval's own catalogue
    (seconds to index) is read only when a name is not found in the given files and folders."""
    from lm_eval.tasks import TaskManager

    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t.strip()]
    if not tasks:
        raise ConfigError("no tasks given; name lm-eval tasks (arc_easy,...) or task YAML files")
    if isinstance(include_path, (str, Path)):
        include_path = [include_path]
    folders = [Path(p) for p in include_path or []]
    for folder in folders:
        if not folder.is_dir():
            raise MissingFileError(f"task folder not found: {folder}; give a folder of task YAMLs")
    specs: list[str | list[str]] = []  # a file path, or the names a pattern or folder stands for
    names: list[str] = []
    for task in tasks:
        path = Path(task)
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise MissingFileError(f"task file not found: {path}; check the path")
            specs.append(str(path.resolve()))
        elif path.is_dir():
            found = TaskManager(include_path=str(path), include_defaults=False).all_subtasks
            if not found:
                raise ConfigError(f"no lm-eval task YAML in {path}; give a folder of task files")
            folders.append(path)
            specs.append(list(found))
        else:
            names.append(task)
            specs.append([task])
    include = [str(f) for f in folders] or None
    manager = TaskManager(include_path=include, include_defaults=False)
    if any(not manager.match_tasks([n]) for n in names):
        manager = TaskManager(include_path=include)
        missing = [n for n in names if not manager.match_tasks([n])]
        if missing:
            raise ConfigError(
                f"unknown lm-eval task(s) {', '.join(missing)}; list them with `lm_eval ls "
                "tasks`, or give a task YAML file or its folder"
            )
    out: list[str] = []
    for spec in specs:
        expanded = [spec] if isinstance(spec, str) else manager.match_tasks(spec) or spec
        out += [s for s in expanded if s not in out]
    return out, manager


def harness_metrics(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from simple_evaluate's results: "acc,none" becomes "acc" (other
    filters keep their name: "exact_match,strict-match"); values that are not numbers (a
    stderr of "N/A") are left out."""
    out: dict[str, dict[str, float]] = {}
    for task, values in results.get("results", {}).items():
        row = {}
        for key, value in values.items():
            metric, comma, filter_name = key.partition(",")
            if comma and isinstance(value, (int, float)) and not isinstance(value, bool):
                row[metric if filter_name == "none" else key] = float(value)
        out[task] = row
    return out


def run_harness(
    run: str | Path | LMScorer,
    tasks: Sequence[str] | str,
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    include_path: Sequence[str | Path] | str | Path | None = None,
    output: str | Path | None = None,
    use_cache: bool = True,
    precision: str = "fp32",
    max_length: int | None = None,
    bootstrap_iters: int = 100000,
    log_samples: bool = False,
) -> dict[str, dict[str, float]]:
    """Evaluate the model of `run` (a model folder, or a ready LMScorer, whose own settings
    then apply) on lm-eval `tasks` with `lm_eval.simple_evaluate`; returns {task: {metric:
    value}}.

    The tasks are resolved before the model loads, so a wrong name costs nothing. `output`
    gets lm-eval's whole answer as JSON (results, configs, versions; per-sample records with
    log_samples). bootstrap_iters is lm-eval's (0 skips the stderr of non-mean metrics).
    """
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    from groundup.files import write_text_atomic

    if limit is not None and not limit > 0:
        raise ConfigError(f"limit must be > 0 (a count, or a fraction below 1), got {limit}")
    if num_fewshot is not None and (not isinstance(num_fewshot, int) or num_fewshot < 0):
        raise ConfigError(f"num_fewshot must be an integer >= 0, got {num_fewshot!r}")
    specs, manager = resolve_tasks(tasks, include_path)
    if isinstance(run, LMScorer):
        model = GroundupLM(scorer=run)
    else:
        model = GroundupLM(
            run=str(run),
            batch_size=batch_size,
            device=device,
            use_cache=use_cache,
            precision=precision,
            max_length=max_length,
        )
    raw = lm_eval.simple_evaluate(
        model=model,
        tasks=specs,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        bootstrap_iters=bootstrap_iters,
        log_samples=log_samples,
    )
    metrics = harness_metrics(raw or {})
    if output is not None:
        text = json.dumps(
            {"metrics": metrics, **(raw or {})}, indent=2, default=handle_non_serializable
        )
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output, text + "\n")
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with the groundup model registered; a groundup user error
    (a wrong run folder, model_arg, option) is one line and exit code 2, as in groundup's CLI."""
    from lm_eval.__main__ import cli_evaluate

    from groundup.errors import GroundupError

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except GroundupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
