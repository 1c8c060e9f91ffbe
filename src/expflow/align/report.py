"""Comparison plots: one PNG per aligned metric (a line per framework) and one
self-contained HTML page holding all of them (images inlined) and the check table.

Matplotlib is used through ``Figure`` and the Agg canvas directly, so aligning never
changes the caller's pyplot backend.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pandas as pd

from expflow.align.check import ERROR, OK, FrameworkCheck
from expflow.atomic import atomic_write_bytes, atomic_write_text

MAX_LEGEND = 20  # more lines than this (a big sweep): no legend, it would cover the plot


def plot_name(metric: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", metric).strip("_") or "metric"
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}-{i}"
    taken.add(name)
    return f"{name}.png"


def render_plot(table: pd.DataFrame, metric: str) -> bytes:
    """A PNG of ``metric``: one line per framework; an empty axes says no framework has it."""
    from io import BytesIO

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rows = table[table["metric"] == metric]
    for framework, part in rows.groupby("framework", observed=True, sort=True):
        ax.plot(part["step"].to_numpy(), part["value"].to_numpy(), label=str(framework), linewidth=1.2)
    if rows.empty:
        ax.text(0.5, 0.5, "no framework logged it", ha="center", va="center", transform=ax.transAxes)
    elif rows["framework"].nunique() <= MAX_LEGEND:
        ax.legend(loc="best", fontsize=8)
    ax.set_title(metric)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out = BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def write_report(
    table: pd.DataFrame,
    aligned_metrics: Sequence[str],
    checks: Sequence[FrameworkCheck],
    out: Path,
    *,
    title: str,
) -> dict[str, Path]:
    """plots/<metric>.png for each aligned metric, and report.html; returns what it wrote."""
    plots_dir = out / "plots"
    taken: set[str] = set()
    written: dict[str, Path] = {}
    images: list[tuple[str, bytes]] = []
    for metric in aligned_metrics:
        png = render_plot(table, metric)
        path = plots_dir / plot_name(metric, taken)
        atomic_write_bytes(path, png)
        written[metric] = path
        images.append((metric, png))
    page = out / "report.html"
    atomic_write_text(page, _html(title, images, checks, len(aligned_metrics)))
    written["report.html"] = page
    return written


def _html(title: str, images: list[tuple[str, bytes]], checks: Sequence[FrameworkCheck], n: int) -> str:
    esc = html.escape
    rows = []
    for c in checks:
        if c.status == ERROR:
            state, detail = "✗ error", esc(c.error or "")
        elif c.status == OK:
            state, detail = "✓", f"all {n} present"
        else:
            state, detail = "! missing", esc(", ".join(c.missing))
        notes = "<br>".join(esc(x) for x in c.notes)
        rows.append(
            f"<tr class='{c.status}'><td>{esc(c.label)}</td><td>{esc(c.source)}</td><td>{state}</td>"
            f"<td>{detail}</td><td>{c.points}</td><td>{notes}</td></tr>"
        )
    figures = "\n".join(
        f"<figure><img alt='{esc(m)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        f"<figcaption>{esc(m)}</figcaption></figure>"
        for m, png in images
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
tr.{OK} td:nth-child(3) {{ color: #1a7f37; }} tr.missing td:nth-child(3) {{ color: #9a6700; }}
tr.{ERROR} td:nth-child(3) {{ color: #cf222e; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }} img {{ max-width: 750px; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>Generated {datetime.now().isoformat(timespec="seconds")}.</p>
<h2>Alignment check</h2>
<table><tr><th>framework</th><th>source</th><th>check</th><th>detail</th><th>points</th><th>notes</th></tr>
{"".join(rows)}
</table>
<h2>Aligned metrics</h2>
{figures}
</body></html>
"""
