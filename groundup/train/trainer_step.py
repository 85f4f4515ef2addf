"""The Trainer's optimizer step: forward and loss (`compute_loss`, the override point),
backward over the micro-batches with the loss divided by the step's item count (global under
several ranks), clipping, the update, and the NaN policy. A mixin of `Trainer`."""

from __future__ import annotations

import math
import signal
from typing import Any

import torch

from groundup.checkpoint import find_latest, load_checkpoint, unwrap
from groundup.distributed import data_parallel
from groundup.errors import TrainingError
from groundup.train.batches import Batch

NAN_HINT = (
    "lower the learning rate, enable clip_grad_norm (e.g. 1.0), or check the data for NaN/inf"
)


class StepMixin:
    """`compute_loss`, `train_step` and what a step needs (see `Trainer`)."""

    model: Any
    optimizer: Any

    def compute_loss(
        self, batch: Batch, reduction: str = "mean"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward one batch and return `(loss, outputs)`. Override for custom models.

        `reduction="sum"` returns the loss summed over the items `loss_fn.count` counts
        (the trainer divides by the step's total count when accumulating gradients).
        """
        x, y = batch[0], batch[1]
        weight = batch[2] if len(batch) > 2 else None
        outputs = self._forward(x)
        if reduction == "sum":
            loss = self.loss_fn.sum(outputs, y, weight)
        else:
            loss = self.loss_fn(outputs, y, weight)
        if self.regularizer is not None:
            penalty = self.regularizer()
            if penalty is not None:
                # the penalty belongs once per step: scale it by this micro-batch's share
                loss = loss + (penalty * self._micro_share if reduction == "sum" else penalty)
        return loss, outputs

    def train_step(self, micro_batches: list[Batch]) -> torch.Tensor:
        """One optimizer step over `micro_batches`; returns the step's mean loss (a tensor)."""
        optimizer = self.optimizer
        if self.world_size > 1:
            step_loss = self._distributed_backward(micro_batches)
        elif len(micro_batches) == 1:
            batch = micro_batches[0]
            with self._autocast():
                loss, outputs = self.compute_loss(batch)
            loss.backward()
            self._update_metrics(outputs, batch[1])
            step_loss = loss.detach()
        else:
            counts = [self.loss_fn.count(b[1]) for b in micro_batches]
            total = sum(counts)
            step_loss = torch.zeros((), dtype=self._loss_dtype, device=self.device)
            for batch, count in zip(micro_batches, counts):
                self._micro_share = count * 1.0
                with self._autocast():
                    loss_sum, outputs = self.compute_loss(batch, reduction="sum")
                    loss = loss_sum / total
                loss.backward()
                self._update_metrics(outputs, batch[1])
                step_loss += loss.detach()
        norm = None
        logged = (self.step + 1) % self.log_every == 0  # the train record shows its norm
        if self.clip_grad_norm is not None or logged:
            norm = self._grad_norm()
            if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
                norm = norm.full_tensor()
            if logged:
                self._log_grad_norm = norm.detach()
            if self.clip_grad_norm is None:
                norm = None  # measured for the record only: the NaN policy looks at the loss
        self._step_skipped = False
        if self._check_every_step and not self._finite(step_loss, norm):
            optimizer.zero_grad(set_to_none=True)
            self._on_nonfinite(step_loss, norm, before_update=True)
            return step_loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return step_loss

    def _grad_norm(self) -> torch.Tensor:
        """The global gradient norm, clipped to `clip_grad_norm` when that is set; otherwise
        measured only (for the train record), leaving the gradients as they are."""
        params = self.model.parameters()
        if self.clip_grad_norm is not None:
            return torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
        if total_norm is None:
            return torch.nn.utils.clip_grad_norm_(params, math.inf)  # scales by 1: unchanged
        return total_norm([p.grad for p in params if p.grad is not None])

    def _distributed_backward(self, micro_batches: list[Batch]) -> torch.Tensor:
        """Forward/backward over several ranks; returns the global step loss (all ranks equal)."""
        counts = [self.loss_fn.count(b[1]) for b in micro_batches]
        total = data_parallel.global_item_count(counts, self.device)
        step_loss = torch.zeros((), dtype=self._loss_dtype, device=self.device)
        last = len(micro_batches) - 1
        for i, (batch, count) in enumerate(zip(micro_batches, counts)):
            with data_parallel.micro_batch_sync(self.model, self._ddp, i, last):
                self._micro_share = count * 1.0
                with self._autocast():
                    loss_sum, outputs = self.compute_loss(batch, reduction="sum")
                    loss = loss_sum / total
                # DDP/FSDP average the ranks' gradients; the count is global, so sum them
                (loss * self.world_size).backward()
            self._update_metrics(outputs, batch[1])
            step_loss += loss.detach()
        step_loss, self._stop_flag = data_parallel.agree_loss_and_signal(
            step_loss, self._signal, self.device
        )
        return step_loss

    def _agree_on_stop(self) -> None:
        """Several ranks: stop together when any rank got SIGINT/SIGTERM (one step late at most
        on the CPU; at the next log step on GPUs, where reading the flag costs a sync)."""
        if self._stop_flag is None:
            return
        if self._check_every_step or self.step % self.log_every == 0:
            if float(self._stop_flag) > 0:
                self._signal = self._signal or signal.SIGTERM
                self.stop_training = True

    @property
    def _check_every_step(self) -> bool:
        # CPU: reading a scalar is free. Accelerators: only "skip" syncs per step (module doc).
        return self.device.type == "cpu" or self.nan_policy == "skip"

    @staticmethod
    def _finite(loss: torch.Tensor, norm: torch.Tensor | None) -> bool:
        ok = torch.isfinite(loss)
        if norm is not None:
            ok = ok & torch.isfinite(norm)
        return bool(ok)

    def _on_nonfinite(
        self, loss: torch.Tensor | float, norm: torch.Tensor | None, before_update: bool
    ) -> None:
        """Apply `nan_policy` to a step whose loss or gradient norm is not finite."""
        step = self.step + 1 if before_update else self.step
        loss_v = float(loss)
        what = f"loss {loss_v}" if not math.isfinite(loss_v) else f"gradient norm {float(norm)}"
        if self.nan_policy == "skip":
            self.skipped_steps += 1
            self._step_skipped = True
            return
        if self.nan_policy == "rollback" and self.run_dir is not None:
            latest = find_latest(self.run_dir / "checkpoints")
            if latest is not None:
                # model and optimizer go back; counters and the data position move on
                load_checkpoint(latest, unwrap(self.model), self.optimizer, restore_rng_state=False)
                self.optimizer.zero_grad(set_to_none=True)
                self.rollbacks += 1
                self.skipped_steps += 1
                self._step_skipped = True
                self.log_message(f"non-finite {what} at step {step}: rolled back to {latest}")
                return
        saved = ""
        # only a check before the update leaves finite weights worth saving
        if before_update and self.run_dir is not None:
            saved = f"; checkpoint saved in {self.save_step_checkpoint()}"
        raise TrainingError(
            f"non-finite {what} at step {step} (nan_policy={self.nan_policy}){saved}; "
            f"{NAN_HINT}; or set train.nan_policy to skip or rollback"
        )

    def _update_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if not self.metrics:
            return
        outputs = outputs.detach()
        if self._metric_transform is not None:
            outputs = self._metric_transform(outputs)
        for metric in self.metrics:
            metric.update(outputs, targets)
