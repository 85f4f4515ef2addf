"""Keras-signature callbacks for the Keras-style API, and the adapter that runs them on the
one `Trainer`.

Subclass `Callback` as in Keras::

    class StopAtLoss(groundup.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs["loss"] < 0.01:
                self.model.stop_training = True

    model.fit(x, y, epochs=50, callbacks=[StopAtLoss(), gu.callbacks.EarlyStopping(patience=3)])

`model.fit` hands its callbacks to `adapt_callbacks`: the engine's callbacks (everything in
`gu.callbacks`: EarlyStopping, ModelCheckpoint, CSVLogger, ReduceLROnPlateau,
LearningRateScheduler, TerminateOnNaN, LambdaCallback, TensorBoard, BackupAndRestore, ...)
pass through as they are, and each Keras-style one is wrapped in a `KerasCallbackAdapter`.
Keras-style means a subclass of this `Callback`, or a user's subclass of the engine's
`gu.callbacks.Callback` whose hooks take Keras's arguments (`keras_style`): under
`import groundup as keras`, a guide's `class C(keras.callbacks.Callback)` is such a class.
When each Keras hook runs during fit, and with which logs, is in groundup.train.callbacks_keras.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from groundup.errors import ConfigError
from groundup.train.backup import BackupAndRestore
from groundup.train.callbacks import Callback as EngineCallback
from groundup.train.callbacks_keras import FIT_HOOKS, KerasHooks, keras_params

if TYPE_CHECKING:
    from groundup.train.trainer import Trainer

__all__ = [
    "Callback",
    "KerasCallbackAdapter",
    "adapt_callbacks",
    "attach",
    "keras_style",
    "run_keras_hook",
]


class Callback:
    """Keras's callback base: every hook is a no-op; `self.model` is the model being
    trained (set `self.model.stop_training = True` to stop fit after the current step) and
    `self.params` is {"epochs", "steps", "verbose"}.

    Logs use Keras's keys: "loss", the metric names ("accuracy"), and at epoch end the
    validation figures ("val_loss", "val_accuracy"). A callback that must survive a resume may
    define `state_dict()` (JSON-able) and `load_state_dict(state)`, as the engine's do.
    """

    def __init__(self) -> None:
        self.model: Any = None
        self.params: dict[str, Any] = {}

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None: ...
    def on_train_end(self, logs: dict[str, Any] | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None: ...

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.on_batch_begin(batch, logs=logs)  # Keras 2's name, still honoured

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.on_batch_end(batch, logs=logs)

    def on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None: ...
    def on_test_end(self, logs: dict[str, Any] | None = None) -> None: ...
    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_predict_begin(self, logs: dict[str, Any] | None = None) -> None: ...
    def on_predict_end(self, logs: dict[str, Any] | None = None) -> None: ...
    def on_predict_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None: ...


# a hook counts as defined when the subclass overrides it or its Keras 2 alias
_ALIASES = {
    "on_train_batch_begin": ("on_train_batch_begin", "on_batch_begin"),
    "on_train_batch_end": ("on_train_batch_end", "on_batch_end"),
}
# the engine's hooks and how many arguments each takes after self (Keras's take fewer, or
# name them logs/epoch/batch)
_ENGINE_ARITY = {
    "on_train_begin": 1,
    "on_train_end": 1,
    "on_epoch_begin": 2,
    "on_epoch_end": 3,
    "on_step_end": 2,
    "on_eval_end": 2,
    "on_log": 2,
    "on_save": 2,
}
_KERAS_HOOKS = tuple(
    n for n in vars(Callback) if n.startswith("on_") and callable(getattr(Callback, n))
)


def _hook_method(callback: Any, hook: str) -> Any:
    """The method that handles Keras's `hook` on `callback` (its Keras 2 alias on a class
    that only has that), or None when the class leaves it to the base's no-op."""
    cls = type(callback)
    for name in _ALIASES.get(hook, (hook,)):
        fn = getattr(cls, name, None)
        if fn is None or fn is getattr(Callback, name, None):
            continue
        if fn is getattr(EngineCallback, name, None):
            continue
        return getattr(callback, name)
    return None


def _looks_like_keras(name: str, fn: Any) -> bool | None:
    """Whether the hook `name` defined as `fn` takes Keras's arguments (True), the engine's
    (False), or cannot tell (None)."""
    if name not in _ENGINE_ARITY:
        return True
    if name not in _KERAS_HOOKS:
        return False
    try:
        params = list(inspect.signature(fn).parameters.values())[1:]  # after self
    except (TypeError, ValueError):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional or any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    if positional[0].name == "trainer":
        return False
    if positional[0].name in ("logs", "epoch", "batch") or positional[-1].name == "logs":
        return True
    if positional[-1].default is not inspect.Parameter.empty:
        return True
    return len(positional) != _ENGINE_ARITY[name] or None


