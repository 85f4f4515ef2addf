"""Batches of (x, y) token windows from a token array (a memmapped shard split).

Each batch is one vectorized gather: offsets (B,) + arange(T + 1) indexes the array once,
so there is no Python work per window. y is x shifted left by one token.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from groundup.errors import ConfigError, DataError


def _as_array(tokens: Any) -> Any:
    """Something indexable by an int array: np.ndarray/np.memmap/TokenArray as they are."""
    if isinstance(tokens, torch.Tensor):
        return tokens.detach().cpu().numpy()
    if isinstance(tokens, list | tuple):
        return np.asarray(tokens, dtype=np.int64)
    if not hasattr(tokens, "__getitem__") or not hasattr(tokens, "__len__"):
        raise DataError(
            f"tokens must be a 1-D array of token ids, got {type(tokens).__name__}; "
            "pass load_shards(...).train"
        )
    if getattr(tokens, "ndim", 1) != 1:
        raise DataError(f"tokens must be 1-D, got shape {tokens.shape}")
    return tokens


def _check_sizes(n: int, block_size: int, batch_size: int, what: str) -> None:
    if block_size < 1 or batch_size < 1:
        raise ConfigError(
            f"block_size and batch_size must be >= 1, got {block_size} and {batch_size}"
        )
    if n < block_size + 1:
        raise DataError(
            f"{what} has {n} tokens, fewer than block_size + 1 = {block_size + 1}; lower "
            "block_size or use more data"
        )


def window_reader(tokens: Any, length: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function starts (B,) -> the windows tokens[s : s + length] stacked, shape (B, length).

    On a numpy array (a memmap included) this indexes a sliding-window view: B row copies,
    about 6x faster than gathering B * length single elements.
    """
    if isinstance(tokens, np.ndarray):
        view = sliding_window_view(tokens, length)  # (N - length + 1, length), no copy
        return view.__getitem__
    if hasattr(tokens, "windows"):  # TokenArray: several shards
        return lambda starts: tokens.windows(starts, length)
    steps = np.arange(length)
    return lambda starts: np.asarray(tokens[starts[:, None] + steps])


