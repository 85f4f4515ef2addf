"""Datasheet peaks of known GPUs, and how an MFU says which peak it is a fraction of.

Published MFU figures divide by the vendor's dense peak (PaLM, appendix B), which a real matmul
never reaches: on an H200 a bf16 matmul measures about 680 TFLOP/s of the datasheet's 989. So
groundup logs `mfu` against its own measured peak (`groundup.train.hardware`) and, where the
device is in the table below, `mfu_datasheet` against the datasheet, each labelled with its
denominator wherever it is shown.
"""

from __future__ import annotations

import re

import torch

# Dense (no 2:4 sparsity) bf16 tensor-core TFLOP/s with fp32 accumulation, matched in order on
# the lower-cased `torch.cuda.get_device_name()`. Sources: NVIDIA's product datasheets, which
# print the sparse figure (twice these) marked with an asterisk; for GeForce cards the
# architecture whitepapers' "FP32 accumulate" rows (Ada: RTX 4090; Ampere GA102: RTX 3090);
# AMD's Instinct MI300X datasheet. Laptop and cut-down variants (RTX 4090 D, A10G) differ and
# are left out: no datasheet figure is better than a wrong one.
DENSE_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bgh200\b", 989.4),  # Grace Hopper: the H100 SXM's Hopper die
    (r"\bh200\b.*\bnvl\b", 835.5),  # H200 NVL: 1,671 sparse
    (r"\bh200\b", 989.4),  # H200 SXM: 1,979 sparse
    (r"\bh100\b.*\bnvl\b", 835.5),  # H100 NVL: 1,671 sparse
    (r"\bh100\b.*\bpcie\b", 756.5),  # H100 PCIe: 1,513 sparse
    (r"\bh100\b", 989.4),  # H100 SXM5 (named "NVIDIA H100 80GB HBM3"): 1,979 sparse
    (r"\bh800\b.*\bpcie\b", 756.5),
    (r"\bh800\b", 989.4),
    (r"\ba100\b", 312.0),  # SXM4 and PCIe, 40 and 80 GB: 624 sparse
    (r"\ba800\b", 312.0),
    (r"\bb200\b", 2250.0),  # HGX B200: 4.5 PFLOP/s sparse per GPU
    (r"\bl40s\b", 362.05),  # 733 sparse
    (r"\bl40\b", 181.05),  # 362.1 sparse
    (r"\bl4\b", 121.0),  # 242 sparse
    (r"\ba10\b", 125.0),  # 250 sparse
    (r"\brtx 4090$", 165.2),  # 330.3 with fp16 accumulation, which training does not use
    (r"\brtx 3090$", 71.0),  # 142 with fp16 accumulation
    (r"\bmi300x\b", 1307.4),  # ROCm builds of torch report AMD GPUs through torch.cuda
)
# tensor-core dtypes the table holds: fp16 runs at the bf16 rate on all of them; fp32 has no
# such figure (TF32 depends on torch.backends.cuda.matmul.allow_tf32)
TABLE_DTYPES = (torch.bfloat16, torch.float16)


def datasheet_peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """FLOP/s of the dense datasheet peak of the GPU named `device_name` in `dtype`; None for an
    unknown device, a CPU, or a dtype without a table figure."""
    if dtype not in TABLE_DTYPES:
        return None
    name = " ".join(device_name.lower().split())
    for pattern, tflops in DENSE_BF16_TFLOPS:
        if re.search(pattern, name):
            return tflops * 1e12
    return None


def device_name(device: torch.device) -> str:
    """`torch.cuda.get_device_name` for a GPU; the device type otherwise ("cpu", "mps")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def device_datasheet_peak(device: torch.device, dtype: torch.dtype) -> tuple[str, float | None]:
    """(the device's name, its datasheet peak in `dtype` or None)."""
    name = device_name(device)
    return name, (datasheet_peak_flops(name, dtype) if device.type == "cuda" else None)


def flops_text(flops: float) -> str:
    """Three significant digits and a prefix: 6.82e14 -> '682 TFLOP/s', 9.31e11 -> '931 GFLOP/s'."""
    for prefix, scale in (("G", 1e9), ("T", 1e12), ("P", 1e15)):
        if flops / scale < 999.5:
            return f"{flops / scale:.3g} {prefix}FLOP/s"
    return f"{flops / 1e18:.3g} EFLOP/s"


def measured_label(flops: float) -> str:
    """What `mfu` is a fraction of: 'MFU (measured peak 682 TFLOP/s)'."""
    return f"MFU (measured peak {flops_text(flops)})"


def datasheet_label(flops: float) -> str:
    """What `mfu_datasheet` is a fraction of: 'MFU (datasheet 989 TFLOP/s)'."""
    return f"MFU (datasheet {flops_text(flops)})"
