"""The YAML configs that ship with groundup (package data; `configs/` at the repository root
links here, so `groundup train configs/digits-mlp.yaml` works from a checkout).

Code finds them through `shipped_config(name)`, which works the same from a checkout, an
editable install and a wheel.
"""

from __future__ import annotations

from pathlib import Path

from groundup.errors import MissingFileError
from groundup.registry import did_you_mean

_HERE = Path(__file__).resolve().parent

# every shipped config, by file name; which command reads it follows from the prefix
# (pretrain-*: groundup pretrain, finetune-*: groundup finetune, sweep-*: a search space for
# groundup sweep --space, the rest: groundup train)
SHIPPED: tuple[str, ...] = tuple(sorted(p.name for p in _HERE.glob("*.yaml")))


def shipped_config(name: str) -> Path:
    """The path of a shipped config, by file name (`digits-mlp.yaml`; the suffix may be left off)."""
    file = name if name.endswith(".yaml") else f"{name}.yaml"
    if file not in SHIPPED:
        raise MissingFileError(
            f"no shipped config named {name!r}{did_you_mean(file, SHIPPED)}; "
            f"shipped: {', '.join(SHIPPED)}"
        )
    return _HERE / file
