"""One trial of a sweep: a normal run of the command in `<sweep_dir>/trial-NNN/`, with the
sampled values as dotted overrides and a callback that reports each validation loss to the
trial and stops the run when the pruner says so.

The objective is the lowest val_loss of the run's evaluations (at each epoch end, or every
`train.eval_every` steps). A pruned run stops as a callback stop does (the run folder ends
normally: results, model), so it is an ordinary, shorter run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groundup.checkpoint import find_latest
from groundup.checkpoint.folders import read_state
from groundup.errors import GroundupError, TrainingInterrupted
from groundup.runs import hooks
from groundup.sweep.commands import override, run_job
from groundup.sweep.space import Param
from groundup.sweep.study import require_optuna, trial_folder
from groundup.train.callbacks import Callback


class PruneOnValLoss(Callback):
    """Reports every val_loss to the Optuna trial at its step; stops the run when pruned."""

    def __init__(self, trial: Any, reported: dict[int, float] | None = None) -> None:
        self.trial = trial
        self.reported = dict(reported or {})  # step -> val_loss (a resumed trial's earlier ones)
        self.pruned_at: int | None = None

    def on_eval_end(self, trainer: Any, logs: dict[str, float]) -> None:
        value = logs.get("val_loss")
        if value is None or not math.isfinite(value):
            return
        step = int(trainer.step)
        self.reported[step] = float(value)
        self.trial.report(float(value), step)
        if self.pruned_at is None and self.trial.should_prune():
            self.pruned_at = step
            trainer.stop_training = True
            trainer.log_message(f"pruned by the sweep at step {step} (val_loss {value:.4f})")


@dataclass
class TrialOutcome:
    """What a trial ended as (its state is also in the study)."""

    number: int
    state: str  # complete, pruned, failed
    values: dict[str, Any]  # the sampled config values
    run_dir: Path
    best: float | None = None  # the lowest val_loss
    best_step: int | None = None
    seconds: float = 0.0
    error: str | None = None
    resumed: bool = False
    results: dict[str, Any] = field(default_factory=dict)


def run_trial(
    study: Any,
    trial: Any,
    command: str,
    config_path: str | Path,
    overrides: Sequence[str],
    params: Sequence[Param],
    sweep_dir: Path,
    verbose: int = 0,
) -> TrialOutcome:
    """Run `trial` (asked from `study`) to its end and tell the study how it went.

    A user error (a sampled config that cannot train, a NaN stop) fails the trial and is
    returned; an interrupt (SIGINT/SIGTERM) leaves it RUNNING for the rerun to resume and is
    raised; anything else fails it and is raised (a bug keeps its traceback)."""
    optuna = require_optuna()
    states = optuna.trial.TrialState
    values = {p.key: p.suggest(trial) for p in params}
    name = trial.user_attrs.get("run_dir") or trial_folder(trial.number)
    trial.set_user_attr("run_dir", name)
    trial.set_user_attr("values", values)
    run_dir = sweep_dir / name
    outcome = TrialOutcome(trial.number, "failed", values, run_dir)
    checkpoint = None
    if trial.user_attrs.get("resume_of") is not None and (run_dir / "checkpoints").is_dir():
        checkpoint = find_latest(run_dir / "checkpoints")
    reported = _earlier_reports(study, trial, checkpoint)
    outcome.resumed = checkpoint is not None
    if reported and trial.should_prune():  # it had been pruned just before the kill
        return _tell(study, trial, outcome, PruneOnValLoss(trial, reported), states.PRUNED)
    callback = PruneOnValLoss(trial, reported)
    trial_overrides = [
        *overrides,
        override("run_dir", str(run_dir)),
        *(override(k, v) for k, v in values.items()),
    ]
    started = time.perf_counter()
    try:
        with hooks.run_callbacks(callback):
            outcome.results = run_job(
                command,
                config_path,
                trial_overrides,
                overwrite=checkpoint is None,
                resume=checkpoint is not None,
                verbose=verbose,
            )
    except (TrainingInterrupted, KeyboardInterrupt, SystemExit):
        raise  # stays RUNNING: the rerun resumes its folder
    except GroundupError as exc:
        outcome.seconds = time.perf_counter() - started
        outcome.error = " ".join(str(exc).splitlines())
        return _tell(study, trial, outcome, callback, states.FAIL)
    except Exception:
        outcome.error = "crashed (see the traceback)"
        _tell(study, trial, outcome, callback, states.FAIL)
        raise
    outcome.seconds = time.perf_counter() - started
    if callback.pruned_at is not None:
        return _tell(study, trial, outcome, callback, states.PRUNED)
    if not callback.reported:
        outcome.error = "the run reported no val_loss (no validation data?)"
        return _tell(study, trial, outcome, callback, states.FAIL)
    return _tell(study, trial, outcome, callback, states.COMPLETE)


def _earlier_reports(study: Any, trial: Any, checkpoint: Path | None) -> dict[int, float]:
    """A resumed trial's validation losses up to its checkpoint, from the interrupted trial
    (reported again, so the pruner sees the whole curve)."""
    previous = trial.user_attrs.get("resume_of")
    if previous is None or checkpoint is None:
        return {}
    step = int(read_state(checkpoint).get("step", 0))
    earlier = study.trials[previous].intermediate_values
    reported = {int(s): float(v) for s, v in sorted(earlier.items()) if int(s) <= step}
    for s, v in reported.items():
        trial.report(v, s)
    return reported


def _tell(
    study: Any, trial: Any, outcome: TrialOutcome, callback: PruneOnValLoss, state: Any
) -> TrialOutcome:
    """Record the outcome in the trial's attributes, then tell the study."""
    optuna = require_optuna()
    states = optuna.trial.TrialState
    if callback.reported:
        outcome.best_step, outcome.best = min(callback.reported.items(), key=lambda kv: kv[1])
    outcome.state = {states.COMPLETE: "complete", states.PRUNED: "pruned"}.get(state, "failed")
    trial.set_user_attr("best_step", outcome.best_step)
    trial.set_user_attr("seconds", round(outcome.seconds, 3))
    trial.set_user_attr("results", _plain(outcome.results))
    if outcome.error:
        trial.set_user_attr("error", outcome.error)
    if state == states.COMPLETE:
        study.tell(trial, outcome.best)
    else:
        study.tell(trial, state=state)
    return outcome


def _plain(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a run's results (no generated samples: they can be long)."""
    return {
        k: v
        for k, v in (results or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
