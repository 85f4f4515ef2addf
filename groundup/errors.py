"""One exception hierarchy for everything a user can get wrong.

The CLI turns any `GroundupError` into a one-line message and exit code 2; anything
else is a bug in groundup and keeps its traceback (exit code 1). Each class also
derives from the builtin a Python user would expect (`ValueError`, `FileNotFoundError`)
so ordinary `except ValueError` code keeps working.
"""

from __future__ import annotations


class GroundupError(Exception):
    """Base class: bad input, with a message that names the problem and the fix."""


class ConfigError(GroundupError, ValueError):
    """A config key, value, type or name (loss, optimizer, layer, ...) is wrong."""


class DataError(GroundupError, ValueError):
    """Input data is malformed: NaN, length mismatch, missing column, empty corpus."""


class ShapeError(GroundupError, ValueError):
    """A tensor does not have the shape a model or layer needs."""


class MissingFileError(GroundupError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class CheckpointError(GroundupError):
    """A checkpoint is missing, incomplete, corrupted or does not fit the model."""


class TokenizerError(GroundupError, ValueError):
    """A tokenizer is missing or does not fit the model (vocabulary size, special tokens)."""


class DependencyError(GroundupError, ImportError):
    """An optional dependency is needed for this feature and is not installed."""


class TrainingError(GroundupError):
    """Training cannot go on: a non-finite loss or gradient norm (see `Trainer(nan_policy=...)`)."""


class TrainingInterrupted(GroundupError):
    """SIGINT/SIGTERM stopped training at a step boundary; a checkpoint was saved (if a run_dir).

    The CLI turns it into one line and exit code 130 (SIGINT) or 143 (SIGTERM).
    """

    def __init__(self, step: int, checkpoint: object, signum: int) -> None:
        self.step = step
        self.checkpoint = checkpoint  # a Path, or None without a run directory
        self.signum = signum
        self.exit_code = 128 + int(signum)
        where = f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint (no run_dir)"
        super().__init__(f"interrupted at step {step}; {where}")
