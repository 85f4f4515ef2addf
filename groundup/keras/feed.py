"""Several inputs or outputs on the one Trainer, whose batches are `(x, y, weight)` tensors.

A model with several inputs or outputs trains on batches of sample numbers: `x` and `y` are
the same int64 index tensor, and `Feed` holds the arrays on the trainer's device. The model's
forward gathers its inputs at those indices and returns its outputs packed side by side into
one (B, D) tensor; the loss (`OutputsLoss`) and the per-output metrics unpack them and gather
each output's targets. The Trainer sees plain tensors, so its loop, accumulation, checkpoints
and evaluation serve these models unchanged.

The loss is Keras': the sum over outputs of `loss_weight * mean loss of that output`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from groundup.train.losses import Loss
from groundup.train.metric_base import Metric


class Feed:
    """The arrays a structured fit/evaluate reads by sample index, and the per-sample shapes of
    the outputs of the latest forward (what unpacking needs)."""

    def __init__(self) -> None:
        self.inputs: list[Tensor] = []
        self.targets: list[Tensor | None] = []
        self.output_shapes: list[tuple[int, ...]] = []

    def __deepcopy__(self, memo: dict) -> Feed:
        return self  # evaluation copies its metrics: they must keep reading the same arrays

    @contextlib.contextmanager
    def holding(
        self,
        inputs: Sequence[Tensor],
        targets: Sequence[Tensor | None],
        device: torch.device,
        float_dtype: torch.dtype | None,
    ) -> Iterator[None]:
        """Serve these arrays inside the block (an evaluate called from a callback during fit
        gets its own, and fit's come back after)."""
        saved = (self.inputs, self.targets, self.output_shapes)

        def place(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            if float_dtype is not None and t.is_floating_point():
                t = t.to(float_dtype)
            return t.to(device)

        self.inputs = [place(t) for t in inputs]  # type: ignore[misc]
        self.targets = [place(t) for t in targets]
        try:
            yield
        finally:
            self.inputs, self.targets, self.output_shapes = saved

    def gather(self, index: Tensor) -> list[Tensor]:
        return [t[index] for t in self.inputs]

    def target(self, output: int, index: Tensor) -> Tensor:
        t = self.targets[output]
        assert t is not None, "an output without a loss has no targets"
        return t[index]

    def pack(self, outputs: Sequence[Tensor]) -> Tensor:
        """(B, D): each output flattened per sample, side by side (shapes kept for unpack)."""
        self.output_shapes = [tuple(o.shape[1:]) for o in outputs]
        dtype = outputs[0].dtype
        for o in outputs[1:]:
            dtype = torch.promote_types(dtype, o.dtype)
        return torch.cat([o.reshape(o.shape[0], -1).to(dtype) for o in outputs], dim=1)

    def unpack(self, packed: Tensor) -> list[Tensor]:
        sizes = [math.prod(s) for s in self.output_shapes]
        parts = torch.split(packed, sizes, dim=1)
        return [p.reshape(p.shape[0], *s) for p, s in zip(parts, self.output_shapes)]


class OutputsLoss(Loss):
    """Sum over the outputs of `weight * that output's mean loss` (outputs without a loss are
    not trained). `targets` are the batch's sample indices."""

    name = "loss"

    def __init__(self, feed: Feed, losses: Sequence[Loss | None], weights: Sequence[float]):
        self.feed = feed
        self.losses = list(losses)
        self.weights = [float(w) for w in weights]

    def sum(self, outputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        parts = self.feed.unpack(outputs)
        n = targets.shape[0]
        total: Tensor | None = None
        for i, (loss, w) in enumerate(zip(self.losses, self.weights)):
            if loss is None or w == 0.0:
                continue
            term = loss(parts[i], self.feed.target(i, targets), weight) * (w * n)
            total = term if total is None else total + term
        assert total is not None, "compile refuses a model with no loss on any output"
        return total

    def count(self, targets: Tensor) -> int:
        return targets.shape[0]


class OutputLoss(Metric):
    """One output's loss as a logged value ("cls_loss"), the mean over samples."""

    def __init__(self, feed: Feed, output: int, loss: Loss, name: str) -> None:
        self.feed, self.output, self.loss = feed, output, loss
        super().__init__(name=name)

    def reset(self) -> None:
        self.total = torch.zeros((), dtype=torch.float64)
        self.n = 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        part = self.feed.unpack(outputs)[self.output]
        value = self.loss(part, self.feed.target(self.output, targets)).detach()
        self.total = self.total.to(value.device) + value.double() * targets.shape[0]
        self.n += targets.shape[0]

    def compute(self) -> float:
        return float(self.total / self.n) if self.n else math.nan

    def state(self) -> list[Tensor]:
        if not self.n:
            return []
        return [self.total, torch.tensor(float(self.n), dtype=torch.float64)]

    def load_state(self, state: Sequence[Tensor]) -> None:
        self.total, self.n = state[0].double(), int(state[1])


class OutputMetric(Metric):
    """A metric of one output ("cls_accuracy"), read through that output's probabilities."""

    def __init__(
        self,
        feed: Feed,
        output: int,
        metric: Metric,
        transform: Callable[[Tensor], Tensor] | None,
        name: str,
    ) -> None:
        self.feed, self.output, self.metric, self.transform = feed, output, metric, transform
        super().__init__(name=name)

    def reset(self) -> None:
        self.metric.reset()

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        part = self.feed.unpack(outputs)[self.output]
        if self.transform is not None:
            part = self.transform(part)
        self.metric.update(part, self.feed.target(self.output, targets))

    def compute(self) -> float:
        return self.metric.compute()

    def state(self) -> list[Tensor] | None:
        return self.metric.state()

    def load_state(self, state: Sequence[Tensor]) -> None:
        self.metric.load_state(state)

    def merge(self, states: Sequence[Sequence[Tensor]]) -> None:
        self.metric.merge(states)


def sample_indices(start: int, stop: int) -> Tensor:
    """The batch "data" of a structured fit: sample numbers start..stop-1."""
    return torch.arange(start, stop, dtype=torch.int64)
