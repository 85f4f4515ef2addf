"""Keras's `BackupAndRestore` on the engine's checkpoints: a fit that was killed and is run
again with the same callback goes on from its last backup instead of starting over.

A backup is an ordinary step checkpoint (`backup_dir/step-N/`: safetensors weights and
optimizer, RNG, counters, data position, running sums, callback states; `latest` moved last),
written by `Trainer.request_save`, and the restore is `Trainer.load_checkpoint`: the same
files and code as `fit(resume_from=...)`, so a restored fit ends with the weights an
uninterrupted one would have.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from groundup.checkpoint import find_latest
from groundup.checkpoint.folders import DEBRIS, LATEST_FILE, STEP_DIR
from groundup.errors import ConfigError
from groundup.train.callbacks import Callback
from groundup.train.run_log import METRICS_FILE, rewind_records
from groundup.train.schedules import build_schedule

if TYPE_CHECKING:
    from groundup.train.trainer import Trainer


class BackupAndRestore(Callback):
    """Back the fit up into `backup_dir` and, when a backup is there as fit starts, restore it.

    `save_freq`: "epoch" (at each epoch's end) or N (every N optimizer steps, so a fit can go
    on from inside an epoch). `double_checkpoint=True` keeps the two newest backups (one
    survives a disk that fails during a save). `delete_checkpoint=True` removes the backups
    when fit ends normally (all epochs done, or stopped by a callback); a fit that raised or
    was interrupted keeps them for the next try.

    The restore happens in this callback's `on_train_begin`; callbacks listed after it then
    see a resumed fit (`trainer.resumed_from`), as with `fit(resume_from=...)` (CSVLogger
    keeps its rows, TensorBoard purges the later points), so list it first (`model.fit` puts
    it first for you). A fit given `resume_from` is left as it is.
    """

    def __init__(
        self,
        backup_dir: str | Path,
        save_freq: str | int = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
    ) -> None:
        if not isinstance(backup_dir, (str, Path)) or not str(backup_dir):
            raise ConfigError(f"BackupAndRestore needs a backup_dir path, got {backup_dir!r}")
        every = isinstance(save_freq, int) and not isinstance(save_freq, bool) and save_freq >= 1
        if save_freq != "epoch" and not every:
            raise ConfigError(
                f"BackupAndRestore save_freq must be 'epoch' or a number of steps >= 1, "
                f"got {save_freq!r}"
            )
        self.backup_dir = Path(backup_dir)
        self.save_freq = save_freq
        self.keep_last = 2 if double_checkpoint else 1
        self.delete_checkpoint = delete_checkpoint
        self.restored_from: Path | None = None
        self._fit_start: dict[str, int] = {"step": 0, "epoch": 0}  # of the fit backed up
        self._pending: dict[str, Any] | None = None  # callback states still to give back

    # ---------------------------------------------------------------- restore
    def on_train_begin(self, trainer: Trainer) -> None:
        self.restored_from, self._pending = None, None
        self._fit_start = {"step": trainer.step, "epoch": trainer.epoch}
        if trainer.resumed_from is not None:
            return  # fit(resume_from=...) chose its checkpoint
        latest = find_latest(self.backup_dir)
        if latest is not None:
            self._restore(trainer, latest)

    def _restore(self, trainer: Trainer, latest: Path) -> None:
        budget = (trainer.total_steps or 0) - trainer.step  # the steps this fit was given
        state = trainer.load_checkpoint(latest)  # weights, optimizer, RNG, counters, data
        # every callback's state (this one's too: where the backed-up fit started); the
        # callbacks after this one have yet to run on_train_begin, which resets a fit's
        # state, so they get theirs again when the first epoch begins
        trainer._load_callback_states(state)
        self._pending = state.get("callbacks", {})
        trainer.total_steps = self._fit_start["step"] + budget
        trainer.start_epoch = self._fit_start["epoch"]
        trainer.schedule = build_schedule(trainer.schedule_spec, trainer.total_steps)
        trainer.stop_training = bool(state.get("stopped", False))
        if trainer.run_dir is not None and trainer.rank == 0:
            # metrics.jsonl back to the backup's step (the killed fit wrote past it)
            trainer._metrics_log.close()
            rewind_records(trainer.run_dir / METRICS_FILE, trainer.step)
            trainer._metrics_log.open(trainer.run_dir, trainer.rank)
        self.restored_from = latest
        trainer.log_message(f"BackupAndRestore: restored step {trainer.step} from {latest}")

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        if self._pending is None:
            return
        saved, self._pending = self._pending, None
        keyed = trainer._keyed_callbacks()
        mine = next(i for i, (_, cb) in enumerate(keyed) if cb is self)
        for key, cb in keyed[mine + 1 :]:  # their on_train_begin came after the restore
            if key in saved:
                cb.load_state_dict(saved[key])

    # ---------------------------------------------------------------- back up
    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if self.save_freq != "epoch" and step % int(self.save_freq) == 0:
            trainer.request_save(self.backup_dir, keep_last=self.keep_last)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if self.save_freq == "epoch":
            trainer.request_save(self.backup_dir, keep_last=self.keep_last)

    def on_train_end(self, trainer: Trainer) -> None:
        finished = trainer.total_steps is not None and trainer.step >= trainer.total_steps
        stopped = trainer.stop_training and getattr(trainer, "_signal", None) is None
        if self.delete_checkpoint and (finished or stopped) and trainer.rank == 0:
            self._delete()

    def _delete(self) -> None:
        """Remove the backups this callback writes (step folders, `latest`, leftovers of
        killed saves) and then the folder if nothing else is in it."""
        folder = self.backup_dir
        if not folder.is_dir():
            return
        for child in folder.iterdir():
            ours = STEP_DIR.match(child.name) or DEBRIS.match(child.name)
            if ours and child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            elif ours or child.name == LATEST_FILE:
                child.unlink(missing_ok=True)
        if not any(folder.iterdir()):
            folder.rmdir()

    def state_dict(self) -> dict[str, Any]:
        return {"fit_start": dict(self._fit_start)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        start = state.get("fit_start", {})
        self._fit_start = {"step": int(start.get("step", 0)), "epoch": int(start.get("epoch", 0))}
