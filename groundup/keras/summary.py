"""`model.summary()`: a table of layers, output shapes and weight counts, as Keras prints it
(functional models add the "Connected to" column), then the totals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from groundup.keras.weights import count_weights


def layer_title(layer: nn.Module, name: str | None = None) -> str:
    return f"{name or getattr(layer, 'name', '?')} ({type(layer).__name__})"


def layer_params(layer: nn.Module) -> str:
    built = getattr(layer, "built", True)
    return f"{count_weights(layer)[0]:,}" if built else "0 (unbuilt)"


def render(
    model: nn.Module,
    name: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    print_fn: Callable[[str], Any] | None = print,
) -> str:
    """The table with the totals under it, printed with `print_fn` (None: not printed) and
    returned. Non-trainable weights are frozen parameters and saved buffers (moving stats)."""
    table = [tuple(headers), *(tuple(r) for r in rows)]
    widths = [max(len(r[i]) for r in table) + 2 for i in range(len(headers))]
    rule = "-" * sum(widths)
    lines = [f'Model: "{name}"', rule]
    for i, row in enumerate(table):
        lines.append("".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("=" * sum(widths))
    total, trainable = count_weights(model)
    lines += [
        rule,
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
    ]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text
