"""`model.optimizer` for a compiled Keras-API model: Keras's `learning_rate` to read and set
(what a guide's learning-rate callback does), over the torch optimizer the Trainer builds.

Setting it changes each parameter group's base rate, as `ReduceLROnPlateau` does: the
Trainer's schedule multiplies the new base from the next step on, and the groups keep their
ratios. Before the first `fit` builds the optimizer, it reads and sets the compiled rate.
Anything else (`param_groups`, `state_dict()`, ...) is the torch optimizer's.
"""

from __future__ import annotations

from typing import Any

import torch

from groundup.errors import ConfigError
from groundup.train.optim import OptimizerSpec


def _lr_tools() -> Any:
    """groundup.train.lr_callbacks, imported when first used: importing it before
    groundup.train.callbacks is a cycle (train.callbacks re-exports it)."""
    from groundup.train import lr_callbacks

    return lr_callbacks


class OptimizerView:
    """The optimizer of `model` as Keras shows it (`model.optimizer.learning_rate`)."""

    def __init__(self, model: Any) -> None:
        object.__setattr__(self, "_model", model)

    def _built(self) -> torch.optim.Optimizer | None:
        trainer = self._model.trainer
        return None if trainer is None else trainer.optimizer

    def _spec(self) -> Any:
        return self._model._require_compiled().optimizer

    @property
    def learning_rate(self) -> float:
        built = self._built()
        if built is not None:
            return _lr_tools().base_lrs(built)[0]
        spec = self._spec()
        if isinstance(spec, OptimizerSpec):
            return float(spec.lr)
        return float(spec.param_groups[0].get("initial_lr", spec.param_groups[0]["lr"]))

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        try:
            new = float(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"optimizer.learning_rate must be a number, got {type(value).__name__}"
            ) from None
        if not new >= 0:
            raise ConfigError(f"optimizer.learning_rate must be >= 0, got {new}")
        built = self._built()
        if built is not None:
            tools = _lr_tools()
            bases = tools.base_lrs(built)
            first = bases[0]
            tools.set_base_lrs(
                self._model.trainer, [new * b / first if first else new for b in bases]
            )
            return
        spec = self._spec()
        if isinstance(spec, OptimizerSpec):
            spec.lr = new
        else:
            for group in spec.param_groups:
                group["lr"] = new

    lr = learning_rate  # Keras 2's name

    def __getattr__(self, name: str) -> Any:
        built = self._built()
        if built is None:
            raise AttributeError(
                f"the optimizer has no {name!r} before fit builds it (learning_rate is there)"
            )
        return getattr(built, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("learning_rate", "lr"):
            object.__setattr__(self, name, value)  # the property's setter
        else:
            raise ConfigError(f"model.optimizer.{name} cannot be set; only learning_rate can")

    def __repr__(self) -> str:
        return f"OptimizerView(learning_rate={self.learning_rate:.4g})"
