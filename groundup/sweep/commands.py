"""Which command a config is for, and running that command's job with overrides: what
`groundup lr-find` and `groundup sweep` share, since both run the unchanged jobs.

A config names no command; its top-level keys do: only `groundup train` has `layers`, only
`groundup pretrain` a `tokenizer`, only `groundup finetune` a `base`. When the keys fit more
than one (a config of only `run_dir` and `optim`, say) the caller must name it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from groundup.config import apply_overrides, from_dict, load_yaml
from groundup.config_reference import config_class
from groundup.errors import ConfigError
from groundup.registry import did_you_mean

# command -> (module, job function); each job takes (config_path, overrides, overwrite=...,
# resume=..., verbose=...)
JOBS: dict[str, tuple[str, str]] = {
    "train": ("groundup.jobs.train_tabular", "run_train"),
    "pretrain": ("groundup.jobs.pretrain", "run_pretrain"),
    "finetune": ("groundup.jobs.finetune", "run_finetune"),
}


def config_data(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML mapping of `path` with the dotted overrides applied (not yet typed)."""
    return apply_overrides(load_yaml(path), list(overrides))


def detect_command(data: dict[str, Any], where: str = "CONFIG") -> str:
    """train, pretrain or finetune, from the config's top-level keys (see the module doc)."""
    keys = set(data)
    fields = {c: _top_level_fields(c) for c in JOBS}
    fitting = [c for c in JOBS if keys <= fields[c]]
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        every = set().union(*fields.values())
        unknown = sorted(keys - every)
        if unknown:
            raise ConfigError(
                f"{where}: unknown top-level key '{unknown[0]}'{did_you_mean(unknown[0], every)}"
                f"; valid keys: {', '.join(sorted(every))}"
            )
        raise ConfigError(
            f"{where} mixes keys of several commands ({', '.join(sorted(keys))}); pass "
            "--command train|pretrain|finetune to see which key is wrong"
        )
    # several fit: the one whose own keys (no other candidate has them) appear
    own = {}
    for c in fitting:
        others = set().union(*(fields[o] for o in fitting if o != c))
        own[c] = len(keys & (fields[c] - others))
    best = max(own.values())
    winners = [c for c in fitting if own[c] == best]
    if best > 0 and len(winners) == 1:
        return winners[0]
    raise ConfigError(
        f"cannot tell which command {where} is for (its keys fit {', '.join(fitting)}); pass "
        f"--command {'|'.join(fitting)}"
    )


def check_command(command: str) -> str:
    if command not in JOBS:
        raise ConfigError(
            f"unknown command '{command}'{did_you_mean(command, JOBS)}; give one of "
            f"{', '.join(JOBS)}"
        )
    return command


def load_command_config(command: str, data: dict[str, Any]) -> Any:
    """The command's typed config from a config mapping (every key and type checked)."""
    return from_dict(config_class(check_command(command)), data)


def run_job(
    command: str,
    config_path: str | Path,
    overrides: Sequence[str],
    *,
    overwrite: bool = False,
    resume: bool = False,
    verbose: int = 1,
) -> dict[str, Any]:
    """Run the command's job function, as `groundup COMMAND CONFIG OVERRIDES` would."""
    module, name = JOBS[check_command(command)]
    job = getattr(importlib.import_module(module), name)
    return job(config_path, list(overrides), overwrite=overwrite, resume=resume, verbose=verbose)


def override(key: str, value: Any) -> str:
    """A dotted override that gives `value` back exactly: YAML in flow style, so strings
    like `yes` stay quoted, floats keep a dot (`1.0e-05`, which YAML 1.1 reads as a number)
    and lists and mappings stay whole on one line."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf)
    text = text.removesuffix("\n...\n").strip()  # a scalar document's end marker
    return f"{key}={text}"


def _top_level_fields(command: str) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class(command)) if f.init}


def run_callbacks_overrides(command: str, cfg: Any) -> list[str]:
    """Overrides that make the job call `Run.callbacks()`, where the sweep's and lr-find's
    callbacks are added (groundup.runs.hooks). Trap: `groundup train` asks for the run's
    callbacks only when it checkpoints: with save_best and a validation split, or with
    train.checkpoint_every; otherwise the added callbacks would never run."""
    if command != "train" or cfg.train.checkpoint_every:
        return []
    if cfg.data.val_size:
        return [] if cfg.save_best else ["save_best=true"]
    return [f"train.checkpoint_every={NEVER}"]


NEVER = 10**12  # a checkpoint cadence no run reaches
