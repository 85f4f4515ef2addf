"""The report pages: one run (`report.html` in its folder), or several compared.

    write_report([Path("runs/a")], Path("runs/a/report.html"))    # groundup report runs/a
    write_report([Path("runs/a"), Path("runs/b")], Path("cmp.html"))  # overlaid, compared
    write_run_report(Path("runs/a"))                               # when a run ends

`write_report` is strict: a folder that is not a run, or a run that logged nothing, is a user
error found before anything is drawn. `write_run_report` is what a run calls at its end (and on
an interrupt): it never raises, since a report must not turn a finished run into a failure.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from groundup.errors import ConfigError
from groundup.files import write_text_atomic
from groundup.report import html as h
from groundup.report.compare import config_differences, summarize, unique_names
from groundup.report.figures import Plot, confusion_plot, curve_plots, lr_find_plot, number
from groundup.report.run_data import RunData, load_run

REPORT_FILE = "report.html"
# results.json keys shown elsewhere on the page (samples, the heatmap) or too long for a table
NOT_IN_RESULTS_TABLE = ("sample", "confusion_matrix", "per_class")
MAX_OPEN_DIFFERENCES = 25  # a longer list of differing keys starts folded


def write_report(run_dirs: Sequence[Path], out: Path) -> Path:
    """Write the report of one run, or the comparison of several, to `out` (atomically)."""
    if not run_dirs:
        raise ConfigError("give at least one run folder: groundup report RUN [RUN ...]")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name, e.g. {out / REPORT_FILE}")
    runs = [load_run(path, strict=True) for path in run_dirs]  # every error before any drawing
    text = run_page(runs[0]) if len(runs) == 1 else compare_page(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(out, text)


def write_run_report(run_dir: Path) -> Path | None:
    """`<run_dir>/report.html` from what the run has written so far; None when there is
    nothing to show yet (no record, no results) or the report could not be made (a warning
    says why: the run itself has not failed)."""
    try:
        run = load_run(run_dir, strict=False)
        if not run.records and run.results is None:
            return None
        return write_text_atomic(Path(run_dir) / REPORT_FILE, run_page(run))
    except Exception as exc:  # whatever it is, the run's result stands
        warnings.warn(f"{run_dir}: {REPORT_FILE} not written ({exc})", RuntimeWarning, stacklevel=2)
        return None


# ---------------------------------------------------------------- one run
def run_page(run: RunData) -> str:
    """The report of one run: headline, notes, diagnosis, figures, samples, config."""
    status = (
        "finished" if run.finished else "not finished (no results.json: interrupted or running)"
    )
    return h.page(
        f"Run report: {run.name}",
        f"groundup {run.command} · {run.path} · {status}",
        [
            h.section("Summary", headline(run), "summary"),
            notes_section(run),
            diagnosis_section(run),
            figures_section("Curves", curve_plots([run])),
            figures_section(
                "Classes and learning rate",
                [p for p in (confusion_plot(run), lr_find_plot(run)) if p is not None],
            ),
            samples_section(run),
            h.section("Config", config_block(run, open_=False), "config"),
        ],
    )


def headline(run: RunData) -> str:
    s = summarize(run)
    best = None if s.best_val_loss is None else h.fmt(s.best_val_loss)
    if best is not None and s.best_step is not None:
        best = f"{best} at step {s.best_step:,}"
    pairs: list[tuple[str, Any]] = [
        ("command", f"groundup {run.command}"),
        ("parameters", s.params),
        ("steps", s.steps),
        ("best validation loss", best),
        ("last training loss", s.final_loss),
        ("tokens seen", s.tokens) if s.tokens is not None else ("samples seen", s.samples),
        ("wall time (training)", h.fmt_seconds(s.wall_time_s)),
    ]
    if s.val_bpb is not None:
        pairs.insert(4, ("validation bits per byte", h.fmt(s.val_bpb)))
    body = h.key_values(pairs)
    finals = final_figures(run)
    if finals:
        body += "<h3>Final figures (results.json)</h3>" + h.key_values(finals)
    return body


def final_figures(run: RunData) -> list[tuple[str, Any]]:
    """The scalar entries of results.json (what the run reported when it finished)."""
    return [
        (key, value)
        for key, value in (run.results or {}).items()
        if key not in NOT_IN_RESULTS_TABLE
        and (isinstance(value, (int, float, bool)) or (isinstance(value, str) and len(value) < 200))
    ]


def notes_section(run: RunData) -> str:
    """The run's own messages (early stopping, a rollback after NaN) and what reading left out."""
    rows = [(r.get("step"), str(r.get("text", ""))) for r in run.events("message")]
    body = h.table(["step", "message"], rows) if rows else ""
    body += "".join(f'<p class="note">{h.esc(n)}</p>' for n in run.notes)
    return h.section("Notes", body, "notes") if body else ""


