"""The Optuna study of a sweep: TPE (seeded), a pruner by name, and a SQLite file in the sweep
folder so a killed sweep goes on where it stopped.

A rerun of the same sweep loads the study (`load_if_exists`). A trial the kill left RUNNING is
failed and its parameters are queued again with its run folder (`resume_of`, `run_dir`), so
the next trial resumes that folder from its last checkpoint with the job's own resume; the
study then holds the failed one and its continuation, and every run folder is one trial's.
Only one process may run a sweep folder at a time (a lock file with its PID): a RUNNING trial
is then surely a dead one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from groundup.errors import ConfigError, DependencyError

STUDY_FILE = "study.db"
STUDY_NAME = "sweep"
LOCK_FILE = "sweep.lock"
# median: prune a trial whose value at a step is worse than the median of earlier trials at
# that step; halving: successive halving (asynchronous, rungs by step); none: never prune
PRUNERS = ("median", "halving", "none")


def require_optuna() -> Any:
    """The optuna module, or a DependencyError naming the extra."""
    try:
        import optuna
    except ImportError:
        raise DependencyError(
            "groundup sweep needs Optuna: pip install 'groundup[sweep]'"
        ) from None
    return optuna


def make_pruner(name: str, startup_trials: int) -> Any:
    """The pruner called `name` (see PRUNERS)."""
    optuna = require_optuna()
    if name == "median":
        # n_startup_trials: trials that run to the end before any is compared with them
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    from groundup.registry import did_you_mean

    raise ConfigError(
        f"unknown pruner '{name}'{did_you_mean(name, PRUNERS)}; give one of {', '.join(PRUNERS)}"
    )


def startup_trials(trials: int) -> int:
    """Random trials before TPE models the results (and before the median pruner compares):
    a third of the sweep, 3 to 10."""
    return max(3, min(10, trials // 3))


def open_study(folder: Path, pruner: str, seed: int, trials: int) -> Any:
    """Create or load the study in `folder/study.db`.

    Trap: a sampler is not stored with the study; seeded again with the same seed on a
    rerun, its random start-up draws would repeat the first trials' parameters. It is seeded
    with the seed plus the number of trials already there, so a rerun draws new ones."""
    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines
    storage = f"sqlite:///{(folder / STUDY_FILE).resolve()}"
    done = 0
    if (folder / STUDY_FILE).is_file():
        try:
            done = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials)
        except KeyError:  # the file holds no study of that name yet
            done = 0
    n_startup = startup_trials(trials)
    return optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed + done, n_startup_trials=n_startup),
        pruner=make_pruner(pruner, n_startup),
        load_if_exists=True,
    )


def recover_interrupted(study: Any) -> list[str]:
    """Fail the trials a kill left RUNNING and queue each again, to resume its run folder.
    Returns a note per trial. Queued before failed: a kill in between queues it twice at
    worst, never loses it (a second queueing is skipped)."""
    optuna = require_optuna()
    states = optuna.trial.TrialState
    queued = {
        t.user_attrs.get("resume_of")
        for t in study.get_trials(deepcopy=False, states=(states.WAITING,))
    }
    notes = []
    for trial in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        folder = trial.user_attrs.get("run_dir", trial_folder(trial.number))
        if trial.number not in queued:
            attrs = {"resume_of": trial.number, "run_dir": folder}
            study.enqueue_trial(trial.params, user_attrs=attrs)
        study.tell(trial.number, state=states.FAIL)
        notes.append(f"trial {trial.number} was interrupted: it goes on in {folder}")
    return notes


def trial_folder(number: int) -> str:
    return f"trial-{number:03d}"


def resumed_numbers(study: Any) -> set[int]:
    """The trials that another trial continues (the interrupted ones)."""
    return {
        t.user_attrs["resume_of"]
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("resume_of") is not None
    }


def finished_count(study: Any) -> int:
    """Trials that count toward the sweep's total: complete, pruned, or failed by their own
    error (an interrupted trial counts once, through its continuation)."""
    optuna = require_optuna()
    states = optuna.trial.TrialState
    resumed = resumed_numbers(study)
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (states.COMPLETE, states.PRUNED)
        or (t.state == states.FAIL and t.number not in resumed)
    )


class SweepLock:
    """`sweep.lock` holds the PID of the process running the sweep folder."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE

    def __enter__(self) -> SweepLock:
        if self.path.is_file():
            try:
                pid = int(self.path.read_text().strip() or 0)
            except (ValueError, OSError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise ConfigError(
                    f"another sweep (PID {pid}) is running in {self.path.parent}; wait for it "
                    f"to end, or delete {self.path} if no sweep is running"
                )
        self.path.write_text(f"{os.getpid()}\n", encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
