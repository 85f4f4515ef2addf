"""The Trainer's resume state and checkpoint saves: what a checkpoint holds besides weights,
optimizer and RNG (counters, data position, running sums, callback states), saving in the
strategy's form, and loading it all back. A mixin of `Trainer`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from groundup.checkpoint import (
    find_latest,
    load_checkpoint,
    save_checkpoint,
    save_step_checkpoint,
    unwrap,
)
from groundup.distributed import data_parallel
from groundup.errors import ConfigError
from groundup.train.callbacks import Callback
from groundup.train.metrics import Metric
from groundup.train.running_logs import RunningLogs


class CheckpointMixin:
    """`state`, `save_checkpoint`, `save_step_checkpoint`, `request_save`, `load_checkpoint`."""

    user_callbacks: list[Callback]

    def state(self) -> dict[str, Any]:
        """Everything besides weights, optimizer and RNG that exact resume needs: counters,
        the data position, the running epoch/log sums and every callback's `state_dict`."""
        state: dict[str, Any] = {
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "samples_seen": self.samples_seen,
            "tokens_seen": self.tokens_seen,
            "train_time_s": self.train_time(),
            "skipped_steps": self.skipped_steps,
            "rollbacks": self.rollbacks,
            "running": self._running.state_dict(self._metrics_of_all_ranks()),
            # stopped by a callback (early stopping), not by a signal: a resume stays stopped
            "stopped": bool(self.stop_training and self._signal is None),
            "callbacks": {key: cb.state_dict() for key, cb in self._keyed_callbacks()},
        }
        data_state = getattr(self._train_data, "state_dict", None)
        if callable(data_state):
            state["data"] = data_state()
        return state

    def _metrics_of_all_ranks(self) -> list[Metric]:
        """The training metrics as one process would hold them: under several ranks, copies
        merged over the ranks (a collective: every rank saves together), which rank 0 alone
        loads back on resume; the running state of each rank stays its own."""
        if self.world_size == 1 or not self.metrics:
            return self.metrics
        merged = [copy.deepcopy(m) for m in self.metrics]
        data_parallel.sync_metrics(merged, self.device)
        return merged

    def _keyed_callbacks(self) -> list[tuple[str, Callback]]:
        """User callbacks by a stable key (class name, numbered when a class repeats)."""
        seen: dict[str, int] = {}
        out = []
        for cb in self.user_callbacks:
            name = type(cb).__name__
            seen[name] = seen.get(name, 0) + 1
            out.append((name if seen[name] == 1 else f"{name}_{seen[name]}", cb))
        return out

    def _load_callback_states(self, state: dict[str, Any]) -> None:
        saved = state.get("callbacks", {})
        for key, cb in self._keyed_callbacks():
            if key in saved:
                cb.load_state_dict(saved[key])

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint directory at `path` (replacing one there). Several ranks: every
        rank must call it (FSDP2 ranks each write their shards; DDP's rank 0 writes)."""
        path = save_checkpoint(
            path, self.model, self.optimizer, self._state_payload(extra), **self._placement
        )
        for cb in self.user_callbacks:
            cb.on_save(self, path)
        return path

    def save_step_checkpoint(
        self, directory: str | Path | None = None, keep_last: int | None = None
    ) -> Path:
        """Save `<directory>/step-N` (default: `<run_dir>/checkpoints`), update `latest`,
        keep the newest `keep_last` (default: the trainer's)."""
        if directory is None:
            if self.run_dir is None:
                raise ConfigError("saving a checkpoint needs a run_dir (or a directory)")
            directory = self.run_dir / "checkpoints"
        keep = keep_last if keep_last is not None else self.keep_last
        payload = self._state_payload(None)
        path = save_step_checkpoint(
            directory, self.step, self.model, self.optimizer, payload, keep, **self._placement
        )
        for cb in self.user_callbacks:
            cb.on_save(self, path)
        return path

    @property
    def _placement(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "rank": self.rank, "world_size": self.world_size}

    def _state_payload(self, extra: dict[str, Any] | None) -> dict[str, Any]:
        state = self.state()
        if self.config is not None:
            state["config"] = self.config
        if extra:
            state.update(extra)
        return state

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restore weights, optimizer, RNG, counters, data position and the running sums from
        `path` (a checkpoint directory, or a `checkpoints/` folder: its newest complete
        checkpoint whose state.json reads). Returns the saved state; callback states are
        applied by `fit`. Whether the checkpoint belongs to this config is the run's
        question (groundup.runs compares the configs once, before anything is touched)."""
        self.build_optimizer()
        path = Path(path)
        if not (path / "state.json").is_file():
            latest = find_latest(path)
            path = latest if latest is not None else path
        state = load_checkpoint(path, unwrap(self.model), self.optimizer)
        self.resumed_from = path
        self.step = int(state.get("step", 0))
        self.epoch = int(state.get("epoch", 0))
        self.step_in_epoch = int(state.get("step_in_epoch", 0))
        self.samples_seen = int(state.get("samples_seen", 0))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self._time_before_fit = float(state.get("train_time_s", 0.0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self._running = RunningLogs()
        if "running" in state:
            # several ranks: the saved metric state is every rank's, merged; rank 0 takes it
            metrics = self.metrics if self.rank == 0 else []
            self._running.load_state_dict(state["running"], metrics, self.device)
        loader = getattr(self._train_data, "load_state_dict", None)
        if "data" in state and callable(loader):
            loader(state["data"])
        return state

    def _save_due(self, cadence: Any) -> None:
        """The checkpoints asked for during this step (best first, then step checkpoints),
        and the every-`checkpoint_every`-steps one."""
        requests, self._save_requests = self._save_requests, []
        every = cadence.checkpoint_every
        if every and self.step % every == 0 and self.run_dir is not None:
            requests.append((self.run_dir / "checkpoints", False, None))
        done: set[Path] = set()
        for directory, best, keep_last in sorted(requests, key=lambda r: not r[1]):
            if best:
                self.save_checkpoint(directory / "best")
            elif directory not in done:
                done.add(directory)
                self._saved_path = self.save_step_checkpoint(directory, keep_last)

    def request_save(
        self, directory: str | Path, *, best: bool = False, keep_last: int | None = None
    ) -> None:
        """Ask for a checkpoint in `directory` at the end of this step (its `best/` with
        `best=True`, else a `step-N/`), after every record of the step is written. Callbacks
        use this instead of saving from inside a hook."""
        self._save_requests.append((Path(directory), best, keep_last))
