"""The refusal before a run: a training step predicted not to fit in the device's memory.

    check_fits(est, device, fixes=[...])   # raises MemoryBudgetError, a ConfigError

The device's memory is what it has free now: MemAvailable from /proc/meminfo on a CPU (what
Linux can hand out without swapping), `torch.cuda.mem_get_info` on a GPU. The environment
variable GROUNDUP_DEVICE_MEMORY (bytes, or with a unit: 512MiB, 2G) replaces it, to plan for
another machine or to test the refusal. `train.check_memory: false` skips the check.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch

from groundup.errors import ConfigError
from groundup.estimate.memory import MemoryEstimate, format_bytes

MEMORY_ENV = "GROUNDUP_DEVICE_MEMORY"
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


class MemoryBudgetError(ConfigError):
    """The configured step needs more memory than the device has (see `check_fits`)."""


def parse_bytes(text: str) -> int:
    """'1073741824', '512MiB', '2G', '1.5 GB' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not match:
        raise ConfigError(
            f"{MEMORY_ENV}={text!r} is not a size; give bytes or a number with a unit "
            "(e.g. 512MiB, 2G)"
        )
    return int(float(match[1]) * _UNITS[match[2].lower()])


def device_memory(device: torch.device) -> tuple[int | None, str]:
    """(bytes free on `device`, where the figure comes from); None when unknown."""
    override = os.environ.get(MEMORY_ENV)
    if override:
        return parse_bytes(override), MEMORY_ENV
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), "free GPU memory"
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024, "MemAvailable"
        except OSError:
            pass
    return None, "unknown"


def check_fits(
    est: MemoryEstimate,
    device: torch.device,
    fixes: Sequence[str] = (),
    available: int | None = None,
) -> None:
    """Raise `MemoryBudgetError` when `est.total` exceeds the device's free memory.

    `fixes`: the config changes that lower the estimate for this job (the error lists them
    with the override that skips the check). `available` replaces the device's figure.
    """
    where = "given"
    if available is None:
        available, where = device_memory(device)
    if available is None or est.total <= available:
        return
    per_rank = " per rank" if est.world_size > 1 else ""
    parts = ", ".join(
        f"{name} {format_bytes(value)}"
        for name, value in (
            ("weights", est.weights),
            ("gradients", est.gradients),
            ("optimizer", est.optimizer),
            ("activations", est.activations),
            ("buffers", est.comm_buffers),
        )
        if value
    )
    todo = "; ".join([*fixes, "or set train.check_memory=false to run anyway"])
    raise MemoryBudgetError(
        f"a training step needs about {format_bytes(est.total)}{per_rank} ({parts}) but "
        f"{device.type} has {format_bytes(available)} free ({where}); {todo}"
    )


def memory_fixes(
    *,
    batch_size: int,
    precision_is_fp32: bool,
    has_blocks: bool,
    checkpointing: bool,
    distributed: bool,
) -> list[str]:
    """The changes that shrink a step, worded as config overrides, for the error message."""
    fixes = []
    if batch_size > 1:
        half = max(1, batch_size // 2)
        fixes.append(
            f"lower train.batch_size (e.g. {half}) and raise train.grad_accum to keep the batch"
        )
    if has_blocks and not checkpointing:
        fixes.append("set distributed.activation_checkpointing=true")
    if precision_is_fp32:
        fixes.append("use train.precision=bf16")
    if distributed:
        fixes.append("shard with distributed.strategy=fsdp over more ranks (--nproc N)")
    return fixes
