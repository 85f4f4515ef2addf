"""What every model config dataclass (GPTConfig, BertConfig) builds itself from.

`ModelConfig` gives each family the same `from_name` / `from_dict` / `to_dict`, so presets, YAML
and checkpoints go through one path with one set of error messages. A family sets three class
attributes: its preset table and the two words that name it in errors.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

from groundup.errors import ConfigError
from groundup.registry import lookup

C = TypeVar("C", bound="ModelConfig")


class ModelConfig:
    """Mixin for a model config dataclass. Plain class attributes here, so not dataclass fields."""

    presets: ClassVar[dict[str, dict[str, Any]]]  # preset name -> dict of fields
    preset_kind: ClassVar[str]  # names a preset in unknown-name errors ("model preset")
    config_kind: ClassVar[str]  # names the mapping in unknown-key errors ("GPT config")

    @classmethod
    def from_name(cls: type[C], name: str, **overrides: Any) -> C:
        """A preset by name with some fields overridden, e.g. `from_name("gpt2-tiny", n_layer=6)`."""
        preset = lookup(cls.presets, name, cls.preset_kind)
        return cls.from_dict({**preset, **overrides})

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Build from a plain dict (YAML, checkpoint): unknown keys and wrong types are errors."""
        from groundup.config import from_dict  # late: keeps yaml out of a model import

        return from_dict(cls, d, kind=cls.config_kind)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses


def check_positive_int(name: str, value: Any) -> None:
    """ConfigError unless value is an int > 0 (bools are ints to Python, but not sizes)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
