"""The one training loop. `Sequential.fit`, `groundup train`, pretraining and fine-tuning are
configurations of it.

A step: for each of `grad_accum` micro-batches, forward, loss, backward; clip; optimizer step;
LR schedule; callbacks. With accumulation, each micro-batch's summed loss is divided by the
item count of the whole step (valid tokens for language models), so k micro-batches of b give
exactly the gradients of one batch of k*b, masked tokens included.

The hot loop does no Python work per sample and no device sync per step: losses stay tensors
until a log line needs them.

Reliability:
- SIGINT/SIGTERM during `fit` (main thread only) set a flag; at the next step boundary the
  trainer saves a checkpoint (with a run_dir) and raises `TrainingInterrupted`.
- `nan_policy` ("stop", "skip", "rollback") handles a non-finite loss or gradient norm. On the
  CPU the check runs every step (reading a scalar costs nothing there). On CUDA a per-step check
  would sync the device every step, so "stop"/"rollback" check only at log steps, where the
  loss is read anyway (detection can lag up to `log_every` steps; rollback then restores the
  newest checkpoint); "skip" must decide before the optimizer step, so it syncs every step.

Several ranks (torchrun, `strategy` "ddp" or "fsdp"): the step's item count and loss are
all-reduced so training matches one process, the ranks agree on stops, and the training
metrics are combined over the ranks at epoch end; the details are in
groundup.distributed.data_parallel. With one process none of it runs: no collective, no extra work.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groundup import distributed as dist_utils
from groundup.distributed import data_parallel
from groundup.errors import ConfigError, TrainingInterrupted
from groundup.train.batches import Batch
from groundup.train.callbacks import Callback, CallbackList, ProgressBar
from groundup.train.callbacks_keras import keras_params
from groundup.train.device import (
    PRECISIONS,
    bf16_supported,
    resolve_device,
    resolve_precision,
    weight_dtype,
)
from groundup.train.fit_plan import plan_fit
from groundup.train.history import History
from groundup.train.loggers import build_loggers
from groundup.train.loop_config import LoopConfig
from groundup.train.losses import Loss, get_loss
from groundup.train.metrics import Metric, check_metrics_fit_loss, get_metric
from groundup.train.optim import build_optimizer
from groundup.train.optim_config import OptimConfig
from groundup.train.run_log import METRICS_FILE, MetricsLog, rate_logs, rewind_records
from groundup.train.running_logs import RunningLogs
from groundup.train.schedules import ConstantSchedule, Schedule, build_schedule
from groundup.train.stop_signals import install_stop_handlers, restore_handlers
from groundup.train.trainer_eval import EvaluationMixin
from groundup.train.trainer_state import CheckpointMixin
from groundup.train.trainer_step import StepMixin

# resolve_device / resolve_precision were defined here first: importable from here still
__all__ = [
    "NAN_POLICIES",
    "PRECISIONS",
    "Trainer",
    "bf16_supported",
    "resolve_device",
    "resolve_precision",
]

NAN_POLICIES = ("stop", "skip", "rollback")


class Trainer(StepMixin, CheckpointMixin, EvaluationMixin):
    """Trains any `nn.Module` with a loss, an optimizer and an optional LR schedule.

    Batches are tuples `(x, y)` or `(x, y, sample_weight)` from any iterable: a
    `TensorBatches` for in-memory data, a window sampler over token shards, or your own.

    Example::

        trainer = gu.Trainer(model, loss="mse", optimizer="adamw", lr=1e-3)
        history = trainer.fit(gu.TensorBatches(x, y, batch_size=64), epochs=10)

    Reliability options: `nan_policy` ("stop": save and raise `TrainingError`; "skip": drop
    the update, counted in `skipped_steps`; "rollback": reload the newest checkpoint of
    `run_dir` and go on with the next batch), `keep_last` (step checkpoints kept in
    `<run_dir>/checkpoints`), `config` (the job's resolved config, stored in each checkpoint
    and compared on resume).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | Loss | Callable = "mse",
        optimizer: Any = "adamw",
        *,
        lr: float | None = None,
        weight_decay: float | None = None,
        schedule: Any = None,
        metrics: Sequence[str | Metric] = (),
        callbacks: Sequence[Callback] = (),
        grad_accum: int = 1,
        clip_grad_norm: float | None = None,
        precision: str = "fp32",
        device: str | torch.device = "auto",
        compile: bool = False,
        run_dir: str | Path | None = None,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        output_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        regularizer: Callable[[], torch.Tensor | None] | None = None,
        log_every: int = 50,
        verbose: int = 1,
        flops_per_sample: float | None = None,
        peak_flops: float | None = None,
        datasheet_flops: float | None = None,
        report_perplexity: bool = False,
        token_bytes: Any = None,
        nan_policy: str = "stop",
        keep_last: int | None = 3,
        config: dict[str, Any] | None = None,
        strategy: str = "none",
        activation_checkpointing: bool = False,
        evaluators: Sequence[Callable[[nn.Module], dict[str, float]]] = (),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"Trainer needs a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(grad_accum, int) or grad_accum < 1:
            raise ConfigError(f"grad_accum must be an integer >= 1, got {grad_accum!r}")
        if clip_grad_norm is not None and clip_grad_norm <= 0:
            raise ConfigError(
                f"clip_grad_norm must be > 0 (or null to disable), got {clip_grad_norm}"
            )
        if log_every < 1:
            raise ConfigError(f"log_every must be >= 1, got {log_every}")
        if nan_policy not in NAN_POLICIES:
            raise ConfigError(
                f"nan_policy must be one of {', '.join(NAN_POLICIES)}, got {nan_policy!r}"
            )
        if keep_last is not None and keep_last < 1:
            raise ConfigError(f"keep_last must be >= 1 (or null to keep all), got {keep_last}")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self._input_dtype = weight_dtype(precision)  # fp64: the model and float inputs
        if self._input_dtype is not None:
            self.model = self.model.to(self._input_dtype)
        self._loss_dtype = self._input_dtype or torch.float32  # step losses accumulate in it
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        self.strategy, self.model, self._ddp = data_parallel.prepare_model(
            self.model,
            strategy,
            self.device,
            precision,
            activation_checkpointing=activation_checkpointing,
            custom_forward=forward is not None,
            optimizer=optimizer,
        )
        if self.rank != 0:
            verbose = 0  # progress and messages on rank 0 only
        self.loss_fn: Loss = get_loss(loss, model=model)
        self._optimizer_spec = optimizer
        self._optimizer_overrides = {
            k: v for k, v in (("lr", lr), ("weight_decay", weight_decay)) if v is not None
        }
        self.optimizer: torch.optim.Optimizer | None = None
        if isinstance(optimizer, torch.optim.Optimizer):
            self.optimizer = optimizer
        self.schedule_spec = schedule
        self.schedule: Schedule | None = None
        self.metrics: list[Metric] = [get_metric(m) for m in metrics]
        check_metrics_fit_loss(self.loss_fn, self.metrics)
        self.user_callbacks = list(callbacks)
        self.grad_accum = grad_accum
        self.clip_grad_norm = clip_grad_norm
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.precision = precision
        self.compile = compile
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._forward_fn = forward if forward is not None else (self._ddp or self.model)
        self._forward = self._forward_fn
        self.output_transform = output_transform
        # what the metrics see: probabilities (the loss knows when its outputs are logits)
        self._metric_transform = output_transform or self.loss_fn.probabilities()
        self.regularizer = regularizer
        self.log_every = log_every
        self.verbose = verbose
        self.flops_per_sample = flops_per_sample
        self.peak_flops = peak_flops  # measured (groundup.train.hardware): the records' mfu
        self.datasheet_flops = datasheet_flops  # the vendor's dense peak: mfu_datasheet
        self.report_perplexity = report_perplexity  # language models: exp(mean token loss)
        self.evaluators = list(evaluators)  # more figures per evaluation: see `validate`
        # bytes per token id (`Tokenizer.token_bytes()`): evaluate then reports bits per byte
        self.token_bytes = None if token_bytes is None else torch.as_tensor(token_bytes)
        self.nan_policy = nan_policy
        self.keep_last = keep_last
        self.config = config  # the job's resolved config: saved in state.json, checked on resume
        self.skipped_steps = 0  # steps whose update was dropped (nan_policy "skip"/"rollback")
        self.rollbacks = 0
        self._signal: int | None = None  # set by the SIGINT/SIGTERM handler
        self._step_skipped = False

        # Counters (saved in checkpoints).
        self.step = 0  # optimizer steps taken
        self.epoch = 0
        self.step_in_epoch = 0
        self.samples_seen = 0
        self.tokens_seen = 0
        self.stop_training = False
        self.last_loss: torch.Tensor = torch.zeros(())
        self.epochs: int | None = None
        self.start_epoch = 0  # the epoch this fit() started at (for display)
        self.total_steps: int | None = None
        self.steps_per_epoch: int | None = None
        self.history = History()
        self._metrics_log = MetricsLog()  # metrics.jsonl, open during fit() on rank 0
        self._train_data: Any = None
        self.has_validation = False
        self._micro_share = 1.0  # this micro-batch's item count (scales a per-step penalty)
        self._stop_flag: torch.Tensor | None = None  # several ranks: any rank signalled
        self._unsynced_noted = False  # several ranks: the note on uncombinable metrics is out
        self._running = RunningLogs()  # epoch and log-window sums (saved in checkpoints)
        self._window_start = time.perf_counter()
        self._window_data_time = 0.0  # seconds of the log window spent waiting for batches
        self._time_before_fit = 0.0  # training wall time of earlier fits (and before a resume)
        self._fit_started: float | None = None
        self.last_eval_items: int | None = None  # loss items of the last evaluation
        self._log_grad_norm: torch.Tensor | None = None  # the norm of the step a record shows
        self._save_requests: list[tuple[Path, bool, int | None]] = []  # see request_save
        self._saved_path: Path | None = None  # the step checkpoint saved at this step
        self._evaluated_step: int | None = None  # the step of the last evaluation
        self.resumed_from: Path | None = None  # the checkpoint fit() resumed from

    @classmethod
    def from_config(
        cls, model: nn.Module, loop: LoopConfig, optim: OptimConfig, **options: Any
    ) -> Trainer:
        """A Trainer from a command's `train:` and `optim:` sections; `options` add what the
        sections do not hold (loss, metrics, callbacks, run_dir, ...) or replace a value the
        job computed (grad_accum split over ranks, a rank's device). Pass the same section's
        `fit_options()` to `fit`."""
        settings: dict[str, Any] = {
            "optimizer": optim.optimizer_spec(),
            "schedule": optim.schedule_spec(),
            "grad_accum": loop.grad_accum,
            "clip_grad_norm": loop.clip_grad_norm,
            "precision": loop.precision,
            "device": loop.device,
            "compile": loop.compile,
            "log_every": loop.log_every,
            "nan_policy": loop.nan_policy,
            "keep_last": loop.keep_last,
        }
        settings.update(options)
        # train.loggers: one callback per backend, writing into the run folder (rank 0 only)
        loggers = build_loggers(loop.loggers, options.get("run_dir"), options.get("config"))
        if loggers:
            settings["callbacks"] = [*settings.get("callbacks", ()), *loggers]
        return cls(model, **settings)

    # ---------------------------------------------------------------- setup
    def build_optimizer(self) -> torch.optim.Optimizer:
        """Build the optimizer from its spec once the model's parameters exist."""
        if self.optimizer is None:
            self.optimizer = build_optimizer(
                self._optimizer_spec, self.model, **self._optimizer_overrides
            )
        return self.optimizer

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, batch: Batch) -> Batch:
        if self._input_dtype is not None:  # fp64: floating features and targets follow
            batch = tuple(t.to(self._input_dtype) if t.is_floating_point() else t for t in batch)
        if self.device.type == "cpu":
            return batch
        non_blocking = self.device.type == "cuda"
        return tuple(t.to(self.device, non_blocking=non_blocking) for t in batch)

    # ---------------------------------------------------------------- fit
    def fit(
        self,
        train: Iterable[Batch],
        val: Iterable[Batch] | None = None,
        *,
        epochs: int | None = None,
        max_steps: int | None = None,
        eval_every: int | None = None,
        eval_batches: int | None = None,
        checkpoint_every: int | None = None,
        resume_from: str | Path | None = None,
    ) -> History:
        """Train for `epochs` passes over `train` or `max_steps` optimizer steps (or both: the
        first reached). Validation runs at each epoch end, or every `eval_every` steps.

        `resume_from` (a checkpoint, or a `checkpoints/` folder: its newest complete one)
        restores weights, optimizer, RNG, counters, data position, the running epoch and log
        sums and every callback's `state_dict`; metrics.jsonl is cut back to that step, so the
        resumed run writes exactly the records the uninterrupted one would have."""
        plan = plan_fit(
            train,
            epochs=epochs,
            max_steps=max_steps,
            eval_every=eval_every,
            grad_accum=self.grad_accum,
            world_size=self.world_size,
        )
        self.steps_per_epoch, self.epochs = plan.steps_per_epoch, plan.epochs
        self.history.set_params(keras_params(self))  # Keras's History.params
        self._train_data = train
        self.has_validation = val is not None

        self.build_optimizer()
        saved_state: dict[str, Any] | None = None
        self.resumed_from = None
        if resume_from is not None:
            saved_state = self.load_checkpoint(resume_from)  # the budget counts from step 0
            self.total_steps = plan.budget
        else:  # a second fit() trains for its own budget, like Keras
            if self.step_in_epoch:  # the last fit stopped mid-epoch: this one starts a new one
                self.epoch += 1
                self.step_in_epoch = 0
            self.total_steps = self.step + plan.budget
            self.start_epoch = self.epoch
            self._running = RunningLogs()
        self.schedule = build_schedule(self.schedule_spec, self.total_steps)
        self._fit_started = time.perf_counter()
        if self.compile and self._forward is self._forward_fn:
            self._forward = torch.compile(self._forward_fn)

        callbacks = CallbackList(self._callbacks())
        self.stop_training = False
        if saved_state is not None and self.rank == 0 and self.run_dir is not None:
            rewind_records(self.run_dir / METRICS_FILE, self.step)
        self._metrics_log.open(self.run_dir, self.rank)
        self._signal = None
        previous = install_stop_handlers(self._on_stop_signal)
        callbacks.call("on_train_begin", self)
        if saved_state is not None:  # after on_train_begin, which resets a fresh fit's state
            self._load_callback_states(saved_state)
            # a run that had stopped (early stopping, a callback) stays stopped
            self.stop_training = bool(saved_state.get("stopped", False))
            if self.verbose:
                print(f"resumed from step {self.step} ({self.resumed_from})", flush=True)
        try:
            self._run(train, val, callbacks, eval_every, eval_batches, checkpoint_every)
            if self._signal is not None:
                saved = None
                if self.run_dir is not None:
                    saved = self._saved_path or self.save_step_checkpoint()
                raise TrainingInterrupted(self.step, saved, self._signal)
        finally:
            restore_handlers(previous)
            callbacks.call("on_train_end", self)
            self._metrics_log.close()
            self._time_before_fit, self._fit_started = self.train_time(), None
        return self.history

    def train_time(self) -> float:
        """Wall seconds spent in fit() over the whole run (earlier fits and the time before a
        resume included): the `time_s` of each record."""
        running = time.perf_counter() - self._fit_started if self._fit_started else 0.0
        return self._time_before_fit + running

    def lr_find(self, train: Iterable[Batch], **options: Any) -> Any:
        """The learning-rate range test on this trainer's model, optimizer and step (see
        `groundup.train.lr_finder.lr_find` for the options); the weights, optimizer state and
        RNG are as they were afterwards, so `fit` starts from the same place."""
        from groundup.train.lr_finder import lr_find

        return lr_find(self, train, **options)

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        """SIGINT/SIGTERM during fit(): stop at the next step boundary (fit saves, then raises)."""
        if self._signal is not None:
            if self.world_size > 1:
                return  # torchrun forwards the terminal's signal: the ranks still save
            raise KeyboardInterrupt  # a second signal: stop now, without a checkpoint
        self._signal = signum
        if self.world_size == 1:
            self.stop_training = True
        # several ranks: _agree_on_stop stops every rank at the same step

    def _callbacks(self) -> list[Callback]:
        cbs = list(self.user_callbacks)
        if self.verbose and not any(isinstance(cb, ProgressBar) for cb in cbs):
            cbs.append(ProgressBar(verbose=self.verbose))
        return cbs

    def _run(
        self,
        train: Iterable[Batch],
        val: Iterable[Batch] | None,
        callbacks: CallbackList,
        eval_every: int | None,
        eval_batches: int | None,
        checkpoint_every: int | None,
    ) -> None:
        model, schedule, accum = self.model, self.schedule, self.grad_accum
        # a constant LR without warmup needs no per-step work
        apply_schedule = not (isinstance(schedule, ConstantSchedule) and schedule.warmup_steps == 0)
        if apply_schedule:
            schedule.apply(self.optimizer, self.step)
        cadence = _Cadence(val, eval_every, eval_batches, checkpoint_every)
        while self.step < self.total_steps and not self.stop_training:
            model.train()
            if self.step_in_epoch == 0:  # a resumed epoch keeps the sums it had so far
                self._running.new_epoch(self.metrics)
            callbacks.call("on_epoch_begin", self, self.epoch)
            self._window_start = time.perf_counter()
            iterator: Iterator[Batch] = iter(train)
            micro: list[Batch] = []
            asked = time.perf_counter()  # when the loop asked the data for its next batch
            for batch in iterator:
                self._window_data_time += time.perf_counter() - asked
                micro.append(self._to_device(batch))
                if len(micro) < accum:
                    continue
                loss = self.train_step(micro)
                x = micro[0][0]
                n_samples = x.shape[0] * len(micro) * self.world_size
                self.samples_seen += n_samples
                if x.dtype in (torch.int64, torch.int32) and x.dim() in (2, 3):
                    tokens = x.numel() if x.dim() == 2 else x[:, 0].numel()  # packed: (B, 2, T)
                    self.tokens_seen += tokens * len(micro) * self.world_size
                micro = []
                self.step += 1
                self.step_in_epoch += 1
                if self.world_size > 1:
                    self._agree_on_stop()
                self._running.add(loss, n_samples, self._step_skipped)
                if not self._step_skipped:  # a dropped step's NaN stays out of the means
                    self.last_loss = loss
                if apply_schedule:
                    schedule.apply(self.optimizer, self.step)
                if self._end_step(callbacks, cadence, iterator):
                    break
                asked = time.perf_counter()
            if self._signal is not None:
                break  # interrupted: no epoch-end evaluation, fit() saves and raises
            if self.steps_per_epoch is None:  # an iterable without len() ran out
                if cadence.val is not None and self._evaluated_step != self.step:
                    self._evaluate_and_record(cadence, callbacks)
                self._save_due(cadence)
                break

    def _end_step(self, callbacks: CallbackList, cadence: _Cadence, iterator: Iterator) -> bool:
        """Everything after an optimizer step, in the order that makes a kill at any point
        resumable into identical logs: the step's records (train log, evaluation, epoch end)
        are written first, then checkpoints are saved (so a checkpoint of step N always comes
        after every record of step N, and its state already counts the ended epoch). Returns
        True when the loop over this epoch's batches must stop."""
        self._saved_path = None
        if self.step % self.log_every == 0:
            self._log_train(callbacks)
        if cadence.eval_every and self.step % cadence.eval_every == 0 and cadence.val is not None:
            self._evaluate_and_record(cadence, callbacks)
            self.model.train()
        callbacks.call("on_step_end", self, self.step)
        done = self.step >= self.total_steps or (self.stop_training and self._signal is None)
        epoch_over = False
        if self.steps_per_epoch is not None:
            epoch_over = self.step_in_epoch >= self.steps_per_epoch
            if epoch_over or done:
                self._close_epoch(callbacks, cadence, ended=epoch_over)
            if epoch_over:
                for _ in iterator:  # a remainder too small for a whole step: the epoch ends
                    pass
                self.epoch += 1
                self.step_in_epoch = 0
        elif done and cadence.val is not None and self._evaluated_step != self.step:
            self._evaluate_and_record(cadence, callbacks)  # the final evaluation
        self._save_due(cadence)
        return epoch_over or self.step >= self.total_steps or self.stop_training

    def _close_epoch(self, callbacks: CallbackList, cadence: _Cadence, ended: bool) -> None:
        """The epoch record (also for an epoch cut short by max_steps or a stop)."""
        logs = self._epoch_logs()
        if cadence.val is not None and not cadence.eval_every:
            logs.update(self.validate(cadence.val, cadence.eval_batches))
            self._evaluated_step = self.step
            callbacks.call("on_eval_end", self, logs)
        callbacks.call("on_epoch_end", self, self.epoch, logs)
        self.history.record(self.epoch, self.step, logs)
        record = {"event": "epoch", "epoch": self.epoch, "step": self.step, **logs}
        self._write_metrics({**record, **self._progress_fields(with_val="val_loss" in logs)})
        self.model.train()

    def _epoch_logs(self) -> dict[str, float]:
        logs: dict[str, float] = {}
        loss = self._running.epoch_loss()
        if loss is not None:
            logs["loss"] = loss
        metrics = self.metrics
        if self.world_size > 1 and metrics:  # merged copies: the running state stays per rank
            metrics = [copy.deepcopy(m) for m in metrics]
            self._sync_metrics(metrics)
        for m in metrics:
            logs[m.name] = m.compute()
        return logs

    def _sync_metrics(self, metrics: list[Metric]) -> None:
        """Several ranks: each metric over every rank's batches (one collective); a metric
        that cannot be combined keeps rank 0's share, said once."""
        unsynced = data_parallel.sync_metrics(metrics, self.device)
        if unsynced and not self._unsynced_noted:
            self._unsynced_noted = True
            names = ", ".join(m.name for m in unsynced)
            self.log_message(
                f"training metric(s) {names} have no Metric.state() to combine across ranks: "
                "their training values are rank 0's share of the data"
            )

    def _evaluate_and_record(self, cadence: _Cadence, callbacks: CallbackList) -> None:
        logs = self.validate(cadence.val, cadence.eval_batches)
        self._evaluated_step = self.step
        self.history.record(self.epoch, self.step, logs)
        self._write_metrics({"event": "eval", "step": self.step, **logs, **self._progress_fields()})
        callbacks.call("on_eval_end", self, logs)

    def _log_train(self, callbacks: CallbackList) -> None:
        losses, items = self._running.take_window()
        now = time.perf_counter()
        elapsed = max(now - self._window_start, 1e-9)
        data_wait = min(self._window_data_time / elapsed, 1.0)
        self._window_start, self._window_data_time = now, 0.0
        loss = float(torch.stack(losses).double().mean()) if losses else math.nan
        if losses and not math.isfinite(loss) and not self._check_every_step:
            self._on_nonfinite(loss, None, before_update=False)  # CUDA: checked at log steps
        logs: dict[str, float] = {"loss": loss, "lr": self.optimizer.param_groups[0]["lr"]}
        if self._log_grad_norm is not None:
            logs["grad_norm"] = float(self._log_grad_norm)
            self._log_grad_norm = None
        if self.skipped_steps:
            logs["skipped_steps"] = self.skipped_steps
        logs.update(
            rate_logs(
                items,
                elapsed,
                samples_seen=self.samples_seen,
                tokens_seen=self.tokens_seen,
                world_size=self.world_size,
                flops_per_sample=self.flops_per_sample,
                peak_flops=self.peak_flops,
                datasheet_flops=self.datasheet_flops,
            )
        )
        logs["data_wait"] = data_wait
        callbacks.call("on_log", self, logs)
        record = {"event": "train", "step": self.step, "epoch": self.epoch, **logs}
        self._write_metrics({**record, **self._progress_fields(with_val=False)})

    # ---------------------------------------------------------------- logging
    def _progress_fields(self, with_val: bool = True) -> dict[str, Any]:
        """Where the run stands, for a record: wall time, samples and tokens seen, and the
        size of the validation estimate (its loss items) when the record has one."""
        fields: dict[str, Any] = {"time_s": round(self.train_time(), 3)}
        fields["samples"] = self.samples_seen
        if self.tokens_seen:
            fields["tokens"] = self.tokens_seen
        if with_val and self.last_eval_items is not None:
            fields["val_items"] = self.last_eval_items
        return fields

    def _write_metrics(self, record: dict[str, Any]) -> None:
        self._metrics_log.write(record)

    def log_message(self, text: str) -> None:
        """A human-readable note (early stopping, resume) on the console when verbose."""
        if self.verbose:
            print(text, flush=True)
        self._write_metrics({"event": "message", "step": self.step, "text": text})


class _Cadence:
    """What fit() was asked to evaluate and save, and how often."""

    def __init__(
        self,
        val: Iterable[Batch] | None,
        eval_every: int | None,
        eval_batches: int | None,
        checkpoint_every: int | None,
    ) -> None:
        self.val, self.eval_every, self.eval_batches = val, eval_every, eval_batches
        self.checkpoint_every = checkpoint_every
