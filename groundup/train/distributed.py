"""Scaling out on PyTorch's own engine: torchrun starts the processes, DDP or FSDP2 wraps the
model, torch.distributed.checkpoint saves sharded state. There is no home-made layer here,
only the glue the Trainer and the jobs need:

- `init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT) and starts the process group: nccl on GPUs, gloo on CPUs. Without torchrun it
  does nothing and every helper answers as for one process (rank 0 of 1, no collectives).
- `resolve_strategy()` / `wrap_model()`: DDP for models that fit one device; FSDP2
  (`fully_shard` per transformer block, then the root) with bf16 parameters and fp32
  gradient reduction for large ones; optional activation checkpointing of every block.
- `main_first()`: rank 0 does the file-system work (run directory, tokenizer, shards), the
  other ranks wait for it and get its result or its error.
- `launch_torchrun()`: `groundup pretrain CONFIG --nproc N` re-runs itself under torchrun.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from groundup.errors import ConfigError, DependencyError, GroundupError
from groundup.train.stop_signals import (
    HANGUP_SIGNALS,
    STOP_SIGNALS,
    install_stop_handlers,
    restore_handlers,
)

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


# ---------------------------------------------------------------- strategies
def _fully_shard() -> tuple[Callable, type]:
    """`fully_shard` and `MixedPrecisionPolicy`: public in torch >= 2.6, composable before."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
        except ImportError:
            raise DependencyError(
                f"strategy fsdp needs FSDP2 (torch >= 2.4), this is torch {torch.__version__}; "
                "upgrade torch or use distributed.strategy: ddp"
            ) from None
    return fully_shard, MixedPrecisionPolicy


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def fsdp_unsupported(device: torch.device) -> str | None:
    """Why FSDP2 cannot run here, or None. FSDP2 on CPUs (gloo) works from torch 2.6 (checked
    on 2.13); before that it moved parameters to a GPU or failed in its CUDA streams."""
    if device.type == "cpu" and _torch_version() < (2, 6):
        return (
            f"strategy fsdp on CPUs needs torch >= 2.6 (this is {torch.__version__}); "
            "use distributed.strategy: ddp on CPUs, or run on GPUs"
        )
    if device.type not in ("cpu", "cuda"):
        return f"strategy fsdp is not supported on {device.type}; use distributed.strategy: ddp"
    return None


def resolve_strategy(strategy: str, model: nn.Module, device: torch.device) -> str:
    """'none' (one process), 'ddp' or 'fsdp'. `auto`: DDP while the model's training state fits
    comfortably in one device's memory, FSDP2 beyond; explicit choices are checked."""
    if strategy not in ("none", *STRATEGIES):
        raise ConfigError(
            f"unknown distributed.strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
        )
    if strategy == "none" or not active():
        return "none"  # one plain process: nothing to replicate or shard
    if strategy == "auto":
        if world_size() == 1:
            return "none"
        if device.type != "cuda":
            return "ddp"
        state_bytes = 16 * sum(p.numel() for p in model.parameters())
        memory = torch.cuda.get_device_properties(device).total_memory
        return "fsdp" if state_bytes > AUTO_FSDP_SHARE * memory else "ddp"
    if strategy == "fsdp":
        reason = fsdp_unsupported(device)
        if reason:
            raise ConfigError(reason)
        return "fsdp"
    return "ddp" if world_size() > 1 else "none"  # DDP over one rank only adds hooks


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: the children of every ModuleList named `blocks`."""
    out: list[nn.Module] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "blocks":
            out.extend(module)
    return out


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each transformer block's activations in backward instead of storing them.

    Done from outside the model: each block's `forward` is replaced on the instance by a
    checkpointed call of the original, so parameter names and checkpoints do not change. Only
    while gradients are on (evaluation and generation run the plain forward). Returns the
    number of blocks wrapped.
    """
    from torch.utils.checkpoint import checkpoint

    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError(
            "activation_checkpointing needs a model with transformer blocks (a ModuleList "
            "named 'blocks', as in GPT and BERT); turn it off for this model"
        )
    for block in blocks:
        if getattr(block.forward, "_groundup_checkpointed", False):
            continue
        original = block.forward

        @functools.wraps(original)
        def forward(*args: Any, _original: Callable = original, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        forward._groundup_checkpointed = True  # type: ignore[attr-defined]
        block.forward = forward  # instance attribute: wins over the class's forward
    return len(blocks)


def wrap_model(
    model: nn.Module,
    strategy: str,
    device: torch.device,
    param_dtype: torch.dtype | None = None,
) -> tuple[nn.Module, nn.Module | None]:
    """Shard or replicate `model` (already on `device`). Returns (model, ddp_wrapper).

    - ddp: the model stays as it is; the returned DistributedDataParallel wrapper is what the
      training forward calls (it all-reduces gradients in backward, averaged over ranks).
    - fsdp: `fully_shard` on every transformer block, then on the root, in place: parameters
      become DTensors sharded over the ranks. With `param_dtype` (bf16), parameters are
      all-gathered and computed in it while gradients are reduced in fp32.
    """
    if strategy == "none":
        return model, None
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # broadcast_buffers=False: no collective inside forward, so evaluation may run a
        # different number of batches per rank. groundup's buffers are constants (RoPE tables).
        with warnings.catch_warnings():
            # newer torch renames it forward_sync_buffers (absent in 2.4); same meaning here
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*deprecated")
            ddp = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
        return model, ddp
    if strategy == "fsdp":
        fully_shard, MixedPrecisionPolicy = _fully_shard()
        if param_dtype is not None:
            policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        else:
            policy = MixedPrecisionPolicy()
        from torch.distributed.device_mesh import init_device_mesh

        # Trap: without a mesh, fully_shard builds one on the accelerator whenever CUDA is
        # visible, even for a gloo run on CPUs ("invalid device ordinal" on rank 1).
        mesh = init_device_mesh(device.type, (world_size(),))
        for block in transformer_blocks(model):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)  # the rest: embeddings, final norm, head
        return model, None
    raise ConfigError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")


