"""The matmul peak probe (the MFU denominator of `groundup pretrain`) beside a plain sweep.

Prints what `groundup.train.hardware.probe_peak` reports for fp32 and bf16 (the best of a few
sizes within its time budget, as at the start of a pretrain), then, in the same process, the
rate of square N x N products for N = 256 ... 4096 in fp32 and bf16 through `torch.matmul` and
`torch.nn.functional.linear` (a model's Linear path). If the probe's figure is well below the
sweep's best, MFU is flattered. Under a minute on 2 CPU cores.

    python benchmarks/bench_peak.py [--threads 2] [--seconds 0.25] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch

SIZES = (256, 512, 1024, 2048, 3072, 4096)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.25, help="timed per cell")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from groundup.train.hardware import probe_peak, sweep
    from groundup.train.peaks import flops_text

    sizes = [int(n) for n in args.sizes.split(",")]
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads")
    print("probe (what pretrain divides MFU by: the best size within its time budget):")
    for label, dtype in DTYPES.items():
        probe = probe_peak(args.device, dtype)
        tried = ", ".join(f"N={r.size} {r.flops / 1e9:,.0f}" for r in probe.rates)
        print(f"  {label}: {flops_text(probe.flops)} at N={probe.size}  (GFLOP/s: {tried})")

    columns = [(label, dtype, op) for label, dtype in DTYPES.items() for op in ("matmul", "linear")]
    table = {
        (label, op): {r.size: r.flops for r in sweep(sizes, args.device, dtype, args.seconds, op)}
        for label, dtype, op in columns
    }
    print(f"\nsweep, GFLOP/s of N x N products (2 N^3 FLOPs), each timed {args.seconds} s:")
    print(f"{'N':>6}" + "".join(f"{f'{label} {op}':>14}" for label, _, op in columns))
    for n in sizes:
        cells = [table[(label, op)].get(n) for label, _, op in columns]
        print(f"{n:>6}" + "".join(f"{c / 1e9:>14,.0f}" if c else f"{'-':>14}" for c in cells))
    best = [max(table[(label, op)].values(), default=0.0) for label, _, op in columns]
    print(f"{'best':>6}" + "".join(f"{b / 1e9:>14,.0f}" for b in best))


if __name__ == "__main__":
    main()
