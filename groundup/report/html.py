"""The page around the figures: one HTML file with its CSS inline, no script and no address
outside itself, so it opens the same from a laptop, an archive or a CI artifact.

Every text that comes from a run (config values, sample text, run names, messages) goes
through `esc`: a sample of generated text may hold `<` or `&`, and a run name anything.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       margin: 0 auto; padding: 16px 24px 48px; max-width: 1280px; background: #fff; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.sub { color: #666; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #eee; padding: 6px; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 13px; color: #444; margin-bottom: 4px; font-weight: 600; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; white-space: pre-wrap;
      font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace; margin: 4px 0; }
details { margin: 6px 0; } summary { cursor: pointer; font-weight: 600; }
.finding { border-left: 4px solid #999; padding: 4px 10px; margin: 8px 0; background: #fafafa; }
.finding.warning { border-color: #e6a700; } .finding.error { border-color: #d62728; }
.finding.info { border-color: #6a8caf; }  /* not a curve colour */
.note { color: #8a5a00; }
"""


def esc(value: Any) -> str:
    """Text made safe for the page (quotes too: it may land in an attribute)."""
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A value for a table cell: 4 significant digits for floats, thousands for ints."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def fmt_seconds(seconds: float | None) -> str:
    """Wall time for people: 42.1 s, 12 min 5 s, 3 h 20 min."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def cell(value: Any) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{esc(fmt(value))}</td>' if numeric else f"<td>{esc(fmt(value))}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    """A table of values (each formatted by `fmt` and escaped)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    attr = f' class="{esc(cls)}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table: a name, its value (a value that is already HTML is kept as is
    when wrapped in `Raw`)."""
    rows = []
    for key, value in pairs:
        shown = f"<td>{value.html}</td>" if isinstance(value, Raw) else cell(value)
        rows.append(f"<tr><th>{esc(key)}</th>{shown}</tr>")
    return f"<table>{''.join(rows)}</table>"


class Raw:
    """HTML made here (not from a run) that a table shows without escaping."""

    def __init__(self, text: str) -> None:
        self.html = text


def figure(key: str, title: str, image: str) -> str:
    """One figure: its caption and the embedded image (a data URI, nothing fetched)."""
    return (
        f'<figure id="fig-{esc(key)}"><figcaption>{esc(title)}</figcaption>'
        f'<img class="plot" alt="{esc(title)}" src="{image}"></figure>'
    )


def section(title: str, body: str, anchor: str = "") -> str:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>{body}</section>"


def details(summary: str, body: str, open_: bool = False) -> str:
    state = " open" if open_ else ""
    return f"<details{state}><summary>{esc(summary)}</summary>{body}</details>"


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def page(title: str, subtitle: str, sections: Iterable[str]) -> str:
    """The whole document."""
    body = "\n".join(s for s in sections if s)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>"
        f'<h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p>\n{body}\n</body></html>\n'
    )
