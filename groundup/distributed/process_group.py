"""The process group: torchrun's environment, ranks, collectives, rank 0 first (`main_first`)
and one job per rank (`run_job`). Without torchrun every helper answers as for one process
(rank 0 of 1, no collectives)."""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

from groundup.errors import ConfigError, GroundupError

STRATEGIES = ("auto", "ddp", "fsdp")
BACKENDS = ("auto", "nccl", "gloo")
# `auto` shards when weights + grads + two fp32 Adam moments (16 bytes a parameter) would take
# more than this share of one device's memory (the rest is for activations).
AUTO_FSDP_SHARE = 0.35
T = TypeVar("T")


@dataclass
class DistributedConfig:
    """The `distributed:` section of a config. Only read when the job runs under torchrun."""

    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    timeout_minutes: int = 30  # a collective that waits longer fails (a hung or dead rank)

    def __post_init__(self) -> None:
        if self.timeout_minutes < 1:
            raise ConfigError(
                f"distributed.timeout_minutes must be >= 1, got {self.timeout_minutes}"
            )


# ---------------------------------------------------------------- process group
def env_rank() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        return (
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError:
        raise ConfigError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers; start the job with torchrun"
        ) from None


def launched() -> bool:
    """True when torchrun (or another launcher that sets WORLD_SIZE) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed(
    backend: str = "auto", device: str = "auto", timeout_minutes: int = 30
) -> torch.device | None:
    """Start the process group from torchrun's variables; returns this rank's device (None
    when not launched by torchrun: a plain single process).

    `device` is the config's train.device: 'auto' or 'cuda' take GPU LOCAL_RANK, 'cpu' keeps
    every rank on the CPU (gloo).
    """
    if not launched():
        return None
    rank, world, local_rank = env_rank()
    fail = os.environ.get("GROUNDUP_TEST_FAIL_RANK")  # test hook: one rank dies at start
    if fail is not None and int(fail) == rank:
        raise ConfigError(f"rank {rank}: failing at start on purpose (GROUNDUP_TEST_FAIL_RANK)")
    if backend not in BACKENDS:
        raise ConfigError(f"distributed.backend must be one of {', '.join(BACKENDS)}")
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"rank {rank}: train.device {device} but no CUDA GPU is visible; use device: auto"
        )
    if backend == "nccl" and not use_cuda:
        raise ConfigError(
            "distributed.backend nccl needs CUDA GPUs; on CPUs use backend: gloo (or auto)"
        )
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(
                f"rank {rank} has LOCAL_RANK {local_rank} but this node has only {count} GPU(s); "
                f"start at most {count} processes per node (--nproc_per_node {count})"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes)
        )
    if dist.get_world_size() != world:
        raise ConfigError(
            f"WORLD_SIZE says {world} but the process group has {dist.get_world_size()}"
        )
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def teardown() -> None:
    """End the process group (a no-op without one). Call it once, at the end of the job."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # a failed peer must not hide the real error
            dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def backend() -> str | None:
    return str(dist.get_backend()) if active() else None


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """`obj` from rank `src` on every rank (pickled; for small things: paths, numbers)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (the identity for one process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(logs: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """The mean over ranks of each value (one collective for the whole dict)."""
    if world_size() == 1 or not logs:
        return logs
    keys = sorted(logs)
    t = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}


def main_first(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result to every rank.

    The other ranks wait; if rank 0 fails with a user error, every rank raises it (named
    'rank 0: ...'), so the job ends with one clear message instead of ranks hanging in the
    next collective until the timeout.
    """
    if world_size() == 1:
        return fn()
    payload: tuple[str, Any]
    if is_main():
        try:
            payload = ("ok", fn())
        except GroundupError as exc:
            broadcast_object(("error", (type(exc), str(exc))))
            raise
        except BaseException as exc:  # a bug: others stop too, rank 0 keeps the traceback
            broadcast_object(("crash", f"{type(exc).__name__}: {exc}"))
            raise
        broadcast_object(payload)
        return payload[1]
    kind, value = broadcast_object(None)
    if kind == "ok":
        return value
    if kind == "error":
        cls, message = value
        try:
            raise cls(f"rank 0: {message}")
        except TypeError:  # an error class with another constructor
            raise GroundupError(f"rank 0: {message}") from None
    raise RuntimeError(f"rank 0 failed: {value}")


def name_rank(exc: GroundupError) -> GroundupError:
    """Prefix a user error with 'rank R: ' under several ranks (every rank prints its own)."""
    if world_size() > 1 and exc.args and isinstance(exc.args[0], str):
        if not exc.args[0].startswith("rank "):
            exc.args = (f"rank {rank()}: {exc.args[0]}", *exc.args[1:])
    return exc


def split_sequences(batch_size: int, grad_accum: int, world_size: int) -> tuple[int, int]:
    """(sequences per micro-batch on each rank, grad_accum) for a global batch of
    batch_size x grad_accum sequences, whatever the number of ranks.

    The largest micro-batch <= batch_size that divides the rank's share is used, so one
    process and N ranks train on the same sequences per step (and resume into each other).
    """
    sequences = batch_size * grad_accum
    if sequences % world_size:
        raise ConfigError(
            f"the global batch of {sequences} sequences (train.batch_size {batch_size} x "
            f"grad_accum {grad_accum}) cannot be split over {world_size} ranks; make "
            f"batch_size x grad_accum a multiple of {world_size} (e.g. "
            f"{world_size * max(1, sequences // world_size)} sequences)"
        )
    share = sequences // world_size
    batch = max(b for b in range(1, min(batch_size, share) + 1) if share % b == 0)
    return batch, share // batch


def describe_batch(strategy: str, batch_size: int, grad_accum: int) -> str:
    """The line a job prints under torchrun: ranks, backend, strategy and the global batch."""
    world = world_size()
    return (
        f"distributed: {world} rank(s), backend {backend()}, strategy {strategy}; global batch "
        f"{world * batch_size * grad_accum} sequences = {world} rank(s) x {batch_size} x "
        f"{grad_accum} micro-step(s)"
    )


def run_job(config: DistributedConfig, device: str, job: Callable[[torch.device | None], T]) -> T:
    """Run `job(rank_device)` as one rank of a torchrun job, or plainly in one process.

    A user error is raised with its rank named ("rank 1: ..."); the process group this call
    started is ended only after a clean finish (peers of a failed rank may still be waiting
    in a collective: torchrun ends them).
    """
    owned = launched() and not active()  # we start the process group, we end it
    try:
        rank_device = init_distributed(config.backend, device, config.timeout_minutes)
        result = job(rank_device)
    except GroundupError as exc:
        raise name_rank(exc) from None
    if owned:
        # Trap: a DDP wrapper still alive when the group goes away can abort the process at
        # exit ("terminate called without an active exception"): free it, then end together.
        gc.collect()
        barrier()
        teardown()
    return result


def record(fn: Callable[..., T]) -> Callable[..., T]:
    """torchrun's error recorder: an uncaught exception on a rank is written to the error file
    torchrun reads, so its summary names the failing rank with the traceback."""
    try:
        from torch.distributed.elastic.multiprocessing.errors import record as _record
    except ImportError:  # pragma: no cover - torch without elastic
        return fn
    return _record(fn)
