"""One directory per run: the resolved config, metrics.jsonl, checkpoints, model, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from groundup.config import save_config, to_dict
from groundup.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.yaml"


def prepare_run_dir(path: str | Path, config: Any, overwrite: bool = False) -> Path:
    """Create `path` for a new run and save its resolved config.

    A directory that already holds a run with a different config is never reused silently:
    the user chooses another `run_dir` or passes `--overwrite`. The same config starts over
    (its old metrics are replaced, its old checkpoints move to `checkpoints.previous`), so
    re-running a command is harmless.
    """
    path = Path(path)
    saved = path / CONFIG_FILE
    if saved.is_file() and not overwrite:
        try:
            previous = yaml.safe_load(saved.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            previous = None
        if _comparable(previous) != _comparable(to_dict(config)):
            raise ConfigError(
                f"{path} already holds a different run; set run_dir to a new folder "
                "or pass --overwrite to replace it"
            )
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run_dir {path} is a file, not a folder; choose another run_dir")
    if overwrite and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    checkpoints = path / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        # Starting the same run over: its old checkpoints must not be taken for this run's on a
        # later --resume, and must not be lost either, so they move aside (one generation).
        previous = path / "checkpoints.previous"
        if previous.exists():
            shutil.rmtree(previous)
        checkpoints.rename(previous)
    metrics = path / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()
    save_config(config, saved)
    return path


def checkpoint_step(checkpoint: Path) -> int:
    """The step a checkpoint directory was saved at (from its state.json)."""
    from groundup.train.checkpoint import STATE_FILE

    try:
        return int(json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))["step"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        raise CheckpointError(
            f"{checkpoint / STATE_FILE} is corrupted; delete {checkpoint} to start over"
        ) from None


def rewind_metrics(metrics_file: Path, step: int) -> float | None:
    """Drop the records an interrupted run wrote after its last checkpoint (`step`), which
    the resumed run writes again; return the best val_loss kept (what best/ holds)."""
    if not metrics_file.is_file():
        return None
    kept = []
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(record)
    metrics_file.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    losses = [r["val_loss"] for r in kept if r.get("event") == "eval" and "val_loss" in r]
    return min(losses) if losses else None


def resume_point(path: str | Path, config: Any) -> tuple[Path, float | None]:
    """For `--resume`: the newest complete checkpoint of the run in `path` and the best
    val_loss logged up to it; refuses a changed config, naming the differing fields."""
    from groundup.train.checkpoint import check_config, find_latest

    path = Path(path)
    folder = path / "checkpoints"
    latest = find_latest(folder)
    if latest is None:
        raise ConfigError(
            f"nothing to resume: {folder} holds no complete checkpoint; drop --resume"
        )
    saved = path / CONFIG_FILE
    try:
        previous = yaml.safe_load(saved.read_text(encoding="utf-8")) if saved.is_file() else None
    except yaml.YAMLError:
        previous = {}
    check_config(_comparable(previous), _comparable(to_dict(config)), saved)
    return latest, rewind_metrics(path / "metrics.jsonl", checkpoint_step(latest))


def wants_resume(path: str | Path, config: Any, resume: bool) -> bool:
    """`--resume`, or `resume: auto` in the config with a complete checkpoint to resume from."""
    from groundup.train.checkpoint import find_latest

    if resume:
        return True
    auto = getattr(config, "resume", "never") == "auto"
    return auto and find_latest(Path(path) / "checkpoints") is not None


def checkpoint_config(config: Any) -> dict[str, Any]:
    """The config stored in each checkpoint's state.json (and compared on resume)."""
    return _comparable(to_dict(config))


# How to start and where to run, not what to train: these may change between a run and its
# resume (another number of GPUs, DDP instead of FSDP2, activation checkpointing on or off).
NOT_COMPARED = ("resume", "distributed")


def _comparable(config: Any) -> Any:
    if isinstance(config, dict):
        return {k: v for k, v in config.items() if k not in NOT_COMPARED}
    return config