def _to_batch(windows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y of shape (B, T) (int64, contiguous) from windows of shape (B, T + 1)."""
    buf = torch.from_numpy(windows.astype(np.int64))  # (B, T+1)
    if device.type == "cuda":
        # one pinned host buffer and one async copy per batch; slicing happens on the device
        buf = buf.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        buf = buf.to(device)
    # contiguous: a loss that calls y.view(-1) fails on a strided slice
    return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()  # (B, T), (B, T)


_MASK64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """SplitMix64 finalizer: nearby integers give unrelated 63-bit seeds."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1  # manual_seed wants a value that fits in int64


class RandomWindows:
    """Endless random (x, y) batches, like nanoGPT's get_batch, resumable exactly.

    Batch k draws its offsets from a torch.Generator seeded by a hash of (seed, k), so the
    state is just the batch counter: `state_dict()` is a small JSON-safe dict, and a run resumed
    from it draws the same windows as one that never stopped. Offsets are uniform over every
    window that fits, the last one (ending at the last token) included.

    Data-parallel ranks: with `world_size=N`, batch k is one global draw of N * batch_size
    windows and rank r takes the r-th slice of it. The ranks' parts are disjoint, N ranks with
    batch b see exactly the windows of one process with batch N * b, and a checkpoint resumes
    on any N with the same global batch (the counter counts global draws).
    Without `world_size`, `rank` only picks an independent stream (the earlier behaviour).
    """

    def __init__(
        self,
        tokens: Any,
        block_size: int,
        batch_size: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int | None = None,
    ) -> None:
        self.tokens = _as_array(tokens)
        n = len(self.tokens)
        _check_sizes(n, block_size, batch_size, "the token split")
        if seed < 0 or rank < 0:
            raise ConfigError(f"seed and rank must be >= 0, got {seed} and {rank}")
        if world_size is not None and not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in 0..world_size-1, got rank {rank} of {world_size}")
        self.block_size, self.batch_size = block_size, batch_size
        self.seed, self.rank = seed, rank
        self.world_size = world_size
        # the stream id: 0 for every rank of a data-parallel job (they slice one draw)
        self._stream = rank if world_size is None else 0
        self.global_batch = batch_size * (world_size or 1)
        self.device = torch.device(device)
        self.n_tokens = n
        self.step = 0  # batches drawn so far
        self._read = window_reader(self.tokens, block_size + 1)
        self._gen = torch.Generator()

    def offsets(self, step: int) -> np.ndarray:
        """Start positions (B,) of this rank's windows of batch number `step`."""
        self._gen.manual_seed(mix64(mix64(mix64(self.seed) ^ self._stream) ^ step))
        # high is exclusive: the last start is n - T - 1, whose y ends at the last token
        high = self.n_tokens - self.block_size
        starts = torch.randint(high, (self.global_batch,), generator=self._gen).numpy()
        if self.world_size is None:
            return starts
        return starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.offsets(self.step)
        self.step += 1
        return _to_batch(self._read(starts), self.device)

    def state_dict(self) -> dict[str, int]:
        state = {
            "step": self.step,
            "seed": self.seed,
            "rank": self.rank,
            "block_size": self.block_size,
            "batch_size": self.batch_size,
            "n_tokens": self.n_tokens,
        }
        if self.world_size is not None:
            state["world_size"] = self.world_size
            state["global_batch"] = self.global_batch
        return state

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from `state`; warn when the data or sizes differ (windows will too).

        Under data parallelism the rank and the per-rank batch may change (another number of
        ranks); what must match is the global draw."""
        if self.world_size is None and "world_size" not in state:
            keys = ("seed", "rank", "block_size", "batch_size", "n_tokens")
            mine = self.state_dict()
        else:
            keys = ("seed", "block_size", "global_batch", "n_tokens")
            mine = {**self.state_dict(), "global_batch": self.global_batch}
            state = {**state, "global_batch": state.get("global_batch", state.get("batch_size"))}
            if state.get("world_size") is None and state.get("rank", 0) != 0:
                keys = (*keys, "rank")  # an independent stream: another rank's would differ
        changed = [k for k in keys if k in state and state[k] != mine.get(k)]
        if changed:
            warnings.warn(
                f"resuming RandomWindows with a different {', '.join(changed)} than the saved "
                "state: the batches will not repeat the original run's",
                stacklevel=2,
            )
        self.step = int(state["step"])


class SequentialWindows:
    """A deterministic pass over a split in (x, y) batches: for the full validation loss.

    Windows start at offset, offset + stride, ... while a whole window (T + 1 tokens) fits;
    stride = block_size covers every target token once, except at most block_size tokens
    at the end. max_batches keeps that many batches of windows spread evenly over the split
    (a quick, stable estimate). The last batch may be smaller unless drop_last is set, so
    weight batch losses by their size when averaging.
    """

    def __init__(
        self,
        tokens: Any,
        block_size: int,
        batch_size: int,
        offset: int = 0,
        stride: int | None = None,
        drop_last: bool = False,
        max_batches: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.tokens = _as_array(tokens)
        n = len(self.tokens)
        stride = block_size if stride is None else stride
        if stride < 1 or offset < 0:
            raise ConfigError(f"stride must be >= 1 and offset >= 0, got {stride} and {offset}")
        if max_batches is not None and max_batches < 1:
            raise ConfigError(f"max_batches must be >= 1 or None, got {max_batches}")
        _check_sizes(n - offset, block_size, batch_size, f"the token split after offset {offset}")
        self.block_size, self.batch_size = block_size, batch_size
        self.device = torch.device(device)
        n_windows = (n - offset - block_size - 1) // stride + 1
        starts = offset + stride * np.arange(n_windows, dtype=np.int64)
        if max_batches is not None and max_batches * batch_size < n_windows:
            pick = np.linspace(0, n_windows - 1, max_batches * batch_size).round()
            starts = starts[np.unique(pick.astype(np.int64))]
        if drop_last:
            starts = starts[: len(starts) // batch_size * batch_size]
        if len(starts) == 0:
            raise DataError(
                f"fewer than batch_size = {batch_size} windows fit in {n} tokens with "
                "drop_last=True; lower batch_size or set drop_last=False"
            )
        self.starts = starts  # (n_windows,) start of every window, in order
        self._read = window_reader(self.tokens, block_size + 1)

    def __len__(self) -> int:
        return -(-len(self.starts) // self.batch_size)  # batches, the last maybe partial

    @property
    def n_windows(self) -> int:
        return len(self.starts)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for a in range(0, len(self.starts), self.batch_size):
            yield _to_batch(self._read(self.starts[a : a + self.batch_size]), self.device)