def diagnosis_section(run: RunData) -> str:
    """What groundup.report.diagnosis finds in the records (empty if it is not installed)."""
    try:
        from groundup.report.diagnosis import diagnose
    except ImportError as exc:
        if exc.name != "groundup.report.diagnosis":
            raise  # a broken import inside it is a bug to see, not a missing module
        return ""
    findings = diagnose(run.records, run.config, run.results, lr_find=run.lr_find)
    if not findings:
        body = "<p>Nothing stands out in the records.</p>"
    else:
        body = "".join(finding_html(f) for f in findings)
    return h.section("Diagnosis", body, "diagnosis")


def finding_html(finding: Any) -> str:
    severity = str(getattr(finding, "severity", "info"))
    step = getattr(finding, "step", None)
    keys = getattr(finding, "keys", None) or ()
    parts = [f"<b>{h.esc(getattr(finding, 'title', ''))}</b>"]
    if step is not None:
        parts.append(f" (step {h.esc(step)})")
    for label, attr in (("evidence", "evidence"), ("advice", "advice")):
        text = getattr(finding, attr, "")
        if text:
            parts.append(f"<div>{label}: {h.esc(text)}</div>")
    if keys:
        parts.append(f"<div>config keys: {h.esc(', '.join(str(k) for k in keys))}</div>")
    return f'<div class="finding {h.esc(severity)}">{"".join(parts)}</div>'


def figures_section(title: str, plots: Sequence[Plot]) -> str:
    if not plots:
        return ""
    body = "".join(h.figure(p.key, p.title, p.image) for p in plots)
    anchor = title.lower().replace(" ", "-")
    return h.section(title, f'<div class="figures">{body}</div>', anchor)


def samples_section(run: RunData) -> str:
    """Generated text with the step of the weights that wrote it (HTML-escaped)."""
    found = [(r.get("step"), r.get("text")) for r in run.events("sample")]
    final = (run.results or {}).get("sample")
    if isinstance(final, str) and final.strip():
        found.append((summarize(run).steps, final))
    found = [(step, text) for step, text in found if isinstance(text, str) and text.strip()]
    if not found:
        return ""
    prompt = (run.config.get("sample") or {}).get("prompt")
    body = f"<p>prompt: <code>{h.esc(repr(prompt))}</code></p>" if isinstance(prompt, str) else ""
    for step, text in found:
        where = f"step {step:,}" if number(step) is not None else "final model"
        body += f"<h3>{h.esc(where)}</h3>{h.pre(text)}"
    return h.section("Samples", body, "samples")


def config_block(run: RunData, open_: bool) -> str:
    text = yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True)
    return h.details(f"config.yaml of {run.name}", h.pre(text), open_=open_)


# ---------------------------------------------------------------- several runs
def compare_page(runs: Sequence[RunData]) -> str:
    """Several runs: one table of headlines, the config keys that differ, overlaid curves."""
    names = unique_names(runs)
    runs = [dataclasses.replace(run, name=name) for run, name in zip(runs, names)]
    return h.page(
        f"Comparison of {len(runs)} runs",
        " · ".join(names),
        [
            h.section("Runs", comparison_table(runs), "runs"),
            h.section("Config differences", differences_table(runs), "differences"),
            figures_section("Curves", curve_plots(runs)),
            h.section(
                "Each run",
                "".join(notes_and_config(run) for run in runs),
                "each-run",
            ),
        ],
    )


def comparison_table(runs: Sequence[RunData]) -> str:
    header = [
        "run",
        "command",
        "best val loss",
        "step of best",
        "val bpb",
        "last train loss",
        "steps",
        "tokens",
        "samples",
        "wall time",
        "params",
        "finished",
    ]
    rows = []
    for run in runs:
        s = summarize(run)
        rows.append(
            [
                run.name,
                run.command,
                s.best_val_loss,
                s.best_step,
                s.val_bpb,
                s.final_loss,
                s.steps,
                s.tokens,
                s.samples,
                h.fmt_seconds(s.wall_time_s),
                s.params,
                run.finished,
            ]
        )
    return h.table(header, rows, cls="compare")


def differences_table(runs: Sequence[RunData]) -> str:
    differences = config_differences(runs)
    if not differences:
        return "<p>The configs are the same (run_dir aside).</p>"
    rows = [[key, *(_config_value(v) for v in values)] for key, values in differences.items()]
    shown = h.table(["key", *(run.name for run in runs)], rows, cls="differences")
    # runs of different commands differ in almost every key: then the curves come first
    return h.details(f"{len(rows)} keys differ", shown, open_=len(rows) <= MAX_OPEN_DIFFERENCES)


def _config_value(value: Any) -> Any:
    """A config value for a cell: numbers stay numbers, the rest as YAML writes it."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return "null" if value is None else value
    return yaml.safe_dump(value, default_flow_style=True).strip()


def notes_and_config(run: RunData) -> str:
    notes = "".join(f'<p class="note">{h.esc(n)}</p>' for n in run.notes)
    return notes + config_block(run, open_=False)
