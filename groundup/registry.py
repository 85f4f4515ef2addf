"""Name lookup for the plain-dict registries (LOSSES, OPTIMIZERS, LAYERS, ...)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

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


def construct(cls: type[T], kwargs: Mapping[str, Any], what: str, noun: str = "argument") -> T:
    """`cls(**kwargs)`, with unknown keyword names reported as a ConfigError naming them, the
    closest valid one and every valid one ("unknown option 'lrr' for optimizer 'adam' ...")."""
    params = inspect.signature(cls).parameters.values()
    valid = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(valid), key=str)  # YAML keys may be ints too
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise ConfigError(
            f"unknown {noun}{plural} {', '.join(repr(k) for k in unknown)} for {what}"
            f"{did_you_mean(unknown[0], valid)}; valid {noun}s: {', '.join(valid) or 'none'}"
        )
    missing = [p.name for p in params if p.default is p.empty and p.name in valid]
    missing = [k for k in missing if k not in kwargs]
    if missing:
        raise ConfigError(f"{what} needs the {noun} '{missing[0]}' in its config")
    return cls(**kwargs)
