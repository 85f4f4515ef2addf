"""Which standard-library objects are held out for evaluation: the one rule every builder obeys.

The built-in evaluation tasks (`groundup.evals.builtin_tasks`) ask about standard-library
objects ("What does json.loads do?"). A model must not have trained on them, so every
built-in dataset made from the standard library leaves the held-out objects out: today the
SFT set `stdlib-qa` (`groundup.data.text_builtin`); tomorrow any corpus of the stdlib's
docstrings or source. Such a builder names each object as `object_name` does
(`"<module>.<__qualname__>"`, the module being the one the object is listed under in
`STDLIB_TOPICS`) and drops the object, its docstring and its source when `is_heldout(name)`.

The rule: a SHA-256 hash of a salted name below `HELDOUT_FRACTION` (15%) of the hash range.
It needs no list, no generator and no state, is independent of PYTHONHASHSEED, and keeps an
object's fate when others are added or removed (a new Python version moves only the objects
it changes). Changing `_SALT` or the fraction picks a different held-out set: every model
trained before then would have read some of the new test items.
"""

from __future__ import annotations

import hashlib

HELDOUT_FRACTION = 0.15
_SALT = "groundup/heldout/v1"
_SCALE = 2**64  # the first 8 bytes of the hash, read as an integer, fall below this


def object_name(modname: str, obj: object) -> str | None:
    """`"<module>.<qualname>"` for a documented object, or None when it has no name of its own
    (a property or data descriptor: nothing to ask about, and nothing to hold out)."""
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{modname}.{qualname}" if isinstance(qualname, str) else None


def is_heldout(qualified_name: str) -> bool:
    """True when the object of that name is reserved for evaluation and must not be trained on."""
    digest = hashlib.sha256(f"{_SALT}\n{qualified_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < HELDOUT_FRACTION * _SCALE
