"""The machine's measured matmul peak, the denominator of model FLOPs utilization (MFU).

Datasheet peaks are rarely reached (and unknown for CPUs), so groundup measures what a square
matmul actually achieves on this device, in the training dtype, once per process. One size is
not enough: on an Intel AMX CPU bf16 ran at 1,073 GFLOP/s at N=1024 and 1,930 at N=2048, so a
probe of the wrong size halves the peak and doubles the MFU. The probe tries a few sizes, each
for a short fixed time, and keeps the best. `groundup.train.peaks` has the datasheet figures.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from groundup.errors import TrainingError

CPU_SIZES = (1024, 2048, 3072, 4096)
ACCELERATOR_SIZES = (2048, 4096, 8192, 12288, 16384)
# seconds timed per size, and the whole probe's budget: it runs at the start of every pretrain
CPU_SECONDS, CPU_BUDGET = 0.3, 2.5
ACCELERATOR_SECONDS, ACCELERATOR_BUDGET = 0.2, 5.0
# products between two clock reads are grouped to take about this long (a sync is not free)
CLOCK_GROUP_S = 0.01

# `linear` is the path a model's Linear layers take (on the CPU it goes through oneDNN,
# noticeably faster than `torch.matmul`'s default fp32 path); `matmul` is there to compare
OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "linear": torch.nn.functional.linear,
    "matmul": torch.matmul,
}


@dataclass(frozen=True)
class MatmulRate:
    """One size's measurement: FLOP/s of N x N products (2*N^3 FLOPs each)."""

    size: int
    flops: float
    seconds: float  # the timed span


@dataclass(frozen=True)
class PeakProbe:
    """The best rate over the sizes tried, the size that gave it, and every size's rate."""

    flops: float
    size: int
    device_type: str
    dtype: torch.dtype
    rates: tuple[MatmulRate, ...]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU, where calls return when done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_rate(
    size: int,
    device: torch.device,
    dtype: torch.dtype,
    seconds: float,
    op: str = "linear",
    generator: torch.Generator | None = None,
) -> MatmulRate:
    """FLOP/s of `op` on two `size` x `size` matrices, timed for at least `seconds`."""
    fn = OPS[op]
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    for _ in range(2):  # warm-up: kernel selection for this shape, caches
        fn(a, b)
    synchronize(device)
    start = time.perf_counter()
    fn(a, b)
    synchronize(device)
    one = max(time.perf_counter() - start, 1e-9)
    group = max(1, min(64, int(CLOCK_GROUP_S / one)))
    iters, start = 0, time.perf_counter()
    while True:
        for _ in range(group):
            fn(a, b)
        synchronize(device)
        iters += group
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return MatmulRate(size, 2.0 * size**3 * iters / elapsed, elapsed)


def _wake(device: torch.device, dtype: torch.dtype, fn: Callable) -> None:
    """Untimed products before the first timed one, outside the budget. Trap: the first bf16
    product of a process starts the library (oneDNN's kernels) and the cores' clocks ramp up;
    timed first, N=1024 read 205 GFLOP/s on a CPU whose sweep, moments later, gave 380."""
    a = torch.full((512, 512), 0.5, device=device, dtype=dtype)  # no draw from the seeded RNG
    end = time.perf_counter() + 0.2
    while time.perf_counter() < end:
        fn(a, a)
    synchronize(device)


def sweep(
    sizes: Sequence[int],
    device_type: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seconds: float = CPU_SECONDS,
    op: str = "linear",
    budget: float | None = None,
) -> list[MatmulRate]:
    """`matmul_rate` at each size, smallest first. With a `budget` (seconds), a size whose
    predicted cost (two untimed products and the timed span, at the best rate so far) would
    overrun it is skipped with all larger ones; a size the device has no memory for ends the
    sweep too. The matrices come from their own generator: the caller's seeded stream stays
    where it was."""
    device = torch.device(device_type)
    generator = torch.Generator(device=device).manual_seed(0)
    rates: list[MatmulRate] = []
    _wake(device, dtype, OPS[op])
    start = time.perf_counter()
    try:
        for n in sorted(sizes):
            if budget is not None and rates:
                product = 2.0 * n**3 / max(r.flops for r in rates)
                if time.perf_counter() - start + 2 * product + max(seconds, product) > budget:
                    break
            try:
                rates.append(matmul_rate(n, device, dtype, seconds, op, generator))
            except torch.cuda.OutOfMemoryError:
                break
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the probe's matrices must not crowd the model out
    return rates


def probe_peak(
    device_type: str = "cpu",
    dtype: torch.dtype = torch.float32,
    sizes: Sequence[int] | None = None,
    seconds: float | None = None,
    budget: float | None = None,
) -> PeakProbe:
    """The best `sweep` rate over `sizes` (default: CPU_SIZES on the CPU, ACCELERATOR_SIZES
    elsewhere), each timed `seconds`, the whole kept within `budget` seconds (about 2-3 s on
    the CPU). Not cached: `measured_peak_flops` is the cached figure."""
    kind = torch.device(device_type).type
    cpu = kind == "cpu"
    sizes = sizes or (CPU_SIZES if cpu else ACCELERATOR_SIZES)
    seconds = seconds if seconds is not None else (CPU_SECONDS if cpu else ACCELERATOR_SECONDS)
    budget = budget if budget is not None else (CPU_BUDGET if cpu else ACCELERATOR_BUDGET)
    rates = sweep(sizes, device_type, dtype, seconds, "linear", budget)
    if not rates:
        raise TrainingError(
            f"no {min(sizes)} x {min(sizes)} matmul fits in {device_type}'s free memory to "
            "measure its peak; free the device (another process may hold it)"
        )
    best = max(rates, key=lambda r: r.flops)
    return PeakProbe(best.flops, best.size, kind, dtype, tuple(rates))


_PROBES: dict[tuple[str, torch.dtype], PeakProbe] = {}


@functools.cache
def measured_peak_flops(device_type: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of the best square matmul on `device_type` in `dtype`, measured once per process
    (`probe_peak`; `last_probe` gives the size and every size's rate)."""
    probe = probe_peak(device_type, dtype)
    _PROBES[(probe.device_type, dtype)] = probe
    return probe.flops


def last_probe(device_type: str, dtype: torch.dtype) -> PeakProbe | None:
    """The probe behind `measured_peak_flops`'s latest figure for this device and dtype; None
    when it has not run in this process."""
    return _PROBES.get((torch.device(device_type).type, dtype))
