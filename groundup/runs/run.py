"""A run folder in use: begun once every check has passed, ended with its results.

    plan = plan_run(cfg.run_dir, cfg, overwrite=..., resume=...)   # checks, writes nothing
    ...check the model, data and optimizer...
    with Run.begin(plan) as run:                                   # now the folder changes
        trainer = Trainer.from_config(..., run_dir=run.path, callbacks=run.callbacks("val_loss"))
        trainer.fit(..., resume_from=run.checkpoint)
        run.write_results(results)

What each plan does to the folder:
- new: create it and write config.yaml;
- restart (the same config again): old checkpoints move to `checkpoints.previous`, the old
  metrics and results go, config.yaml is written again;
- replace (`--overwrite`): the old run is moved aside (`.NAME.replaced-PID` beside it), and
  deleted only once the new run has saved its first checkpoint or finished; if the new run
  fails before that, the old one is put back as it was;
- resume: what killed saves left in `checkpoints/` is cleaned up and config.yaml is written
  again (a resume may raise train.max_steps or train.epochs).
A folder the run created is removed again when a user error (bad data found while reading it)
stops the run before its first checkpoint, so the corrected command starts clean.
Every run ends (finished, interrupted or failed) with `report.html` in its folder and the
diagnosis's warnings on the console (GROUNDUP_REPORT=0 turns both off).
Under several ranks only rank 0 touches the folder; the others wait for it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from groundup import distributed as du
from groundup.checkpoint.folders import clean_debris, find_latest
from groundup.errors import (
    ConfigError,
    DataError,
    MissingFileError,
    ShapeError,
    TokenizerError,
)
from groundup.files import write_text_atomic
from groundup.runs import hooks
from groundup.runs.plan import CHECKPOINTS, CONFIG_FILE, RunPlan
from groundup.train.callbacks import Callback, ModelCheckpoint
from groundup.train.run_log import METRICS_FILE

RESULTS_FILE = "results.json"
REPORT_ENV = "GROUNDUP_REPORT"  # "0": runs end without report.html and diagnosis (test suites)
# the mistakes in a user's input that a run can only find while reading its data; never an
# interrupt or a training failure, whose logs are the user's evidence
INPUT_ERRORS = (ConfigError, DataError, MissingFileError, ShapeError, TokenizerError)
MODEL_DIR = "model"


class Run:
    """The run folder of one command invocation (see the module doc)."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.path = plan.path
        self.checkpoint = plan.checkpoint  # what Trainer.fit resumes from (None: a fresh start)
        self._aside: Path | None = None  # the replaced run, until the new one is safe
        self._created = False  # this run made the folder (it did not exist before)
        self._saved = False  # a checkpoint has been saved
        self.verbose = 1  # 0: no diagnosis or report line on the console
        self._restored = False  # the new run failed early and the replaced one is back

    @classmethod
    def begin(cls, plan: RunPlan, verbose: int = 1) -> Run:
        """Make the folder what `plan` says (rank 0; the other ranks wait for it)."""
        run = cls(plan)
        run.verbose = verbose
        run._aside, run._created = du.main_first(run._prepare_folder)
        return run

    @property
    def resuming(self) -> bool:
        return self.plan.mode == "resume"

    def _prepare_folder(self) -> tuple[Path | None, bool]:
        path, mode = self.path, self.plan.mode
        for note in self.plan.notes:
            print(note, flush=True)
        aside = None
        created = not path.exists()
        if mode == "replace":
            aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
            if aside.exists():
                shutil.rmtree(aside)
            path.rename(aside)
        path.mkdir(parents=True, exist_ok=True)
        if mode == "restart":
            # Starting the same run over: its old checkpoints must not be taken for this run's
            # on a later --resume, and must not be lost either: they move aside (one generation).
            checkpoints = path / CHECKPOINTS
            if checkpoints.is_dir() and any(checkpoints.iterdir()):
                previous = path / f"{CHECKPOINTS}.previous"
                if previous.exists():
                    shutil.rmtree(previous)
                checkpoints.rename(previous)
            for name in (METRICS_FILE, RESULTS_FILE):
                (path / name).unlink(missing_ok=True)
        if mode == "resume":
            clean_debris(path / CHECKPOINTS)
        write_text_atomic(path / CONFIG_FILE, yaml.safe_dump(self.plan.config, sort_keys=False))
        return aside, created or mode == "replace"

    # ---------------------------------------------------------------- during the run
    def callbacks(
        self,
        monitor: str | None = "val_loss",
        every_n_steps: int | None = None,
        keep_last: int | None = None,
    ) -> list[Callback]:
        """The run's checkpoint callback (best/ by `monitor`, a step checkpoint at every
        evaluation) and the hook that lets go of a replaced run once this one is safe. Its
        best value comes back from the checkpoint on resume (callback state)."""
        checkpoint = ModelCheckpoint(
            self.path / CHECKPOINTS,
            monitor=monitor,
            every_n_steps=every_n_steps,
            keep_last=keep_last,
        )
        return [checkpoint, _ReleaseReplaced(self), *hooks.extra_callbacks()]

    def release_replaced(self) -> None:
        """Delete the run this one replaced (from rank 0, once this one has a checkpoint)."""
        self._saved = True
        if self._aside is not None and du.is_main():
            shutil.rmtree(self._aside, ignore_errors=True)
        self._aside = None

    def write_results(self, results: dict[str, Any]) -> Path:
        """results.json (rank 0), written whole or not at all."""
        target = self.path / RESULTS_FILE
        if du.is_main():
            write_text_atomic(target, json.dumps(results, indent=2))
        return target

    # ---------------------------------------------------------------- the end
    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._settle(kind)
        if du.is_main() and self.path.is_dir() and not self._restored and reports_enabled():
            self._report(interrupted=kind is not None)

    def _report(self, interrupted: bool) -> None:
        """report.html in the folder (a finished, interrupted or failed run alike) and, on the
        console, what the diagnosis warns about; neither may turn a run into a failure."""
        from groundup.report.build import write_run_report

        written = write_run_report(self.path)
        if not self.verbose:
            return
        try:
            from groundup.report import diagnose_run, format_findings

            warnings = [f for f in diagnose_run(self.path) if f.severity == "warning"]
        except Exception as e:  # noqa: BLE001 - a finished run stays finished
            print(f"(no diagnosis: {e})", flush=True)
            warnings = []
        block = format_findings(warnings)
        if block:
            print(block, flush=True)
        if written is not None:
            print(f"report: {written}", flush=True)

    def _settle(self, kind: type[BaseException] | None) -> None:
        """What the folder keeps: the new run once it is safe, else the replaced one."""
        if kind is None:
            self.release_replaced()
            return
        if not du.is_main():
            return
        if self._saved or find_latest(self.path / CHECKPOINTS) is not None:
            self.release_replaced()  # the new run has a checkpoint: it is the run now
            return
        if self._aside is not None:
            # the new run failed before it saved anything: the old one goes back as it was
            failed = self.path.with_name(f".{self.path.name}.failed-{os.getpid()}")
            self.path.rename(failed)
            self._aside.rename(self.path)
            shutil.rmtree(failed, ignore_errors=True)
            self._aside = None
            self._restored = True
        elif self._created and issubclass(kind, INPUT_ERRORS):
            # bad data found while reading it (a JSONL row without the field, say): a folder
            # this run made and never saved into is not left behind to block the fixed command
            shutil.rmtree(self.path, ignore_errors=True)


class _ReleaseReplaced(Callback):
    """Lets go of the replaced run at the new run's first checkpoint."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def on_save(self, trainer: Any, path: Path) -> None:
        self.run.release_replaced()


def reports_enabled() -> bool:
    """Whether runs end with report.html and the console diagnosis (GROUNDUP_REPORT=0: not)."""
    return os.environ.get(REPORT_ENV, "1") != "0"
