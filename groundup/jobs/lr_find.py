"""`groundup lr-find CONFIG`: the learning-rate range test on the config's own job.

The config's command (train, pretrain or finetune, told from its keys) runs as usual, with its
data, model, Trainer, precision, grad_accum and ranks, but in its own folder
`<run_dir>/lr_find/` and with one callback added (groundup.runs.hooks): before the first
training step it runs `lr_find` on the trainer and its training data, writes `lr_find.json`
and `lr_find.png` there, and ends the job. It prints the suggestion and the override to use.
A copy of `lr_find.json` goes beside the run (`<run_dir>/lr_find.json`), where the run's
report shows it.

Why `<run_dir>/lr_find/`: it never touches the config's run. groundup.runs.plan reads only
the run folder's own config.yaml, checkpoints/ and metrics.jsonl, so a subfolder is not taken
for a run or mixed into one; a restart of the run keeps it, an `--overwrite` of the run
replaces it with the rest. Each lr-find replaces the previous one (the folder is refused if
it ever held a real run: checkpoints, results or a model).

Several ranks (`--nproc N`, or torchrun): every rank runs the test on its share of each
global batch; the step loss is all-reduced inside the trainer's step, so the ranks get one
curve and one suggestion, and rank 0 writes the files.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from groundup.errors import ConfigError
from groundup.files import write_text_atomic
from groundup.runs import hooks
from groundup.sweep.commands import (
    check_command,
    config_data,
    detect_command,
    load_command_config,
    override,
    run_callbacks_overrides,
    run_job,
)
from groundup.train.callbacks import Callback
from groundup.train.lr_finder import LRFindResult, check_range, lr_find

FOLDER = "lr_find"
RESULT_FILE = "lr_find.json"
PLOT_FILE = "lr_find.png"
# what only a real run leaves: a folder holding one is never deleted by lr-find
RUN_MARKS = ("results.json", "model", "checkpoints.previous")


class RangeTestDone(Exception):
    """Ends the job once the range test has run (no training step, no final evaluation)."""


class RangeTest(Callback):
    """Runs `lr_find` before the first step of the job's `fit`, writes its files, stops."""

    def __init__(self, folder: Path, **settings: Any) -> None:
        self.folder = folder
        self.settings = settings
        self.result: LRFindResult | None = None

    def on_epoch_begin(self, trainer: Any, epoch: int) -> None:
        # Trap: not on_train_begin, which fit() calls outside its try/finally; raising from
        # here still restores the signal handlers and closes the metrics log.
        if self.result is None:
            self.result = lr_find(trainer, trainer._train_data, **self.settings)
            if trainer.rank == 0:
                write_result(self.result, self.folder)
        raise RangeTestDone


def run_lr_find(
    config_path: str | Path,
    overrides: Sequence[str] = (),
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    command: str | None = None,
    verbose: int = 1,
) -> LRFindResult:
    """Run the range test on CONFIG's job (see the module doc); returns its result."""
    from groundup import distributed as du

    check_range(min_lr, max_lr, num_steps, 0.98, 4.0)
    data = config_data(config_path, overrides)
    command = check_command(command) if command else detect_command(data, str(config_path))
    if command == "train" and du.launched():
        raise ConfigError("groundup train runs on one process: drop --nproc (and torchrun)")
    cfg = load_command_config(command, data)
    run_dir = Path(cfg.run_dir)
    folder = run_dir / FOLDER
    if os.environ.get("RANK", "0") == "0":  # before the job: the other ranks wait in it
        _clear(folder)
    test = RangeTest(folder, min_lr=min_lr, max_lr=max_lr, num_steps=num_steps)
    job_overrides = [
        *overrides,
        override("run_dir", str(folder)),
        "resume=never",
        *run_callbacks_overrides(command, cfg),
    ]
    try:
        with hooks.run_callbacks(test):
            run_job(command, config_path, job_overrides, verbose=verbose)
    except RangeTestDone:
        pass
    _end_process_group()
    if test.result is None:
        raise ConfigError(
            f"the {command} job ended before its first training step, so no range test ran; "
            "check that the config trains (train.epochs / train.max_steps)"
        )
    result = test.result
    if du.env_rank()[0] == 0:
        write_text_atomic(run_dir / RESULT_FILE, json.dumps(result.to_json(), indent=2))
        if verbose:
            print(_summary_line(result, folder), flush=True)
    return result


def check_launch(
    config_path: str | Path, overrides: Sequence[str] = (), command: str | None = None
) -> str:
    """The config's command, checked before `--nproc N` starts torchrun: `groundup train`
    runs on one process, so its range test does too (one line now, not N rank failures)."""
    data = config_data(config_path, overrides)
    command = check_command(command) if command else detect_command(data, str(config_path))
    if command == "train":
        raise ConfigError("groundup train runs on one process: drop --nproc")
    return command


def write_result(result: LRFindResult, folder: Path) -> None:
    """lr_find.json and lr_find.png in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / RESULT_FILE, json.dumps(result.to_json(), indent=2))
    result.plot(folder / PLOT_FILE)


def _clear(folder: Path) -> None:
    """The previous range test goes; a folder that holds a real run is refused."""
    if not folder.exists():
        return
    checkpoints = folder / "checkpoints"
    real = [m for m in RUN_MARKS if (folder / m).exists()]
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        real.append("checkpoints")
    if real or not folder.is_dir():
        raise ConfigError(
            f"{folder} holds a run ({', '.join(real) or 'a file'}), not a range test; move it, "
            "or set run_dir so that <run_dir>/lr_find is free"
        )
    shutil.rmtree(folder)


def _end_process_group() -> None:
    """The job's process group, left open by the exception that ended it: freed like a job
    that ends cleanly (the DDP wrapper first, then every rank together)."""
    from groundup import distributed as du

    gc.collect()
    if du.active():
        du.barrier()
        du.teardown()


def _summary_line(result: LRFindResult, folder: Path) -> str:
    steps = f"{len(result.lrs)} steps from {result.min_lr:.0e} to {result.lrs[-1]:.2e}"
    if result.diverged:
        steps += " (stopped: the loss diverged)"
    if result.suggestion is None:
        return (
            f"LR range test: {steps}; no suggestion (the loss never fell): try a wider range, "
            f"e.g. --min-lr {result.min_lr / 100:.0e}; plot in {folder / PLOT_FILE}"
        )
    return (
        f"LR range test: {steps}; suggested learning rate {result.suggestion:.2e} (steepest "
        f"descent of the smoothed loss): use {result.override()}; plot in {folder / PLOT_FILE}"
    )