def keras_style(callback: EngineCallback) -> bool:
    """An engine-`Callback` subclass of the user's written with Keras's hooks (a Keras guide's
    `class CustomCallback(keras.callbacks.Callback)` under `import groundup as keras`).
    groundup's own callbacks are the engine's; a class mixing both kinds is refused."""
    cls = type(callback)
    if cls.__module__.startswith("groundup."):
        return False
    kinds: dict[str, bool | None] = {}
    for name in sorted(set(_ENGINE_ARITY) | set(_KERAS_HOOKS)):
        fn = getattr(cls, name, None)
        if fn is None or fn is getattr(EngineCallback, name, None):
            continue
        kinds[name] = _looks_like_keras(name, fn)
    keras = sorted(n for n, k in kinds.items() if k)
    engine = sorted(n for n, k in kinds.items() if k is False)
    if keras and engine:
        raise ConfigError(
            f"{cls.__name__} mixes Keras-style hooks ({', '.join(keras)}: epoch/batch and logs) "
            f"with the engine's ({', '.join(engine)}: the trainer first); write all of them "
            "one way"
        )
    return bool(keras)


class KerasCallbackAdapter(KerasHooks):
    """Runs one Keras-style callback inside the Trainer: its hooks get Keras's arguments,
    `callback.model` is `model` (the trainer's model when None) and `model.stop_training`
    and `trainer.stop_training` follow each other."""

    def __init__(self, callback: Any, model: nn.Module | None = None) -> None:
        super().__init__()
        self.callback = callback
        self.model = model
        self._methods = {hook: _hook_method(callback, hook) for hook in FIT_HOOKS}

    def _model(self, trainer: Trainer) -> Any:
        return self.model if self.model is not None else trainer.model

    def keras_wants(self, hook: str) -> bool:
        return self._methods[hook] is not None

    def keras_call(self, trainer: Trainer, hook: str, *args: Any) -> None:
        model = self._model(trainer)
        if trainer.stop_training:  # stopped by another callback: the Keras side sees it
            model.stop_training = True
        self._methods[hook](*args)
        if getattr(model, "stop_training", False):
            trainer.stop_training = True

    def on_train_begin(self, trainer: Trainer) -> None:
        model = self._model(trainer)
        model.stop_training = False
        attach(self.callback, model, keras_params(trainer))
        super().on_train_begin(trainer)

    def state_dict(self) -> dict[str, Any]:
        own = getattr(self.callback, "state_dict", None)
        return {"callback": own()} if callable(own) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        own = getattr(self.callback, "load_state_dict", None)
        if callable(own) and "callback" in state:
            own(state["callback"])


def attach(callback: Any, model: Any, params: dict[str, Any] | None = None) -> None:
    """Set Keras's `callback.model` (and `callback.params`), through set_model/set_params
    where the class has them."""
    if callable(getattr(callback, "set_model", None)):
        callback.set_model(model)
    else:
        callback.model = model
    if params is None:
        return
    if callable(getattr(callback, "set_params", None)):
        callback.set_params(params)
    else:
        callback.params = params


def adapt_callbacks(
    callbacks: Sequence[Any] | None, model: nn.Module | None
) -> list[EngineCallback]:
    """The engine callbacks `Trainer.fit` runs for `model.fit(callbacks=...)`: engine ones
    unchanged, Keras-style ones wrapped (adapting twice changes nothing). A BackupAndRestore
    goes first, so the others see the fit it restores. Anything else is a ConfigError."""
    if callbacks is None:
        return []
    if isinstance(callbacks, (EngineCallback, Callback)) or not isinstance(
        callbacks, (list, tuple)
    ):
        raise ConfigError(
            f"callbacks must be a list of callbacks, got {type(callbacks).__name__}; "
            "write callbacks=[...]"
        )
    adapted: list[EngineCallback] = []
    for i, cb in enumerate(callbacks):
        if isinstance(cb, KerasCallbackAdapter):
            adapted.append(cb)
        elif isinstance(cb, EngineCallback) and not keras_style(cb):
            adapted.append(cb)
        elif isinstance(cb, (Callback, EngineCallback)):
            adapted.append(KerasCallbackAdapter(cb, model))
        elif isinstance(cb, type) and issubclass(cb, (EngineCallback, Callback)):
            raise ConfigError(
                f"callbacks[{i}] is the class {cb.__name__}, not a callback; "
                f"pass an instance: {cb.__name__}(...)"
            )
        else:
            raise ConfigError(
                f"callbacks[{i}] is a {type(cb).__name__}, not a callback; pass gu.callbacks "
                "objects (EarlyStopping(...), ...) or subclasses of groundup.keras.callbacks.Callback"
            )
    adapted.sort(key=lambda cb: not isinstance(cb, BackupAndRestore))  # stable: order kept
    return adapted


_OUTSIDE_FIT = ("on_test_begin", "on_test_end", "on_predict_begin", "on_predict_end")


def run_keras_hook(
    callbacks: Sequence[Any] | None, model: nn.Module, hook: str, logs: dict[str, Any] | None
) -> None:
    """`evaluate(callbacks=...)` / `predict(callbacks=...)`: call `hook` (on_test_begin,
    on_test_end, on_predict_begin or on_predict_end) with `logs` on each Keras-style
    callback, its `model` set first. Engine callbacks have no such hooks and are skipped."""
    if hook not in _OUTSIDE_FIT:
        raise ConfigError(f"run_keras_hook takes one of {', '.join(_OUTSIDE_FIT)}, got {hook!r}")
    for cb in adapt_callbacks(callbacks, model):
        if isinstance(cb, KerasCallbackAdapter):
            method = _hook_method(cb.callback, hook)
            if method is not None:
                attach(cb.callback, model)
                method(dict(logs or {}))
