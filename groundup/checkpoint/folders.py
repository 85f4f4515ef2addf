"""Checkpoint directories on disk: the files one holds, and the run's `checkpoints/` history.

Both checkpoint forms (single-file safetensors in groundup.checkpoint, sharded DCP in
groundup.checkpoint.sharded) build on this: the file names, state.json, the fsync
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
import signal
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundup.errors import CheckpointError
from groundup.files import fsync_dir_only, write_text_atomic

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
RNG_FILE = "rng.safetensors"
DCP_DIR = "dcp"
DCP_METADATA = ".metadata"
LATEST_FILE = "latest"
STEP_DIR = re.compile(r"^step-(\d+)$")


_passes: dict[str, int] = {}


def kill_point(name: str) -> None:
    """Test hook: `GROUNDUP_TEST_KILL=<name>:<n>` SIGKILLs this process the n-th time it gets
    to point `name` of a checkpoint save ("save-mid": weights written into the temporary
    folder; "save-done": the folder in place; "latest-done": the pointer moved; "prune-mid":
    an old folder renamed but not yet deleted), so tests can kill a run exactly there."""
    wanted = os.environ.get("GROUNDUP_TEST_KILL")
    if not wanted or not wanted.startswith(name + ":"):
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(wanted.split(":")[1]):
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- one checkpoint directory
def is_sharded_checkpoint(path: str | Path) -> bool:
    """A torch.distributed.checkpoint (FSDP2) checkpoint directory."""
    return (Path(path) / DCP_DIR / DCP_METADATA).is_file()


def is_complete(path: Path) -> bool:
    """A checkpoint directory whose weights and state both made it to disk."""
    weights = (path / MODEL_FILE).is_file() or is_sharded_checkpoint(path)
    return (path / STATE_FILE).is_file() and weights


def state_reads(path: Path) -> bool:
    """True when `path`'s state.json parses as a JSON object (not cut short or garbled)."""
    try:
        return isinstance(json.loads((path / STATE_FILE).read_text(encoding="utf-8")), dict)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False


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
    newest complete `step-N` directory. A checkpoint whose state.json does not read (a disk
    error, a hand edit) is passed over with a warning for the one before it.
    """
    directory = Path(directory)
    candidates = step_checkpoints(directory)
    pointer = directory / LATEST_FILE
    name = ""
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
    if name and "/" not in name and STEP_DIR.match(name) is None and is_complete(directory / name):
        candidates.append((-1, directory / name))  # a pointer to a non-step folder: trusted last
    # the newest complete step dir wins: one newer than the pointer means its update was lost
    for _, path in sorted(candidates, key=lambda c: c[0], reverse=True):
        if state_reads(path):
            return path
        warnings.warn(
            f"{path / STATE_FILE} is corrupted; using the checkpoint before it",
            RuntimeWarning,
            stacklevel=2,
        )
    return None


def write_latest(directory: str | Path, name: str) -> None:
    """Point `latest` at `name` atomically (temp file, fsync, os.replace)."""
    write_text_atomic(Path(directory) / LATEST_FILE, name + "\n", durable=True)
    kill_point("latest-done")


def prune_checkpoints(directory: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` step dirs (never `best/` or what `latest` names),
    and what killed saves of other processes left. A folder is renamed out of its step name
    before it is deleted, so a kill mid-delete never leaves a half folder under a step name."""
    directory = Path(directory)
    keep = max(int(keep_last), 1)
    latest = find_latest(directory)
    removed = []
    for _, path in step_checkpoints(directory)[:-keep]:
        if latest is not None and path.resolve() == latest.resolve():
            continue
        doomed = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(doomed)
        kill_point("prune-mid")
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(path)
    clean_debris(directory)
    return removed


# `.NAME.tmp-PID` / `.NAME.old-PID`: a save's temporary folder or file, or a replaced copy
DEBRIS = re.compile(r"^\.[^/]+\.(tmp|old)-(\d+)$")


def clean_debris(directory: str | Path) -> list[Path]:
    """Remove the temporary folders and files that killed saves left in `directory` (those
    of other processes: this one's may be in use). Returns what was removed."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for child in directory.iterdir():
        match = DEBRIS.match(child.name)
        # a step folder without its files can only be what an older delete left half done
        half = STEP_DIR.match(child.name) is not None and child.is_dir() and not is_complete(child)
        if not half and (match is None or int(match.group(2)) == os.getpid()):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
        removed.append(child)
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
    kill_point("save-done")
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
