"""How training figures read on the console: rounded, with short labels.

A log line is for a person glancing at a run, so each figure is rounded to what can be read at
a glance (`lr 2.0e-03`, `tok/s 6.02k`, `mfu 24.1%`); metrics.jsonl keeps the full values.
"""

from __future__ import annotations

from typing import Any

# the figures a train line leads with, in this order; any other key follows in its own order
_FIRST = (
    "loss",
    "lr",
    "tokens_per_s",
    "samples_per_s",
    "mfu",
    "mfu_datasheet",
    "grad_norm",
    "data_wait",
)
_LABELS = {
    "tokens_per_s": "tok/s",
    "samples_per_s": "samples/s",
    "mfu_datasheet": "mfu(datasheet)",  # mfu is of the measured peak
    "grad_norm": "grad",
    "data_wait": "data",
}
_SKIPPED = ("epoch", "step")  # the line's prefix says them already


def format_line(prefix: str, logs: dict[str, Any]) -> str:
    """`prefix - loss 1.2345 - lr 2.0e-03 - tok/s 6.02k - ...`: the numeric entries of `logs`."""
    figures = format_figures(logs)
    return f"{prefix} - {figures}" if figures else prefix


def format_figures(logs: dict[str, Any]) -> str:
    """`loss 1.2345 - lr 2.0e-03 - ...`: the leading figures first, then the rest in order."""
    keys = [k for k in _FIRST if k in logs] + [k for k in logs if k not in _FIRST]
    parts = []
    for key in keys:
        text = format_value(key, logs[key])
        if key not in _SKIPPED and text is not None:
            parts.append(f"{_LABELS.get(key, key)} {text}")
    return " - ".join(parts)


def format_value(key: str, value: Any) -> str | None:
    """One figure as the console shows it (None: not a number, left out)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return str(value)
    if key == "lr" or key.startswith("lr_"):
        return f"{value:.1e}"
    if key in ("tokens_per_s", "samples_per_s"):
        return short_number(value)
    if key in ("mfu", "mfu_datasheet"):
        return f"{value * 100:.1f}%"
    if key == "data_wait":
        return f"{value * 100:.0f}%"
    if key == "grad_norm":
        return f"{value:.3g}"
    if abs(value) >= 1e4 or 0 < abs(value) < 1e-3:
        return f"{value:.4g}"
    return f"{value:.4f}"


def short_number(value: float) -> str:
    """Three significant digits and an SI suffix: 6022.07 -> '6.02k', 1.5e6 -> '1.5M'."""
    for suffix, scale in (("", 1.0), ("k", 1e3), ("M", 1e6), ("G", 1e9)):
        scaled = value / scale
        if abs(scaled) < 999.5:  # rounds below 1000 at three digits: this suffix
            return f"{scaled:.3g}{suffix}"
    return f"{value / 1e12:.3g}T"
