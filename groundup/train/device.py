"""Where the model computes and in what precision: the `device` and `precision` options."""

from __future__ import annotations

import torch

from groundup.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp64")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}'; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use device: auto")
    return dev


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 matmuls run natively (CUDA with bf16, CPUs with AVX-512 BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        try:
            return bool(check()) if check is not None else False
        except RuntimeError:
            return False
    return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision`, or None for plain fp32 (and fp64)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision in ("fp32", "fp64"):
        return None
    if precision == "auto":
        return torch.bfloat16 if bf16_supported(device) else None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def weight_dtype(precision: str) -> torch.dtype | None:
    """The dtype the Trainer casts the model (and floating inputs) to: float64 for "fp64",
    None (keep the model's own) otherwise.

    fp64 is for numerics, not speed: the equivalence tests (several ranks, accumulation,
    resume vs one process) run in it, so their tolerance does not depend on a CPU's float32
    rounding or summation order.
    """
    return torch.float64 if precision == "fp64" else None
