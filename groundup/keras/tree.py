"""Nested structures (lists, tuples, dicts) of leaves: flatten them and map over them.

A layer call such as `mha(query, value, key=k)` or `Concatenate()([a, b])` is recorded once
with symbolic tensors and replayed with real ones; both walk the call's arguments with these.
Dicts are walked in insertion order, so a structure and its flat list always line up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def flatten(structure: Any) -> list[Any]:
    """The leaves of `structure` in order (a leaf is anything but a list, tuple or dict)."""
    if isinstance(structure, Mapping):
        return [leaf for value in structure.values() for leaf in flatten(value)]
    if isinstance(structure, (list, tuple)):
        return [leaf for value in structure for leaf in flatten(value)]
    return [structure]


def map_structure(fn: Callable[[Any], Any], structure: Any) -> Any:
    """The same structure with `fn(leaf)` in place of each leaf (tuples stay tuples)."""
    if isinstance(structure, Mapping):
        return {key: map_structure(fn, value) for key, value in structure.items()}
    if isinstance(structure, list):
        return [map_structure(fn, value) for value in structure]
    if isinstance(structure, tuple):
        return tuple(map_structure(fn, value) for value in structure)
    return fn(structure)


def pack_as(structure: Any, leaves: list[Any]) -> Any:
    """`structure` with its leaves replaced, in order, by `leaves` (the inverse of flatten)."""
    it = iter(leaves)
    packed = map_structure(lambda _: next(it), structure)
    if next(it, _END) is not _END:
        raise ValueError("pack_as got more leaves than the structure holds")
    return packed


_END = object()
