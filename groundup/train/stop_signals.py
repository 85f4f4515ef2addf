"""SIGINT/SIGTERM handlers for a graceful stop: the handler only records the signal, and the
training loop acts on it at the next step boundary (save a checkpoint, then stop)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# what a closed terminal sends (POSIX only): a launcher passes it on to its children
HANGUP_SIGNALS = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()


def install_stop_handlers(
    handler: Callable[[int, Any], None], signals: Sequence[int] = STOP_SIGNALS
) -> dict[int, Any]:
    """Install `handler` for `signals` (SIGINT and SIGTERM); returns the previous handlers.

    Python only allows handlers in the main thread; elsewhere the defaults stay (and {} is
    returned)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for sig in signals:
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # not allowed here (embedded interpreter)
            pass
    return previous


def restore_handlers(previous: dict[int, Any]) -> None:
    """Put back the handlers `install_stop_handlers` replaced."""
    for sig, old in previous.items():
        signal.signal(sig, old if old is not None else signal.SIG_DFL)
