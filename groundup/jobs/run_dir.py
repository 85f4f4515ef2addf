"""One directory per run: the resolved config, metrics.jsonl, checkpoints, model, report."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from groundup.config import save_config, to_dict
from groundup.errors import ConfigError

CONFIG_FILE = "config.yaml"


def prepare_run_dir(path: str | Path, config: Any, overwrite: bool = False) -> Path:
    """Create `path` for a new run and save its resolved config.

    A directory that already holds a run with a different config is never reused silently:
    the user chooses another `run_dir` or passes `--overwrite`. The same config starts over
    (its old metrics are replaced), so re-running a command is harmless.
    """
    path = Path(path)
    saved = path / CONFIG_FILE
    if saved.is_file() and not overwrite:
        try:
            previous = yaml.safe_load(saved.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            previous = None
        if previous != to_dict(config):
            raise ConfigError(
                f"{path} already holds a different run; set run_dir to a new folder "
                "or pass --overwrite to replace it"
            )
    if overwrite and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    metrics = path / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()
    save_config(config, saved)
    return path
