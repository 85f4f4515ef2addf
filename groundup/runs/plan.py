"""Deciding what a command does with its run folder, before anything is written.

`plan_run` reads the folder and the config and answers one of: start a new run, start the same
run over, replace another run (`--overwrite`), or resume from a checkpoint (`--resume`, or
`resume: auto` with a checkpoint there). It touches nothing, so every mistake (a different run
in the folder, nothing to resume, a changed config) is reported with the folder as it was.
The config is compared here, and only here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from groundup.checkpoint import find_latest
from groundup.checkpoint.folders import read_state
from groundup.config import config_diff, to_dict
from groundup.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"

# How to start and where to run, not what to train: these may change between a run and its
# resume (the folder moved, another number of GPUs, DDP instead of FSDP2).
NOT_COMPARED = ("run_dir", "resume", "distributed")
# Section keys that say where a run reports or what it checks, not what it computes.
NOT_COMPARED_KEYS = (
    "train.loggers",
    "train.check_memory",
    "train.eval_tasks",  # greedy scoring in eval mode: the training itself is the same
    "train.eval_tasks_limit",
)
# What a resume may change: the length of the run (extending a finished run is the one change
# a user needs; the schedule then spans the new length).
MAY_GROW = ("train.max_steps", "train.epochs")

Mode = Literal["new", "restart", "replace", "resume"]


@dataclass
class RunPlan:
    """What `Run.begin` will do with `path`; made by `plan_run`, which checked it all."""

    path: Path
    mode: Mode
    config: dict[str, Any]  # the resolved config, as config.yaml will hold it
    checkpoint: Path | None = None  # resume: the newest complete checkpoint
    step: int = 0  # resume: the step that checkpoint was saved at
    notes: list[str] = field(default_factory=list)  # said on the console when the run begins


def comparable(config: Any, resuming: bool = False) -> Any:
    """The part of a config dict that tells runs apart (for a resume: that must match)."""
    if not isinstance(config, dict):
        return config
    out = {k: v for k, v in config.items() if k not in NOT_COMPARED}
    for dotted in (*NOT_COMPARED_KEYS, *(MAY_GROW if resuming else ())):
        section, key = dotted.split(".")
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def read_saved_config(path: Path) -> dict[str, Any] | None:
    """The config.yaml a run folder holds (None: none, or unreadable)."""
    saved = path / CONFIG_FILE
    if not saved.is_file():
        return None
    try:
        data = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return None
    return data if isinstance(data, dict) else None


def plan_run(
    path: str | Path, config: Any, *, overwrite: bool = False, resume: bool = False
) -> RunPlan:
    """Check what starting `config` in `path` means, touching nothing (see the module doc)."""
    path = Path(path)
    resolved = to_dict(config) if not isinstance(config, dict) else dict(config)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run_dir {path} is a file, not a folder; choose another run_dir")
    latest = find_latest(path / CHECKPOINTS) if path.is_dir() else None
    # --overwrite wins over `resume: auto` (the user asked to replace the run)
    auto = not overwrite and resolved.get("resume") == "auto" and latest is not None
    if resume or auto:
        if overwrite and resume:
            raise ConfigError("--resume continues a run and --overwrite replaces it; give one")
        return _resume_plan(path, resolved, latest)
    saved = read_saved_config(path)
    if saved is not None and not overwrite and comparable(saved) != comparable(resolved):
        diff = config_diff(comparable(saved), comparable(resolved))
        raise ConfigError(
            f"{path} already holds a different run ({_shown(diff)} differ); set run_dir to a "
            "new folder, pass --resume to continue it, or --overwrite to replace it"
        )
    if overwrite and path.is_dir() and any(path.iterdir()):
        return RunPlan(path, "replace", resolved)
    notes = _left_behind(path)
    if saved is not None or _holds_a_run(path):
        # the same config again, or a run whose config.yaml is gone: start over, with the old
        # checkpoints moved aside (never mixed with the new run's, never lost)
        return RunPlan(path, "restart", resolved, notes=notes)
    return RunPlan(path, "new", resolved, notes=notes)


def _holds_a_run(path: Path) -> bool:
    """Checkpoints or a metrics log without a readable config.yaml (a library Trainer's
    run_dir, or a damaged config): still a run, never to be mixed with a new one."""
    checkpoints = path / CHECKPOINTS
    has_checkpoints = checkpoints.is_dir() and any(checkpoints.iterdir())
    return has_checkpoints or (path / "metrics.jsonl").is_file()


def _left_behind(path: Path) -> list[str]:
    """A run an `--overwrite` moved aside and then never got back (the process was killed)."""
    return [
        f"note: {p} holds a run that an interrupted --overwrite moved aside; move it back to "
        f"{path} or delete it"
        for p in sorted(path.parent.glob(f".{path.name}.replaced-*"))
        if p.is_dir()
    ]


def _resume_plan(path: Path, resolved: dict[str, Any], latest: Path | None) -> RunPlan:
    folder = path / CHECKPOINTS
    if latest is None:
        raise ConfigError(
            f"nothing to resume: {folder} holds no complete checkpoint; drop --resume to start "
            "the run"
        )
    state = read_state(latest)
    saved = read_saved_config(path)
    if saved is None:
        saved = state.get("config")
    if saved is not None:
        diff = config_diff(comparable(saved, True), comparable(resolved, True))
        if diff:
            raise CheckpointError(
                f"--resume needs the config the run started with ({path / CONFIG_FILE}); these "
                f"fields differ: {_shown(diff)}; undo those changes, or start a new run_dir "
                f"(only {' and '.join(MAY_GROW)} may change on resume)"
            )
    step, epoch = int(state.get("step", 0)), int(state.get("epoch", 0))
    train = resolved.get("train") or {}
    max_steps, epochs = train.get("max_steps"), train.get("epochs")
    if isinstance(max_steps, int) and max_steps < step:
        raise ConfigError(
            f"train.max_steps {max_steps} is below the step the run already reached ({step}); "
            f"give train.max_steps >= {step} to go on"
        )
    if isinstance(epochs, int) and epochs < epoch:
        raise ConfigError(
            f"train.epochs {epochs} is below the epochs the run already finished ({epoch}); "
            f"give train.epochs >= {epoch} to go on"
        )
    return RunPlan(path, "resume", resolved, checkpoint=latest, step=step)


def _shown(diff: list[str]) -> str:
    return ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
