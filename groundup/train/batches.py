"""Batches of in-memory tensors: index slices of a permutation, never a per-item collate."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from groundup.errors import ConfigError, DataError

Batch = tuple[torch.Tensor, ...]


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    """A tensor from a tensor (kept as it is), a NumPy array or a (nested) list of numbers.

    Arrays get Keras' dtypes: floats and bools become float32 (float64 would crash in a
    float32 layer), integers int64 (class ids, token ids); sample weights are float32.
    """
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, (np.ndarray, list, tuple)):
        try:
            arr = np.asarray(value)
        except ValueError:  # ragged nesting
            arr = np.asarray(value, dtype=object)
        if arr.dtype.kind not in "biuf":
            raise DataError(
                f"{name} must hold numbers, got dtype {arr.dtype} (text or ragged rows); "
                "encode text first and give every sample the same shape"
            )
        if not (arr.flags.writeable and arr.flags.c_contiguous):
            arr = arr.copy()  # torch warns on a read-only buffer (a memmap), refuses some strides
        t = torch.from_numpy(arr)  # shares memory with a plain array
        if arr.dtype.kind in "bf" or name == "sample_weight":
            t = t.float()
        elif t.dtype != torch.int64:
            t = t.long()
    else:
        raise DataError(
            f"{name} must be a torch.Tensor, a NumPy array or a list of numbers, got "
            f"{type(value).__name__}; convert it first (e.g. df.to_numpy())"
        )
    if t.dim() == 0:
        raise DataError(
            f"{name} is a single value (shape ()); give one row per sample, at least 1-D"
        )
    return t


class TensorBatches:
    """Mini-batches of `(x, y)` or `(x, y, sample_weight)` tensors held in memory.

    Tensors are used as they are; NumPy arrays and lists of numbers become tensors (floats
    float32, integers int64, as Keras users expect); anything else is a DataError.

    Each epoch draws one permutation from a generator seeded with `seed + epoch`, so the
    order of any epoch is reproducible on its own (exact resume needs only the epoch number
    and the position inside it, both in `state_dict`).

    Data-parallel ranks (`world_size=N`, training data only): every rank draws the same
    permutation and batch k is one global batch of N * batch_size samples, of which rank r
    takes the r-th contiguous part. The parts are disjoint and N ranks with batch b see
    exactly the samples of one process with batch N * b (the Trainer normalizes the loss by
    the global item count, so the gradients are the same too). The position in `state_dict`
    counts global batches, so it means the same on any N with the same global batch.
    A ragged last global batch is split as evenly as possible (parts differ by one sample at
    most); when it holds fewer samples than there are ranks it is dropped on every rank, so
    each epoch has the same number of batches everywhere (a rank waiting for a batch that
    never comes would hang the step's collectives).
    Validation data stays whole (no `world_size`): the Trainer's evaluation shares it out.
    """

    def __init__(
        self,
        x: torch.Tensor | np.ndarray | list,
        y: torch.Tensor | np.ndarray | list | None = None,
        sample_weight: torch.Tensor | np.ndarray | list | None = None,
        *,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if world_size is not None and (not isinstance(world_size, int) or world_size < 1):
            raise ConfigError(f"world_size must be an integer >= 1 or None, got {world_size!r}")
        if not 0 <= rank < (world_size or 1):
            raise ConfigError(
                f"rank must be in 0..world_size-1, got rank {rank} of {world_size}; "
                "give world_size with rank"
            )
        x = _as_tensor(x, "x")
        y = None if y is None else _as_tensor(y, "y")
        sample_weight = (
            None if sample_weight is None else _as_tensor(sample_weight, "sample_weight")
        )
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
        # the Trainer checks world_size to know each rank gets its own part (None: not split)
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * (world_size or 1)
        if n < (world_size or 1):
            raise DataError(
                f"{n} samples cannot give each of {world_size} ranks one; use fewer ranks or "
                "more data"
            )
        self.epoch = 0
        self.position = 0  # batches already served in the current epoch

    def __len__(self) -> int:
        gb = self.global_batch
        if self.drop_last:
            return max(1, self.n // gb)
        full, rest = divmod(self.n, gb)
        # a last global batch too small to give every rank a sample is dropped (class doc)
        return full + (rest >= (self.world_size or 1))

    def _bounds(self, b: int) -> tuple[int, int]:
        """This rank's [lo, hi) positions of global batch `b` in the epoch's order."""
        world = self.world_size or 1
        lo = b * self.global_batch
        m = min(self.global_batch, self.n - lo)  # samples in this global batch
        return lo + self.rank * m // world, lo + (self.rank + 1) * m // world

    def _order(self, epoch: int) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=generator)

    def __iter__(self) -> Iterator[Batch]:
        order = self._order(self.epoch)
        n_batches = len(self)
        start_batch, self.position = self.position, 0
        for b in range(start_batch, n_batches):
            self.position = b + 1
            lo, hi = self._bounds(b)
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
