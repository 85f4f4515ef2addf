"""The report's figures: matplotlib drawings of one or several runs' records, each returned as
an SVG data URI the page embeds (no file beside it, no network).

matplotlib is imported only here and only when a figure is drawn, and only through
`matplotlib.figure.Figure`: pyplot would pick a GUI backend and keep every figure in its
global registry; a bare Figure renders with the SVG/Agg canvases and is freed with its last
reference. The user's rcParams are read, never changed.

Each function returns None when no run has the data it draws, so the page shows only figures
with something in them. With several runs each run keeps one colour in every figure.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from groundup.report.run_data import RunData

# a fixed palette (matplotlib's tab10): a run's colour must not depend on the user's style
COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
SIZE = (6.0, 3.0)  # inches; drawn at 100 dpi: small files, readable on a laptop screen
VAL_STYLE = {"linestyle": "--", "marker": "o", "markersize": 3}
X_LABELS = {
    "step": "step",
    "tokens": "tokens seen",
    "samples": "samples seen",
    "time_s": "wall time",
}
MAX_METRIC_PANELS = 4
MAX_POINTS = 1000  # per curve; longer ones are thinned (`thin`)
MAX_ANNOTATED_CLASSES = 20  # beyond this the counts would not fit in the cells


@dataclass
class Plot:
    """One drawn figure: a title for the page and the image itself."""

    key: str  # a stable name ("loss-step"): the page's anchor and what tests look for
    title: str
    image: str  # data:image/svg+xml;base64,...


def color(index: int) -> str:
    return COLORS[index % len(COLORS)]


def number(value: Any) -> float | None:
    """A finite float, or None (a missing key, a bool, a string, NaN or inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def series(records: Sequence[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of the records that hold both keys as finite numbers, in file order, thinned
    to about MAX_POINTS (see `thin`)."""
    xs, ys = [], []
    for record in records:
        a, b = number(record.get(x)), number(record.get(y))
        if a is not None and b is not None:
            xs.append(a)
            ys.append(b)
    return thin(xs, ys)


def thin(xs: list[float], ys: list[float], limit: int = 0) -> tuple[list[float], list[float]]:
    """At most about `limit` points of a long curve: in each run of consecutive points, the
    lowest and the highest (in their order). Every spike stays visible, and a 100k-step run
    logged every step still draws a page of a few hundred kB."""
    limit = limit or MAX_POINTS
    if len(xs) <= limit:
        return xs, ys
    width = math.ceil(2 * len(xs) / limit)
    kept_x, kept_y = [], []
    for start in range(0, len(xs), width):
        chunk = range(start, min(start + width, len(xs)))
        low = min(chunk, key=ys.__getitem__)
        high = max(chunk, key=ys.__getitem__)
        for i in sorted({low, high}):
            kept_x.append(xs[i])
            kept_y.append(ys[i])
    return kept_x, kept_y


def val_records(run: RunData) -> list[dict[str, Any]]:
    """The validation points: step evaluations and epoch ends, by step."""
    found = [r for r in run.records if r.get("event") in ("eval", "epoch") and "val_loss" in r]
    return sorted(found, key=lambda r: number(r.get("step")) or 0.0)


def _figure(ncols: int = 1, width: float | None = None) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure  # lazily: importing matplotlib costs ~0.3 s

    fig = Figure(figsize=(width or SIZE[0], SIZE[1]), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, list(axes)


def encode(fig: Any) -> str:
    """The figure as an SVG data URI. An <img> keeps each SVG's element ids to itself (inlined
    side by side, two figures' clip-path ids could clash)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _finish(fig: Any, key: str, title: str, legend_axes: Sequence[Any]) -> Plot:
    for ax in legend_axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    return Plot(key=key, title=title, image=encode(fig))


def _label(runs: Sequence[RunData], index: int, what: str) -> str:
    """`train` for one run; the run's name (and `what`) when several share the figure."""
    return what if len(runs) == 1 else f"{runs[index].name} {what}".strip()


def _time_scale(runs: Sequence[RunData]) -> tuple[float, str]:
    longest = max((number(r.get("time_s")) or 0.0 for run in runs for r in run.records), default=0)
    if longest > 3 * 3600:
        return 3600.0, "h"
    if longest > 3 * 60:
        return 60.0, "min"
    return 1.0, "s"


def _x_axis(ax: Any, runs: Sequence[RunData], x: str) -> float:
    """Label the x axis; returns the divisor for its values (wall time in s, min or h)."""
    scale = 1.0
    label = X_LABELS[x]
    if x == "time_s":
        scale, unit = _time_scale(runs)
        label = f"{label} ({unit})"
    elif x in ("tokens", "samples"):
        from matplotlib.ticker import EngFormatter

        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel(label)
    return scale


def _auto_log(ax: Any, values: Sequence[float]) -> None:
    """A log y axis when the values span more than two decades (a loss from 10 to 0.01)."""
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 100:
        ax.set_yscale("log")


# ---------------------------------------------------------------- curves against steps & co
def loss_plot(runs: Sequence[RunData], x: str = "step") -> Plot | None:
    """Training loss (line) and validation loss (dashed, points) against x."""
    fig, (ax,) = _figure()
    scale = _x_axis(ax, runs, x)
    drawn: list[float] = []
    for i, run in enumerate(runs):
        tx, ty = series(run.events("train"), x, "loss")
        vx, vy = series(val_records(run), x, "val_loss")
        if tx:
            ax.plot([v / scale for v in tx], ty, color=color(i), label=_label(runs, i, "train"))
        if vx:
            ax.plot(
                [v / scale for v in vx],
                vy,
                color=color(i),
                label=_label(runs, i, "val"),
                **VAL_STYLE,
            )
        drawn += ty + vy
    if not drawn:
        return None
    _auto_log(ax, drawn)
    ax.set_ylabel("loss")
    return _finish(fig, f"loss-{x}", f"Loss against {X_LABELS[x]}", [ax])


def loss_axes(runs: Sequence[RunData]) -> list[str]:
    """The x axes the loss is drawn against: step; tokens (else samples) and wall time when
    the records have them."""

    def has(key: str) -> bool:
        return any(number(r.get(key)) is not None for run in runs for r in run.events("train"))

    axes = ["step"]
    if has("tokens"):
        axes.append("tokens")
    elif has("samples"):
        axes.append("samples")
    if has("time_s"):
        axes.append("time_s")
    return axes


def train_key_plot(
    runs: Sequence[RunData],
    key: str,
    title: str,
    ylabel: str,
    log: bool = False,
    from_zero: bool = False,
) -> Plot | None:
    """One train-record key (lr, grad_norm) against step; `log` when it spans decades,
    `from_zero` to keep a constant value from looking like noise."""
    fig, (ax,) = _figure()
    _x_axis(ax, runs, "step")
    drawn: list[float] = []
    for i, run in enumerate(runs):
        xs, ys = series(run.events("train"), "step", key)
        if xs:
            ax.plot(xs, ys, color=color(i), label=_label(runs, i, "") if len(runs) > 1 else None)
            drawn += ys
    if not drawn:
        return None
    if log:
        _auto_log(ax, drawn)
    if from_zero:
        ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    return _finish(fig, key, title, [ax])


def throughput_plot(runs: Sequence[RunData]) -> Plot | None:
    """Tokens/s (or samples/s) against step, and MFU beside it when it is known."""
    rate_key = next(
        (
            k
            for k in ("tokens_per_s", "samples_per_s")
            if any(series(run.events("train"), "step", k)[0] for run in runs)
        ),
        None,
    )
    if rate_key is None:
        return None
    has_mfu = any(series(run.events("train"), "step", "mfu")[0] for run in runs)
    fig, axes = _figure(2 if has_mfu else 1, width=SIZE[0] * (1.6 if has_mfu else 1))
    from matplotlib.ticker import EngFormatter

    for i, run in enumerate(runs):
        xs, ys = series(run.events("train"), "step", rate_key)
        axes[0].plot(xs, ys, color=color(i), label=_label(runs, i, "") if len(runs) > 1 else None)
        if has_mfu:
            for key, style in (("mfu", "-"), ("mfu_datasheet", "--")):
                mx, my = series(run.events("train"), "step", key)
                if mx:
                    label = _label(runs, i, mfu_label(run, key))
                    axes[1].plot(mx, [100 * v for v in my], style, color=color(i), label=label)
    axes[0].set_ylabel(rate_key.replace("_per_s", "/s"))
    axes[0].yaxis.set_major_formatter(EngFormatter(sep=""))
    axes[0].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xlabel("step")
    if has_mfu:
        axes[1].set_ylabel("MFU (%)")
        axes[1].set_ylim(bottom=0)
    title = "Throughput and MFU" if has_mfu else "Throughput"
    return _finish(fig, "throughput", title, axes)


def mfu_label(run: RunData, key: str) -> str:
    """A curve's legend: which peak the MFU is a fraction of, with its figure from
    results.json ('MFU (measured peak 682 TFLOP/s)'); without one (a run still going) the
    kind of peak alone."""
    known = (run.results or {}).get(f"{key}_label")
    if isinstance(known, str) and known:
        return known
    return "MFU (datasheet peak)" if key == "mfu_datasheet" else "MFU (measured peak)"


def metric_names(runs: Sequence[RunData]) -> list[str]:
    """The validation metrics the runs logged (val_accuracy -> accuracy), loss left out."""
    names: list[str] = []
    for run in runs:
        for record in val_records(run):
            for key, value in record.items():
                name = key[4:]
                if (
                    key.startswith("val_")
                    and name not in ("loss", "items")
                    and number(value) is not None
                    and name not in names
                ):
                    names.append(name)
    return names


def metrics_plot(runs: Sequence[RunData]) -> Plot | None:
    """Each validation metric against step (dashed, points), with the training value of the
    epoch records (a line) when the run logged it."""
    names = metric_names(runs)[:MAX_METRIC_PANELS]
    if not names:
        return None
    fig, axes = _figure(len(names), width=SIZE[0] * min(1 + 0.6 * (len(names) - 1), 2.2))
    for ax, name in zip(axes, names):
        for i, run in enumerate(runs):
            tx, ty = series(run.events("epoch"), "step", name)
            vx, vy = series(val_records(run), "step", f"val_{name}")
            if tx:
                ax.plot(tx, ty, color=color(i), label=_label(runs, i, "train"))
            if vx:
                ax.plot(vx, vy, color=color(i), label=_label(runs, i, "val"), **VAL_STYLE)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
    return _finish(fig, "metrics", "Validation metrics", axes[:1])


def data_wait_plot(runs: Sequence[RunData]) -> Plot | None:
    """The share of each log window's wall time spent waiting for data, against step: one run
    as stacked shares (waiting, computing), several as one line each."""
    found = [(i, *series(run.events("train"), "step", "data_wait")) for i, run in enumerate(runs)]
    found = [(i, xs, [min(max(y, 0.0), 1.0) for y in ys]) for i, xs, ys in found if xs]
    if not found:
        return None
    fig, (ax,) = _figure()
    if len(runs) == 1:
        _, xs, ys = found[0]
        ax.stackplot(
            xs,
            [100 * y for y in ys],
            [100 * (1 - y) for y in ys],
            labels=["waiting for data", "compute (and the rest)"],
            colors=["#d62728", "#9ecae1"],
        )
        ax.set_ylim(0, 100)
    else:
        for i, xs, ys in found:
            ax.plot(xs, [100 * y for y in ys], color=color(i), label=runs[i].name)
        ax.set_ylim(bottom=0)
    ax.set_xlabel("step")
    ax.set_ylabel("share of wall time (%)")
    return _finish(fig, "data-wait", "Data wait and compute", [ax])


# ---------------------------------------------------------------- one run only
def confusion_plot(run: RunData) -> Plot | None:
    """The confusion matrix as a heatmap with its counts (rows: true label, columns:
    predicted)."""
    if run.confusion is None:
        return None
    labels, matrix = run.confusion["labels"], run.confusion["matrix"]
    n = len(labels)
    side = min(max(3.0, 0.45 * n + 1.5), 9.0)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(side + 1.0, side), dpi=100, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), labels, rotation=90 if n > 6 else 0, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= MAX_ANNOTATED_CLASSES:
        top = max((max(row) for row in matrix), default=0) or 1
        for r, row in enumerate(matrix):
            for c, value in enumerate(row):
                shade = "white" if value > top / 2 else "black"
                text = f"{value:g}" if isinstance(value, float) else str(value)
                ax.text(c, r, text, ha="center", va="center", color=shade, fontsize=7)
    return Plot(key="confusion", title="Confusion matrix", image=encode(fig))


def lr_find_plot(run: RunData) -> Plot | None:
    """lr_find.json: the loss against the learning rate (log x) and the suggested rate."""
    if run.lr_find is None:
        return None
    pairs = [
        (a, b)
        for a, b in zip(run.lr_find["lrs"], run.lr_find["losses"])
        if number(a) is not None and number(b) is not None and a > 0
    ]
    if not pairs:
        return None
    fig, (ax,) = _figure()
    ax.plot([a for a, _ in pairs], [b for _, b in pairs], color=color(0))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    suggestion = number(run.lr_find.get("suggestion"))
    if suggestion is not None and suggestion > 0:
        ax.axvline(suggestion, color=color(3), linestyle="--", label=f"suggested {suggestion:.2g}")
    return _finish(fig, "lr-find", "Learning-rate finder", [ax])


def curve_plots(runs: Sequence[RunData]) -> list[Plot]:
    """Every curve figure with data, in the page's order (one run or several overlaid)."""
    plots = [loss_plot(runs, x) for x in loss_axes(runs)]
    plots += [
        train_key_plot(runs, "lr", "Learning rate", "learning rate", from_zero=True),
        train_key_plot(runs, "grad_norm", "Gradient norm (before clipping)", "norm", log=True),
        throughput_plot(runs),
        metrics_plot(runs),
        data_wait_plot(runs),
    ]
    return [p for p in plots if p is not None]