def is_sharded(model: nn.Module) -> bool:
    """True when the model's parameters are DTensors (FSDP2)."""
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def set_gradient_sync(model: nn.Module, ddp: nn.Module | None, enabled: bool) -> Any:
    """A context for one micro-batch: gradient reduction only on the step's last one."""
    if ddp is not None:
        return contextlib.nullcontext() if enabled else ddp.no_sync()
    setter = getattr(model, "set_requires_gradient_sync", None)  # FSDP2
    if setter is not None:
        setter(enabled)
    return contextlib.nullcontext()


# ---------------------------------------------------------------- launching
def strip_nproc(argv: Sequence[str]) -> list[str]:
    """argv without `--nproc N` / `--nproc=N` (the re-run under torchrun must not relaunch)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def torchrun_command(argv: Sequence[str], nproc: int) -> list[str]:
    """The torchrun command line that runs `groundup ARGV` in `nproc` processes on this node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "groundup",
        *strip_nproc(argv),
    ]


# torchrun answers SIGINT/SIGTERM by forwarding it to its ranks (which save and exit), then
# raises SignalException: a launcher traceback and exit code 1. This runs torchrun's own main
# and turns that into the shell's 128 + N, the code one interrupted process exits with.
_TORCHRUN_MAIN = (
    "import sys\n"
    "from torch.distributed.elastic.multiprocessing.api import SignalException\n"
    "from torch.distributed.run import main\n"
    "try:\n"
    "    main()\n"
    "except SignalException as exc:\n"
    "    sys.exit(128 + int(exc.sigval))\n"
)


def launch_torchrun(argv: list[str], nproc: int) -> int:
    """Re-run `groundup ARGV` under torchrun with `nproc` processes on this machine; returns
    the exit code (torchrun's: non-zero when any rank failed, and its summary names the rank;
    130/143 after Ctrl-C/SIGTERM, once the ranks have saved).

    torchrun runs in its own session and this parent forwards the first SIGINT/SIGTERM/SIGHUP
    to it, whether the signal came from the terminal (Ctrl-C reaches the foreground group) or
    from `kill PID` or a scheduler: torchrun then gets it exactly once. Trap: a second copy
    would interrupt torchrun while it waits for the ranks' checkpoint.
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc must be an integer >= 1, got {nproc!r}")
    if launched():
        raise ConfigError("--nproc starts torchrun itself; drop it when launching with torchrun")
    # More processes than GPUs is checked by each rank (init_distributed), which knows the
    # config's train.device: N CPU processes on a machine with fewer GPUs are fine.
    cmd = torchrun_command(argv, nproc)
    cmd[1:3] = ["-c", _TORCHRUN_MAIN]  # the same torchrun, without a traceback on a signal
    started: list[subprocess.Popen] = []
    signalled: list[int] = []  # the first signal, and whether torchrun got it
    sent: list[bool] = []

    def send(signum: int) -> None:
        sent.append(True)
        with contextlib.suppress(ProcessLookupError):
            started[0].send_signal(signum)

    def forward(signum: int, frame: Any) -> None:
        if signalled:  # a later signal: the ranks are saving already, let them finish
            return
        signalled.append(signum)
        if started:
            send(signum)

    previous = install_stop_handlers(forward, (*STOP_SIGNALS, *HANGUP_SIGNALS))
    try:
        started.append(subprocess.Popen(cmd, start_new_session=True))
        if signalled and not sent:  # it came while torchrun was starting
            send(signalled[0])
        code = started[0].wait()  # a handler that returns does not end the wait (PEP 475)
    finally:
        restore_handlers(previous)
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N


__all__ = [
    "DistributedConfig",
    "all_reduce_mean",
    "all_reduce_sum",
    "apply_activation_checkpointing",
    "barrier",
    "broadcast_object",
    "fsdp_unsupported",
    "init_distributed",
    "is_main",
    "launch_torchrun",
    "main_first",
    "rank",
    "record",
    "resolve_strategy",
    "teardown",
    "world_size",
    "wrap_model",
]
