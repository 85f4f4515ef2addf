"""The one-time table a run prints before its first step (and `groundup estimate` prints).

A rich table on a terminal, plain aligned `label  value` lines otherwise (logs, CI), from the
summary dict of `plan.summarize`: model, parameters, FLOPs per token, tokens per step, the
batch split, device and precision, the memory per rank and the device's, the expected time.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from groundup.estimate.memory import format_bytes
from groundup.estimate.speed import format_seconds

# below this, a measured peak is mostly the kernels' and allocator's own few MiB
SMALL = 8 * 2**20


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of a summary, in reading order; rows without a value are left out."""
    m = s["memory"]
    rows: list[tuple[str, str]] = [("model", s["model"])]
    params = f"{_count(s['params'])}"
    if s["trainable_params"] != s["params"]:
        params += f" ({_count(s['trainable_params'])} trainable)"
    rows.append(("parameters", params))
    if s.get("flops_per_token"):
        rows.append(("FLOPs per token", f"{_count(s['flops_per_token'])} (forward + backward)"))
    elif s.get("flops_per_sample"):
        rows.append(("FLOPs per sample", f"{_count(s['flops_per_sample'])} (forward + backward)"))
    if s.get("tokens_per_step"):
        rows.append(("tokens per step", f"{s['tokens_per_step']:,}"))
    ranks = s["world_size"]
    split = f"{s['micro_batch']} x {s['grad_accum']} accum"
    split += f" x {ranks} ranks ({s['strategy']})" if ranks > 1 else ""
    rows.append(("batch", f"{split} = {s['samples_per_step']:,} samples per step"))
    rows.append(("device", f"{s['device']}, {s['precision']}"))
    per_rank = " per rank" if ranks > 1 else ""
    rows += [
        (f"weights{per_rank}", format_bytes(m["weights"])),
        ("gradients", format_bytes(m["gradients"])),
        ("optimizer state", format_bytes(m["optimizer"])),
        ("activations", _activations(m)),
    ]
    if m["comm_buffers"]:
        what = "DDP gradient buckets" if m["strategy"] == "ddp" else "FSDP2 gathered blocks"
        rows.append((what, format_bytes(m["comm_buffers"])))
    rows.append(("peak (predicted)", format_bytes(m["total"])))
    timing = s.get("timing") or {}
    if timing.get("peak_bytes"):
        shown = format_bytes(timing["peak_bytes"])
        if not timing.get("peak_includes_weights"):
            shown += " over the weights"
        shown += f", {timing['peak_source']}"
        ratio = s.get("measured_peak_ratio")
        if ratio and timing["peak_bytes"] / ratio >= SMALL:
            shown += f"; {ratio:.2f}x the prediction"
        elif ratio:  # the runtime's own buffers (a few MiB) are most of it
            shown += "; mostly the runtime's own buffers at this size"
        rows.append(("peak (timed steps)", shown))
    if s.get("device_memory") is not None:
        verdict = "fits" if s["fits"] else "DOES NOT FIT"
        rows.append(
            (
                "device memory",
                f"{format_bytes(s['device_memory'])} free ({s['device_memory_source']}): {verdict}",
            )
        )
    if s.get("seconds_per_step") is not None:
        rows.append(("step time", f"{s['seconds_per_step'] * 1000:.1f} ms (timed)"))
    if s.get("predicted_seconds") is not None:
        rows.append(
            (
                "expected time",
                f"{format_seconds(s['predicted_seconds'])} for {s['total_steps']:,} steps",
            )
        )
    elif s.get("time_lower_bound_s") is not None:
        rows.append(
            (
                "expected time",
                f">= {format_seconds(s['time_lower_bound_s'])} for {s['total_steps']:,} steps "
                "(at the measured matmul peak; groundup estimate times real steps)",
            )
        )
    return rows


def render_plain(rows: list[tuple[str, str]], title: str = "") -> str:
    """Aligned `label  value` lines (no colour, no box): what logs and pipes get."""
    width = max((len(label) for label, _ in rows), default=0)
    lines = [title] if title else []
    lines += [f"  {label.ljust(width)}  {value}" for label, value in rows]
    return "\n".join(lines)


def print_summary(
    summary: dict[str, Any], title: str = "run plan", stream: TextIO | None = None
) -> None:
    """Print the summary's table: rich on a terminal, plain lines otherwise."""
    stream = stream if stream is not None else sys.stdout
    rows = summary_rows(summary)
    if hasattr(stream, "isatty") and stream.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for label, value in rows:
            table.add_row(label, value)
        Console(file=stream).print(table)
    else:
        print(render_plain(rows, title), file=stream, flush=True)


def _activations(m: dict[str, Any]) -> str:
    """The configured figure, and the other one (with or without checkpointing)."""
    text = f"{format_bytes(m['activations'])} ({m['source']}, micro-batch {m['micro_batch']}"
    if m["activations_ckpt"] is not None:
        if m["checkpointing"]:
            text += f", checkpointed; {format_bytes(m['activations_full'])} without"
        else:
            text += f"; {format_bytes(m['activations_ckpt'])} with activation checkpointing"
    return text + ")"


def _count(n: float) -> str:
    """4.24M, 1.2G, 25.5k: three significant digits."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"
