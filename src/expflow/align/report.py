"""Comparison plots: one PNG per aligned metric (a line per framework) and one
self-contained HTML page holding all of them (images inlined) and the check table.

Matplotlib is used through ``Figure`` and the Agg canvas directly, so aligning never
changes the caller's pyplot backend. One figure is reused for every plot, many plots are
drawn in parallel processes, and only plots whose data changed are drawn again.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
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


STYLE = "expflow.align.plot/3"  # part of every plot's digest: a new style redraws them
INDEX = "index.json"
WORKERS = 4  # processes drawing plots at most (and never more than the CPUs)
PARALLEL_FROM = 12  # fewer plots to draw than this: drawn in this process


def metric_series(table: pd.DataFrame, metric: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(framework, steps, values) of ``metric``, one per framework that has it."""
    rows = table[table["metric"] == metric]
    return [(str(fw), part["step"].to_numpy(np.int64), part["value"].to_numpy(np.float64))
            for fw, part in rows.groupby("framework", observed=True, sort=True)]


def series_digest(metric: str, series: list[tuple[str, np.ndarray, np.ndarray]]) -> str:
    h = hashlib.sha256(f"{STYLE}\0{metric}".encode())
    for fw, steps, values in series:
        h.update(f"\0{fw}\0".encode())
        h.update(steps.tobytes())
        h.update(values.tobytes())
    return h.hexdigest()


class _Plotter:
    """One figure, axes and set of lines reused for every plot: a new figure, a cleared axes
    (its ticks rebuilt) or a layout pass per plot cost more than drawing the lines. Fixed
    margins instead of ``tight_layout``."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(7.5, 4.0), dpi=100)
        self.canvas = FigureCanvasAgg(self.fig)
        self.fig.subplots_adjust(left=0.09, right=0.98, top=0.92, bottom=0.12)
        self.ax = self.fig.add_subplot(1, 1, 1)
        self.ax.set_xlabel("step")
        self.ax.grid(True, alpha=0.3)
        self.empty = self.ax.text(0.5, 0.5, "no framework logged it", ha="center", va="center",
                                  transform=self.ax.transAxes, visible=False)
        self.lines: list = []
        self.legend_labels: tuple[str, ...] | None = None

    def render(self, metric: str, series: list[tuple[str, np.ndarray, np.ndarray]]) -> bytes:
        from io import BytesIO

        ax = self.ax
        colors = [f"C{i}" for i in range(10)]
        for i, (fw, steps, values) in enumerate(series):
            if i == len(self.lines):
                (line,) = ax.plot([], [], linewidth=1.2)
                self.lines.append(line)
            line = self.lines[i]
            line.set_data(steps, values)
            line.set_label(fw)
            line.set_color(colors[i % len(colors)])
            line.set_visible(True)
        for line in self.lines[len(series):]:
            line.set_visible(False)
            line.set_data([], [])
        self.empty.set_visible(not series)
        labels = tuple(fw for fw, _, _ in series)
        if labels != self.legend_labels:
            if ax.get_legend() is not None:
                ax.get_legend().remove()
            if series and len(series) <= MAX_LEGEND:
                ax.legend(handles=self.lines[: len(series)], labels=list(labels), loc="upper right", fontsize=8)
            self.legend_labels = labels
        ax.relim(visible_only=True)
        if series:
            ax.autoscale_view()
        else:
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
        ax.set_title(metric)
        out = BytesIO()
        # zlib level 1: a quarter of the encoding time of the default 6, files ~9% larger
        self.canvas.print_png(out, pil_kwargs={"compress_level": 1})
        return out.getvalue()


_PLOTTER: _Plotter | None = None


def _render_batch(jobs: list[tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]]) -> list[bytes]:
    global _PLOTTER
    if _PLOTTER is None:
        _PLOTTER = _Plotter()
    return [_PLOTTER.render(m, series) for m, series in jobs]


def render_plot(table: pd.DataFrame, metric: str) -> bytes:
    """A PNG of ``metric``: one line per framework; an empty axes says no framework has it."""
    return _render_batch([(metric, metric_series(table, metric))])[0]


def render_plots(jobs: list[tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]], busy: int = 0) -> list[bytes]:
    """PNGs for ``jobs``; many are drawn in parallel processes, where there are CPUs (less
    ``busy`` ones: other work of this run, e.g. experiments being written)."""
    workers = min(WORKERS, (os.cpu_count() or 1) - busy, max(1, len(jobs) // (PARALLEL_FROM // 2)))
    if len(jobs) < PARALLEL_FROM or workers < 2:
        return _render_batch(jobs)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:
        return _render_batch(jobs)
    chunks = [jobs[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        parts = list(pool.map(_render_batch, chunks))
    out: list[bytes] = [b""] * len(jobs)
    for i, part in enumerate(parts):
        out[i::workers] = part
    return out


def write_report(
    table: pd.DataFrame,
    aligned_metrics: Sequence[str],
    checks: Sequence[FrameworkCheck],
    out: Path,
    *,
    title: str,
    busy: int = 0,
) -> dict[str, Path]:
    """plots/<metric>.png for each aligned metric, and report.html; returns the paths. Only
    plots whose series changed are drawn (``plots/index.json`` keeps each one's digest), and
    the page is rewritten only when a plot or the check changed."""
    plots_dir = out / "plots"
    try:
        index = json.loads((plots_dir / INDEX).read_text())
    except (OSError, ValueError):
        index = {}
    taken: set[str] = set()
    written: dict[str, Path] = {}
    pngs: dict[str, bytes] = {}
    todo: list[tuple[str, list]] = []
    digests: dict[str, str] = {}
    for metric in aligned_metrics:
        path = plots_dir / plot_name(metric, taken)
        written[metric] = path
        series = metric_series(table, metric)
        digests[metric] = series_digest(metric, series)
        old = index.get(metric) or {}
        if old.get("digest") == digests[metric] and old.get("file") == path.name:
            try:
                pngs[metric] = path.read_bytes()
                continue
            except OSError:
                pass
        todo.append((metric, series))
    for (metric, _), png in zip(todo, render_plots(todo, busy), strict=True):
        atomic_write_bytes(written[metric], png)
        pngs[metric] = png
    new_index = {m: {"file": written[m].name, "digest": digests[m]} for m in aligned_metrics}
    if new_index != index:
        plots_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(plots_dir / INDEX, json.dumps(new_index, indent=1))
    page = out / "report.html"
    page_digest = hashlib.sha256(json.dumps([title, [new_index[m]["digest"] for m in aligned_metrics],
                                             [{k: v for k, v in c.to_json().items() if k != "from_cache"} for c in checks]], default=str).encode()).hexdigest()
    marker = f"<!-- expflow.align.report {page_digest} -->"
    try:
        same = marker in page.read_text()
    except OSError:
        same = False
    if not same:
        images = [(m, pngs[m]) for m in aligned_metrics]
        atomic_write_text(page, _html(title, images, checks, len(aligned_metrics)).replace("<html>", f"<html>{marker}", 1))
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
