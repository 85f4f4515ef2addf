"""What `fit` returns: per-epoch (or per-evaluation) values, Keras-style."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from groundup.errors import ConfigError, DependencyError


class History:
    """`history.history["val_loss"]` is a list with one value per epoch (or evaluation).

    As in Keras: `history.history` maps each logged name ("loss", "accuracy", "val_loss",
    "val_accuracy", "learning_rate", ...) to its per-epoch values, `history.epoch` lists the
    epochs (0-based) and `history.params` holds the fit's {"epochs", "steps", "verbose"}.

    Runs measured in steps (pretraining) evaluate every N steps; each evaluation then adds one
    entry and `history.step` says at which optimizer step it was taken.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.step: list[int] = []
        self.params: dict[str, Any] = {}
        self._entries: dict[str, list[int]] = {}  # per name: the entries its values came from

    def set_params(self, params: dict[str, Any]) -> None:
        """Keras's `History.params`: what fit was asked for (epochs, steps per epoch, verbose)."""
        self.params = dict(params)

    def record(self, epoch: int, step: int, logs: dict[str, Any]) -> None:
        entry = len(self.epoch)
        self.epoch.append(epoch)
        self.step.append(step)
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.history.setdefault(key, []).append(float(value))
                self._entries.setdefault(key, []).append(entry)

    def last(self, key: str) -> float | None:
        values = self.history.get(key)
        return values[-1] if values else None

    def plot(self, keys: Sequence[str] | None = None, path: str | Path | None = None) -> Any:
        """Draw the curves and return the matplotlib `Figure` (saved to `path` when given).

        One panel per quantity, its training and validation curves together ("loss" with
        "val_loss", "accuracy" with "val_accuracy"); `keys` picks the names to draw (default:
        all). The x axis is the epoch (1-based, as Keras prints it) when each entry is one
        epoch, else the optimizer step. No pyplot: the figure draws headless and is freed
        with its last reference; `IPython` shows a returned Figure inline."""
        chosen = self._keys_to_plot(keys)
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise DependencyError(
                "History.plot needs matplotlib, which is not installed; pip install matplotlib"
            ) from None
        panels: dict[str, list[str]] = {}
        for key in chosen:
            panels.setdefault(key.removeprefix("val_"), []).append(key)
        by_epoch = len(set(self.epoch)) == len(self.epoch)
        fig = Figure(figsize=(4.0 * len(panels), 3.0), dpi=100, layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (name, names) in zip(axes, panels.items()):
            for key in names:
                entries = self._entries.get(key, [])
                xs = [self.epoch[i] + 1 if by_epoch else self.step[i] for i in entries]
                style = {"linestyle": "--", "marker": "o", "markersize": 3}
                ax.plot(xs, self.history[key], label=key, **(style if key != name else {}))
            ax.set_title(name)
            ax.set_xlabel("epoch" if by_epoch else "step")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path)
        return fig

    def _keys_to_plot(self, keys: Sequence[str] | None) -> list[str]:
        if not self.history:
            raise ConfigError("History.plot: nothing to plot yet; call fit first")
        if keys is None:
            return list(self.history)
        if isinstance(keys, str):
            keys = [keys]
        unknown = [k for k in keys if k not in self.history]
        if unknown or not keys:
            raise ConfigError(
                f"History.plot: no values for {unknown or keys!r}; the history has "
                f"{', '.join(self.history)}"
            )
        return list(keys)

    def __repr__(self) -> str:
        keys = ", ".join(self.history)
        return f"History({len(self.epoch)} entries: {keys})"
