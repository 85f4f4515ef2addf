"""What `fit` returns: per-epoch (or per-evaluation) values, Keras-style."""

from __future__ import annotations

from typing import Any


class History:
    """`history.history["val_loss"]` is a list with one value per epoch (or evaluation).

    Runs measured in steps (pretraining) evaluate every N steps; each evaluation then adds one
    entry and `history.step` says at which optimizer step it was taken.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.step: list[int] = []

    def record(self, epoch: int, step: int, logs: dict[str, Any]) -> None:
        self.epoch.append(epoch)
        self.step.append(step)
        for key, value in logs.items():
            if isinstance(value, (int, float)):
                self.history.setdefault(key, []).append(float(value))

    def last(self, key: str) -> float | None:
        values = self.history.get(key)
        return values[-1] if values else None

    def __repr__(self) -> str:
        keys = ", ".join(self.history)
        return f"History({len(self.epoch)} entries: {keys})"
