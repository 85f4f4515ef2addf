"""Name lookup for the plain-dict registries (LOSSES, OPTIMIZERS, LAYERS, ...)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

from groundup.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def lookup(registry: Mapping[str, T], name: str, kind: str) -> T:
    """Find `name` in `registry` (case-insensitive); unknown names list the valid ones."""
    if not isinstance(name, str):
        raise ConfigError(f"{kind} must be given by name (a string), got {type(name).__name__}")
    key = name.lower()
    if key in registry:
        return registry[key]
    valid = ", ".join(sorted(registry))
    raise ConfigError(f"unknown {kind} '{name}'{did_you_mean(key, registry)}; valid names: {valid}")
