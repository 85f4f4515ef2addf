"""`groundup report RUN [RUN ...] [--out FILE.html]`: a run's report, or several runs compared.

One run: its report goes to `<RUN>/report.html` (the file the run itself writes when it ends,
brought up to date). Several: a comparison (headline table, config differences, overlaid
curves) goes to `compare-report.html` in the current folder. `--out` names any other file.
"""

from __future__ import annotations

from pathlib import Path

from groundup.errors import ConfigError

COMPARE_FILE = "compare-report.html"


def run_report(runs: list[str], out: str | None = None, verbose: int = 1) -> Path:
    """Write the report of `runs` and return its path."""
    from groundup.report.build import REPORT_FILE, write_report

    if not runs:
        raise ConfigError("give at least one run folder: groundup report RUN [RUN ...]")
    paths = [Path(run) for run in runs]
    seen: set[Path] = set()
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            raise ConfigError(f"{path} is given twice; name each run once")
        seen.add(resolved)
    if out is not None:
        target = Path(out)
    elif len(paths) == 1:
        target = paths[0] / REPORT_FILE
    else:
        target = Path(COMPARE_FILE)
    written = write_report(paths, target)
    if verbose:
        what = "report" if len(paths) == 1 else f"comparison of {len(paths)} runs"
        print(f"{what}: {written} (open it in a browser)", flush=True)
    return written
