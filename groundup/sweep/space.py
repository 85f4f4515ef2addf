"""The search space of a sweep: a YAML file of dotted config keys, each with one distribution.

    optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}
    optim.weight_decay: {uniform: [0.0, 0.2]}
    model.n_layer: {choice: [2, 4, 6]}
    train.batch_size: {int: [16, 64]}            # also log_int: [8, 256]
    layers: {choice: [[...], [...]]}             # a whole value may be a choice, too

Everything is checked before the first trial: each key must exist in the command's resolved
config (a typo gets "did you mean"), each range must make sense (low < high, a log range
above 0, integers for int ranges, a non-empty choice without repeats), and the config must
still load with every extreme of every range (a float range on an integer key fails here,
not in trial 7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from groundup.config import apply_overrides, load_yaml, to_dict
from groundup.errors import ConfigError
from groundup.registry import did_you_mean
from groundup.sweep.commands import load_command_config, override

KINDS = ("uniform", "log_uniform", "int", "log_int", "choice")
# keys the sweep sets itself, or that say how to start rather than what to train
NOT_SEARCHABLE = ("run_dir", "resume")
SCALARS = (bool, int, float, str, type(None))  # what Optuna stores as a categorical value


@dataclass(frozen=True)
class Param:
    """One searched key: its distribution and range."""

    key: str  # dotted: optim.lr
    kind: str  # one of KINDS
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    def extremes(self) -> list[Any]:
        """Values that stand for every value a trial may take: each choice, or the range's
        ends (and a float inside a float range, so an integer key refuses it)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind in ("uniform", "log_uniform"):
            return [self.low, float(self.low) + (self.high - self.low) * 0.371, self.high]
        return [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        """This key's value for an Optuna trial."""
        if self.kind in ("uniform", "log_uniform"):
            log = self.kind == "log_uniform"
            return trial.suggest_float(self.key, float(self.low), float(self.high), log=log)
        if self.kind in ("int", "log_int"):
            log = self.kind == "log_int"
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=log)
        if all(isinstance(c, SCALARS) for c in self.choices):
            return trial.suggest_categorical(self.key, list(self.choices))
        # lists or mappings (a layer stack): Optuna stores the index of the choice
        return self.choices[trial.suggest_categorical(self.key, list(range(len(self.choices))))]

    def describe(self) -> dict[str, Any]:
        """As the space file wrote it (stored in the sweep folder, compared on a rerun)."""
        value = list(self.choices) if self.kind == "choice" else [self.low, self.high]
        return {self.kind: value}


def load_space(path: str | Path, config: dict[str, Any], command: str) -> list[Param]:
    """The parameters of the space file at `path`, checked against `config` (the command's
    config mapping, overrides applied); see the module doc."""
    data = load_yaml(path)
    return parse_space(data, config, command, where=str(path))


def parse_space(
    data: dict[str, Any], config: dict[str, Any], command: str, where: str = "the space"
) -> list[Param]:
    """`load_space` for a mapping already read."""
    if not data:
        raise ConfigError(
            f"{where} names no key to search; add lines like 'optim.lr: {{log_uniform: "
            "[1.0e-4, 1.0e-2]}'"
        )
    resolved = to_dict(load_command_config(command, config))
    known = flatten(resolved)
    params = []
    for key, spec in data.items():
        key = str(key)
        _check_key(key, spec, known, where)
        param = _parse_param(key, spec, where)
        _check_loads(param, config, command, where)
        params.append(param)
    return params


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every key of a nested config mapping, sections included
    (`optim` and `optim.lr`); lists are values (dotted overrides cannot index them)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        out[dotted] = value
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
    return out


def _check_key(key: str, spec: Any, known: dict[str, Any], where: str) -> None:
    if key.split(".")[0] in NOT_SEARCHABLE:
        raise ConfigError(
            f"{where}: '{_short(key)}' cannot be searched (the sweep sets run_dir and resume "
            "itself); remove it"
        )
    if key in known:
        whole = isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in KINDS
        if isinstance(known[key], dict) and not whole:  # a whole section may be a choice
            raise ConfigError(
                f"{where}: '{key}' is a section; name its keys with dots instead, e.g. "
                f"'{key}.{next(iter(known[key]), 'name')}: {{choice: [...]}}'"
            )
        return
    raise ConfigError(
        f"{where}: '{_short(key)}' is not a key of the config{did_you_mean(key, known)}; give "
        "a dotted key the config has (a key under model: must be written in the config first)"
    )


def _parse_param(key: str, spec: Any, where: str) -> Param:
    example = f"'{key}: {{log_uniform: [1.0e-4, 1.0e-2]}}' or '{key}: {{choice: [a, b]}}'"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: '{key}' needs one distribution, e.g. {example}")
    kind, value = next(iter(spec.items()))
    kind = str(kind)
    if kind not in KINDS:
        raise ConfigError(
            f"{where}: '{key}' has unknown distribution '{_short(kind)}'"
            f"{did_you_mean(kind, KINDS)}; valid: {', '.join(KINDS)}"
        )
    if kind == "choice":
        return _parse_choice(key, value, where)
    if not isinstance(value, list) or len(value) != 2:
        raise ConfigError(f"{where}: '{key}: {{{kind}: ...}}' needs [low, high], e.g. {example}")
    low, high = value
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if kind in ("int", "log_int"):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(
                f"{where}: '{key}: {{{kind}: [{low}, {high}]}}' needs two integers; use uniform "
                "for a float range"
            )
    elif not numeric or not all(math.isfinite(v) for v in value):
        raise ConfigError(f"{where}: '{key}: {{{kind}: [{low}, {high}]}}' needs two numbers")
    if not low < high:
        raise ConfigError(
            f"{where}: '{key}: {{{kind}: [{low}, {high}]}}' is empty: low must be below high"
        )
    if kind.startswith("log") and low <= 0:
        raise ConfigError(
            f"{where}: '{key}: {{{kind}: [{low}, {high}]}}' is a log range, which needs "
            f"low > 0; use uniform, or a low such as {high / 1000:g}"
        )
    return Param(key, kind, low, high)


def _parse_choice(key: str, value: Any, where: str) -> Param:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: '{key}: {{choice: ...}}' needs a non-empty list of values")
    seen = []
    for item in value:
        if item in seen:
            raise ConfigError(f"{where}: '{key}' lists the choice {_short(repr(item))} twice")
        seen.append(item)
    return Param(key, "choice", choices=tuple(value))


def _check_loads(param: Param, config: dict[str, Any], command: str, where: str) -> None:
    """The config with each extreme of the range must still be a valid config."""
    for value in param.extremes():
        try:
            load_command_config(command, apply_overrides(config, [override(param.key, value)]))
        except ConfigError as exc:
            raise ConfigError(
                f"{where}: '{param.key}' = {_short(repr(value))} makes an invalid config ({exc}); "
                "change the range"
            ) from None


def _short(text: str, limit: int = 40) -> str:
    """A user's key or value cut to fit a one-line message."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
