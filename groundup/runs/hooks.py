"""Extra callbacks for every run begun in a context: how a sweep puts its pruning callback,
and `groundup lr-find` its range test, into the unchanged jobs.

    with run_callbacks(PruneOnValLoss(trial)):
        run_train(config, overrides)      # Run.callbacks() appends the pruning callback

A context variable, not a global: nested blocks add to the outer ones, leaving a block takes
its callbacks away again, and other threads or tasks never see them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from groundup.train.callbacks import Callback

_EXTRA: ContextVar[tuple[Callback, ...]] = ContextVar("groundup_run_callbacks", default=())


@contextlib.contextmanager
def run_callbacks(*callbacks: Callback) -> Iterator[None]:
    """Every run begun inside the block also gets `callbacks` (after its own)."""
    token = _EXTRA.set((*_EXTRA.get(), *callbacks))
    try:
        yield
    finally:
        _EXTRA.reset(token)


def extra_callbacks() -> list[Callback]:
    """The callbacks the enclosing `run_callbacks` blocks add (outermost first)."""
    return list(_EXTRA.get())
