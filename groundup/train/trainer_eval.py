"""The Trainer's evaluation and prediction: loss and metrics over a dataset (sharded over the
ranks when it can be), and the model's outputs for new inputs. A mixin of `Trainer`; it reads
the trainer's model, loss, metrics, device and precision."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch

from groundup import distributed as dist_utils
from groundup.distributed import data_parallel
from groundup.train.batches import Batch
from groundup.train.metrics import Metric


class EvaluationMixin:
    """`evaluate` and `predict` (see `Trainer`)."""

    model: Any
    metrics: list[Metric]
    evaluators: list[Any]

    def validate(self, data: Iterable[Batch], max_batches: int | None) -> dict[str, float]:
        """What an evaluation during `fit` records: `evaluate` on the validation data with the
        "val_" prefix, then each of `self.evaluators` (the tasks of train.eval_tasks: a callable
        taking the model and returning named values)."""
        logs = self.evaluate(data, max_batches=max_batches, prefix="val_")
        for evaluator in self.evaluators:
            logs.update(evaluator(self.model))
        return logs

    @torch.no_grad()
    def evaluate(
        self, data: Iterable[Batch], max_batches: int | None = None, prefix: str = ""
    ) -> dict[str, float]:
        """Mean loss (over items, not batches) and metrics on `data`.

        Several ranks: without metrics, rank r evaluates batches r, r + N, ... and the sums are
        all-reduced (ranks short of a batch in the last round run a throwaway one, as FSDP needs
        every rank in every forward); with metrics, every rank evaluates every batch.
        """
        if self.world_size > 1 and not self.metrics:
            return self._evaluate_sharded(data, max_batches, prefix)
        was_training = self.model.training
        self.model.eval()
        metrics = [_fresh(m) for m in self.metrics]
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        text = torch.zeros(2, dtype=torch.float64, device=self.device)  # nats, bytes (bpb)
        count = 0
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            batch = self._to_device(batch)
            x, y = batch[0], batch[1]
            with self._autocast():
                outputs = self._forward(x)
                total += self.loss_fn.sum(outputs, y).double()
            count += int(self.loss_fn.count(y))
            if self.token_bytes is not None:
                text += self._text_sums(outputs, y)
            if metrics:
                out = _at_least_fp32(outputs)
                if self._metric_transform is not None:
                    out = self._metric_transform(out)
                for m in metrics:
                    m.update(out, y)
        self.model.train(was_training)
        self.last_eval_items = count
        if count == 0:
            return {}
        logs = {f"{prefix}loss": float(total / count)}
        if self.report_perplexity:
            logs[f"{prefix}perplexity"] = math.exp(min(logs[f"{prefix}loss"], 700.0))
        logs.update(_bits_per_byte(text, prefix))
        for m in metrics:
            logs[f"{prefix}{m.name}"] = m.compute()
        return logs

    @torch.no_grad()
    def _evaluate_sharded(
        self, data: Iterable[Batch], max_batches: int | None, prefix: str
    ) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        # loss sum, item count, and for bits per byte: the nats and bytes of the text tokens
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        shares = data_parallel.round_robin(data, max_batches, self.rank, self.world_size)
        for batch, mine in shares:  # not mine: a throwaway forward (FSDP needs every rank)
            batch = self._to_device(batch)
            with self._autocast():
                outputs = self._forward(batch[0])
                loss_sum = self.loss_fn.sum(outputs, batch[1]).double()
            if mine:
                sums[0] += loss_sum
                sums[1] += float(self.loss_fn.count(batch[1]))
                if self.token_bytes is not None:
                    sums[2:] += self._text_sums(outputs, batch[1])
        dist_utils.all_reduce_sum(sums)
        self.model.train(was_training)
        total, count = float(sums[0]), float(sums[1])
        self.last_eval_items = int(count)
        if count == 0:
            return {}
        logs = {f"{prefix}loss": total / count}
        if self.report_perplexity:
            logs[f"{prefix}perplexity"] = math.exp(min(logs[f"{prefix}loss"], 700.0))
        logs.update(_bits_per_byte(sums[2:], prefix))
        return logs

    def _text_sums(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(nats, bytes) of the targets that stand for text: the plain cross-entropy (no label
        smoothing) of each token whose id has bytes, and those bytes. Special tokens (end of
        text) and ignored targets count in neither, as nanochat counts them."""
        valid = targets >= 0
        ids = targets.clamp(min=0)
        table = self.token_bytes.to(targets.device)
        sizes = torch.where(valid, table[ids.clamp(max=table.numel() - 1)], 0)
        nats = torch.nn.functional.cross_entropy(
            logits.flatten(0, -2).to(torch.promote_types(logits.dtype, torch.float32)),
            ids.flatten(),
            reduction="none",
        )
        keep = sizes.flatten() > 0
        return torch.stack((nats[keep].double().sum(), sizes.sum().double()))

    @torch.no_grad()
    def predict(self, data: Iterable[Batch] | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Model outputs (after `output_transform`) for every batch, concatenated on the CPU."""
        was_training = self.model.training
        self.model.eval()
        if isinstance(data, torch.Tensor):
            data = [(data[i : i + batch_size],) for i in range(0, data.shape[0], batch_size)]
        outs = []
        with torch.no_grad():  # no autograd graph: prediction keeps no activations
            for batch in data:
                x = self._to_device(tuple(batch))[0]
                with self._autocast():
                    out = self._forward(x)
                out = _at_least_fp32(out)
                if self.output_transform is not None:
                    out = self.output_transform(out)
                outs.append(out.cpu())
        self.model.train(was_training)
        return torch.cat(outs) if outs else torch.empty(0)


def _bits_per_byte(sums: torch.Tensor, prefix: str) -> dict[str, float]:
    """{prefix + "bpb": nats / (ln 2 * bytes)} when bytes were counted."""
    nats, n_bytes = float(sums[0]), float(sums[1])
    if n_bytes <= 0:
        return {}
    return {f"{prefix}bpb": nats / (math.log(2) * n_bytes)}


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 outputs as float32 for metrics and predictions; float64 stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _fresh(metric: Metric) -> Metric:
    """Evaluation must not disturb the running training metrics: use a reset copy."""
    m = copy.deepcopy(metric)
    m.reset()
    return m
