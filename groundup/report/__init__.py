"""Reading a finished (or killed) run folder back: what went wrong in training, and why."""

from groundup.report.diagnosis import (
    Finding,
    diagnose,
    diagnose_run,
    format_findings,
    read_records,
)

__all__ = ["Finding", "diagnose", "diagnose_run", "format_findings", "read_records"]
