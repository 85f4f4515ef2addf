"""Checkpoint directories on disk: the files one holds, and the run's `checkpoints/` history.

Both checkpoint forms (single-file safetensors in groundup.train.checkpoint, sharded DCP in
groundup.train.sharded_checkpoint) build on this: the file names, state.json, the fsync
helpers that make the temp-dir-then-rename writes crash safe, and the history:
  step-00000500/  one complete checkpoint per save (the newest `keep_last` are kept)
  best/           the best one by the monitored metric
  latest          a text file naming the newest complete step directory, replaced atomically
                  and updated LAST, so it never names a half-written checkpoint
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundup.errors import CheckpointError

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
RNG_FILE = "rng.safetensors"
DCP_DIR = "dcp"
DCP_METADATA = ".metadata"
LATEST_FILE = "latest"
STEP_DIR = re.compile(r"^step-(\d+)$")


# ---------------------------------------------------------------- one checkpoint directory
def is_sharded_checkpoint(path: str | Path) -> bool:
    """A torch.distributed.checkpoint (FSDP2) checkpoint directory."""
    return (Path(path) / DCP_DIR / DCP_METADATA).is_file()


def is_complete(path: Path) -> bool:
    """A checkpoint directory whose weights and state both made it to disk."""
    weights = (path / MODEL_FILE).is_file() or is_sharded_checkpoint(path)
    return (path / STATE_FILE).is_file() and weights


def read_state(path: Path) -> dict[str, Any]:
    """The state.json of checkpoint directory `path`."""
    try:
        return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{path / STATE_FILE} is corrupted; use an earlier checkpoint"
        ) from None


def write_state(path: Path, payload: dict[str, Any]) -> None:
    """Write state.json into directory `path` (tensors and numpy values as plain numbers)."""
    (path / STATE_FILE).write_text(json.dumps(payload, default=_json_default), encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in state.json")


def fsync_dir(directory: Path) -> None:
    """fsync every file in `directory`, then the directory entry itself."""
    for child in directory.iterdir():
        if child.is_file():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir_only(directory)


def fsync_dir_only(directory: Path) -> None:
    """fsync the directory entry (a rename in it is durable after this)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the run's history
def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def step_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete `step-N` checkpoints in `directory`, oldest first (temp dirs never match)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = STEP_DIR.match(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def find_latest(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in a `checkpoints/` folder, or None.

    Follows the `latest` pointer; if it is missing or names something incomplete (a crash
    between the rename and the pointer update, or a hand-deleted folder), falls back to the
    newest complete `step-N` directory.
    """
    directory = Path(directory)
    pointer = directory / LATEST_FILE
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if name and "/" not in name and is_complete(directory / name):
            candidates = step_checkpoints(directory)
            # a newer complete step dir than the pointer can exist if the pointer update was lost
            if not candidates or STEP_DIR.match(name) is None:
                return directory / name
            newest = candidates[-1][1]
            pointed = int(STEP_DIR.match(name).group(1))
            return newest if candidates[-1][0] > pointed else directory / name
    candidates = step_checkpoints(directory)
    return candidates[-1][1] if candidates else None


def write_latest(directory: str | Path, name: str) -> None:
    """Point `latest` at `name` atomically (temp file, fsync, os.replace)."""
    directory = Path(directory)
    tmp = directory / f".{LATEST_FILE}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / LATEST_FILE)
    fsync_dir_only(directory)


def prune_checkpoints(directory: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` step dirs (never `best/` or what `latest` names),
    and temp dirs left by crashed saves of other processes."""
    directory = Path(directory)
    keep = max(int(keep_last), 1)
    latest = find_latest(directory)
    removed = []
    for _, path in step_checkpoints(directory)[:-keep]:
        if latest is not None and path.resolve() == latest.resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    for child in directory.iterdir():  # leftovers of a killed save (another pid's temp dir)
        leftover = re.match(r"^\.step-\d+\.(tmp|old)-(\d+)$", child.name)
        if leftover and child.is_dir() and int(leftover.group(2)) != os.getpid():
            shutil.rmtree(child, ignore_errors=True)
    return removed


def swap_in(tmp: Path, path: Path) -> None:
    """Put the finished folder `tmp` at `path`, replacing an older one, by renames only; the
    rename is made durable and the old copy deleted last, so a crash leaves one whole folder
    (plus a `.NAME.old-PID` leftover that prune_checkpoints clears)."""
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    fsync_dir_only(path.parent)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
