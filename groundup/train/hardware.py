"""The machine's measured matmul peak, the denominator of model FLOPs utilization (MFU).

Datasheet peaks are rarely reachable (and unknown for most CPUs), so groundup measures what a
large matmul actually achieves on this device, in the training dtype, once per process.
"""

from __future__ import annotations

import functools
import time

import torch


@functools.cache
def measured_peak_flops(
    device_type: str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    seconds: float = 0.5,
) -> float:
    """FLOP/s of a square matmul (2*n^3 per product) on `device_type` in `dtype`.

    Uses `torch.nn.functional.linear`, the path a model's Linear layers take (on the CPU it
    goes through oneDNN, noticeably faster than `torch.matmul`'s default fp32 path).
    """
    device = torch.device(device_type)
    n = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: kernel selection, caches
        torch.nn.functional.linear(a, b)
    sync()
    iters, start = 0, time.perf_counter()
    while True:
        torch.nn.functional.linear(a, b)
        iters += 1
        if iters % 4 == 0:
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
    return 2.0 * n**3 * iters / elapsed
