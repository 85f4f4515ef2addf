"""Batches of in-memory tensors: index slices of a permutation, never a per-item collate."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from groundup.errors import ConfigError, DataError

Batch = tuple[torch.Tensor, ...]


class TensorBatches:
    """Mini-batches of `(x, y)` or `(x, y, sample_weight)` tensors held in memory.

    Each epoch draws one permutation from a generator seeded with `seed + epoch`, so the
    order of any epoch is reproducible on its own (exact resume needs only the epoch number
    and the position inside it, both in `state_dict`).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
        *,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        n = x.shape[0]
        for name, t in (("y", y), ("sample_weight", sample_weight)):
            if t is not None and t.shape[0] != n:
                raise DataError(
                    f"x has {n} samples but {name} has {t.shape[0]}; give one {name} per sample"
                )
        if n == 0:
            raise DataError("no samples to train on: x is empty")
        self.tensors: tuple[torch.Tensor, ...] = tuple(
            t for t in (x, y, sample_weight) if t is not None
        )
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # batches already served in the current epoch

    def __len__(self) -> int:
        if self.drop_last:
            return max(1, self.n // self.batch_size)
        return -(-self.n // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=generator)

    def __iter__(self) -> Iterator[Batch]:
        order = self._order(self.epoch)
        bs, n_batches = self.batch_size, len(self)
        start_batch, self.position = self.position, 0
        for b in range(start_batch, n_batches):
            self.position = b + 1
            lo, hi = b * bs, min((b + 1) * bs, self.n)
            if order is None:
                yield tuple(t[lo:hi] for t in self.tensors)
            else:
                idx = order[lo:hi]
                yield tuple(t[idx] for t in self.tensors)
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.seed = int(state.get("seed", self.seed))
