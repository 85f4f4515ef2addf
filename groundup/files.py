"""Files written whole or not at all: a temporary sibling, then a rename over the target (a
kill mid-write leaves the old file, never half a new one). `durable` also fsyncs the data and
the folder entry, for what must survive a power loss (the checkpoint pointer)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str, durable: bool = False) -> Path:
    """Replace `path` by `text` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir_only(path.parent)
    return path


def fsync_dir_only(directory: str | Path) -> None:
    """fsync the directory entry (a rename in it is durable after this)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
