"""The key and shape check every weight converter runs before it loads a state dict.

One place, so GPT and BERT imports fail with the same message layout: what is missing, what is
unexpected, what is misshapen, then which config fields to look at.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from groundup.errors import CheckpointError


def few(keys: Iterable[str], n: int = 5) -> str:
    """The first n keys in sorted order, then "(+k more)": error lines stay one line long."""
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_fits(
    sd: Mapping[str, Tensor], expected: Mapping[str, Any], what: str, family: str, fields: str
) -> None:
    """CheckpointError unless sd has exactly the keys of expected, with the same shapes.

    expected maps key -> tensor or shape. `what` names sd in the message ("GPT state dict"),
    `family` the config ("GPT"), `fields` the config fields to compare with the checkpoint.
    """
    shapes = {k: tuple(getattr(v, "shape", v)) for k, v in expected.items()}
    missing, unexpected = set(shapes) - set(sd), set(sd) - set(shapes)
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {shapes[k]}"
        for k in sorted(set(sd) & set(shapes))
        if tuple(sd[k].shape) != shapes[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {few(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches (got vs expected): {few(wrong, 3)}")
    if problems:
        raise CheckpointError(
            f"{what} does not fit the {family} config ({'; '.join(problems)}); check that the "
            f"config ({fields}) matches the checkpoint"
        )
