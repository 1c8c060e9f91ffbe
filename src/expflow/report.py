"""`expflow report [--runs DIR] --out report.html`: one self-contained HTML page about a
runs directory: the run table, every metric's learning curves with all runs overlaid, the
sweep's final metric against each swept parameter, and links to each package's analyses.

The page is rendered from templates/report.html.j2 (Jinja2, autoescaped); the charts are
inline SVG (svgchart), the style and the little script (highlight a run across charts, sort
the table) are inlined from templates/ too: the page loads nothing from anywhere.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from expflow.status_board import RunRow

DEFAULT = "(default)"  # a swept key a run did not override
# Overrides that place or name a run rather than change what it computes.
NOT_SWEPT = ("paths.", "run_id", "hydra.", "code.", "trainer.threads", "trainer.progress")


@dataclass
class RunData:
    row: RunRow
    color: str
    series: dict[str, list[tuple[int, float]]]
    params: dict[str, str]  # the run's overrides
    config: dict[str, Any]  # its resolved config
    analyses: dict[str, dict[str, Any]]


def load_runs(runs_dir: str | os.PathLike[str]) -> tuple[list[RunData], list[str]]:
    """Every readable package of ``runs_dir`` (oldest first, each rerun right after the run it
    reran) with its colour, series and analyses."""
    from rich.progress import track

    from expflow.analysis import analysis_records
    from expflow.analysis.metrics import metric_series
    from expflow.package import SavePackage
    from expflow.package.package import read_plain_config
    from expflow.status_board import Board, select

    board = Board(runs_dir)
    rows = grouped(select(board.rows(), sort="created"))
    colors = run_colors(rows)
    runs = []
    for row in track(rows, description="reading packages", transient=True,
                     disable=not os.isatty(2) or len(rows) < 50):
        pkg = SavePackage(row.path)
        runs.append(RunData(row, colors[row.run_id], metric_series(pkg.scan_records().records),
                            overridden(row.overrides), read_plain_config(pkg.config_path), analysis_records(pkg)))
    return runs, board.skipped


def family(row: RunRow, ids: set[str]) -> str:
    """The run a row belongs with: the one it reran (when that is in the report), else itself."""
    return row.rerun_of if row.rerun_of in ids else row.run_id


def grouped(rows: list[RunRow]) -> list[RunRow]:
    """Rows in their order, each rerun moved right after the run it reran."""
    ids = {r.run_id for r in rows}
    order = {r.run_id: i for i, r in enumerate(rows) if family(r, ids) == r.run_id}
    return sorted(rows, key=lambda r: (order[family(r, ids)], family(r, ids) != r.run_id))


def run_colors(rows: list[RunRow]) -> dict[str, str]:
    """One distinct colour per run; a rerun gets a lighter shade of its run's colour."""
    from expflow.svgchart import palette, shade

    ids = {r.run_id for r in rows}
    families = list(dict.fromkeys(family(r, ids) for r in rows))
    base = dict(zip(families, palette(len(families)), strict=True))
    colors, reruns = {}, Counter()
    for r in rows:
        head = family(r, ids)
        if head == r.run_id:
            colors[r.run_id] = base[head]
        else:
            reruns[head] += 1
            colors[r.run_id] = shade(base[head], reruns[head])
    return colors


def overridden(overrides: list[str]) -> dict[str, str]:
    """{key: value} of ``key=value`` overrides (``+``/``~`` prefixes dropped)."""
    out = {}
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def parameter(run: RunData, key: str) -> Any:
    """A run's value of ``key``: the resolved config's when the key names a value there
    (``optim.lr`` -> 0.003, also for a run that kept the default), else the override's own
    (a group choice: ``model=cnn``)."""
    node: Any = run.config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, (int, float, str, bool)):
        return node
    return run.params.get(key, DEFAULT)


def swept_parameters(runs: list[RunData]) -> list[str]:
    """Overridden keys whose value differs between runs."""
    keys = sorted({k for r in runs for k in r.params if not k.startswith(NOT_SWEPT)})
    return [k for k in keys if len({repr(parameter(r, k)) for r in runs}) > 1]


def report_metric(runs: list[RunData]) -> str | None:
    """The main metric most runs share: what the sweep charts compare."""
    counts = Counter(r.row.metric for r in runs if r.row.metric)
    return counts.most_common(1)[0][0] if counts else None


def metric_order(runs: list[RunData], main: str | None) -> list[str]:
    names = {n for r in runs for n in r.series}
    return sorted(names, key=lambda n: (n != main, not n.startswith("val/"), n))


# -- the page ------------------------------------------------------------------------------
def build_report(runs_dir: str | os.PathLike[str], out: str | os.PathLike[str], title: str | None = None) -> dict[str, Any]:
    """Write the report page to ``out`` (atomically); returns what it holds."""
    from expflow.atomic import atomic_write_text

    out = Path(out)
    runs, skipped = load_runs(runs_dir)
    main = report_metric(runs)
    metrics = metric_order(runs, main)
    swept = swept_parameters(runs)
    page = render_page(runs, skipped, main=main, metrics=metrics, swept=swept, out_dir=out.resolve().parent,
                       runs_dir=str(runs_dir), title=title or f"expflow report: {runs_dir}")
    atomic_write_text(out, page)
    return {"path": str(out), "runs": len(runs), "metrics": metrics, "swept": swept, "main_metric": main,
            "skipped": skipped}


def render_page(runs: list[RunData], skipped: list[str], *, main: str | None, metrics: list[str],
                swept: list[str], out_dir: Path, runs_dir: str, title: str) -> str:
    """The page, from templates/report.html.j2 (autoescaped: only the charts are markup)."""
    from expflow.status_board import STATUS_ORDER

    counts = Counter(r.row.status for r in runs)
    return template().render(
        title=title,
        runs_dir=runs_dir,
        counts=[(s, counts[s]) for s in STATUS_ORDER if counts[s]],
        generated=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        runs=[table_row(r, main, swept, out_dir) for r in runs],
        table=run_table_heads(runs, main, swept),
        curves=curve_charts(runs, metrics),
        main=main,
        sweep=sweep_charts(runs, main, swept),
        analyses=analysis_entries(runs, out_dir),
        skipped=skipped,
    )


def template() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("expflow", "templates"), autoescape=True, undefined=StrictUndefined,
                      keep_trailing_newline=True)
    return env.get_template("report.html.j2")


def run_table_heads(runs: list[RunData], main: str | None, swept: list[str]) -> dict[str, Any]:
    # The key columns first (run and status stay pinned when the table scrolls sideways), the
    # analyses before the long tail of swept values, so they stay in view on a laptop screen.
    notes = any(r.row.note for r in runs)
    names = ["run", "status", main or "metric", "analyses", *swept, "progress", "devices", "trained",
             "started", "finished", *(["note"] if notes else [])]
    return {"heads": [{"name": n, "pinned": i < 2} for i, n in enumerate(names)], "notes": notes}


def table_row(r: RunData, main: str | None, swept: list[str], out_dir: Path) -> dict[str, Any]:
    """One run's cells in the run table: text, and the value each column sorts by."""
    from expflow.status_board import duration_text, local_time, progress_text, wall_differs

    row = r.row
    trained = f"trained {duration_text(row.duration_s)}" + (f" over {row.attempts} attempts" if row.attempts > 1 else "")
    return {
        "run_id": row.run_id,
        "color": r.color,
        "rerun_of": row.rerun_of,
        "status": row.status,
        "devices": row.devices,
        "cpu_fallback": ("it asked for GPUs and trained on the CPU: no GPU was available (gpu.allow_cpu=true)"
                         if row.cpu_fallback else None),
        "step": row.step,
        "progress": progress_text(row),
        "value": "" if row.value is None else f"{row.value:.4g}",
        "value_sort": "" if row.value is None else row.value,
        "params": [str(parameter(r, k)) for k in swept],
        "started": local_time(row.started),
        "started_sort": row.started or "",
        "finished": ("~" if row.finished_estimated else "") + local_time(row.finished),
        "finished_sort": row.finished or "",
        "duration": duration_text(row.duration_s),
        "duration_sort": row.duration_s or "",
        "duration_title": f"{trained}; {duration_text(row.wall_s)} since its first start" if row.wall_s is not None else trained,
        "wall": duration_text(row.wall_s) if wall_differs(row) else None,
        "analysis_links": [{"name": name, "href": _href(out_dir, Path(row.path) / "analysis" / name)}
                           for name in r.analyses],
        "note": row.note,
    }


def curve_charts(runs: list[RunData], metrics: list[str]) -> list[dict[str, Any]]:
    from markupsafe import Markup

    from expflow.svgchart import Series, line_chart

    charts = []
    for name in metrics:
        series = [Series(r.row.run_id, r.series[name], r.color, rerun=r.row.rerun_of is not None)
                  for r in runs if r.series.get(name)]
        charts.append({"metric": name, "svg": Markup(line_chart(series, title=name, metric=name))})
    return charts


def sweep_charts(runs: list[RunData], main: str | None, swept: list[str]) -> dict[str, Any]:
    from markupsafe import Markup

    from expflow.svgchart import scatter_chart

    if main is None:
        return {"empty": "No metric to compare yet."}
    if not swept:
        return {"empty": "No swept parameter: every run has the same overrides."}
    charts = []
    for key in swept:
        points = [(parameter(r, key), r.row.last_metrics[main], r.row.run_id, r.color)
                  for r in runs if main in r.row.last_metrics]
        svg = scatter_chart(points, title=f"final {main} vs {key}", xlabel=key, ylabel=main)
        charts.append({"param": key, "svg": Markup(svg)})
    return {"empty": None, "charts": charts}


def analysis_entries(runs: list[RunData], out_dir: Path) -> list[dict[str, Any]]:
    """Per run with analyses: one entry per analysis (unreadable, not applicable, or its
    checkpoint, headline results and files)."""
    from expflow.analysis import headline

    groups = []
    for r in runs:
        if not r.analyses:
            continue
        entries = []
        for name, rec in r.analyses.items():
            if rec.get("error"):
                entries.append({"name": name, "error": str(rec["error"])})
                continue
            if not rec.get("applicable", True):
                entries.append({"name": name, "error": None, "not_applicable": True, "reason": str(rec.get("reason"))})
                continue
            folder = Path(r.row.path) / "analysis" / name
            ck = rec.get("checkpoint") or {}
            entries.append({
                "name": name, "error": None, "not_applicable": False,
                "href": _href(out_dir, folder),
                "step": ck.get("step") if ck else None,
                "headline": headline(r.row.path, name, rec),
                "files": [{"name": f, "href": _href(out_dir, folder / f)} for f in rec.get("files", [])],
            })
        groups.append({"run_id": r.row.run_id, "color": r.color, "entries": entries})
    return groups


def _href(out_dir: Path, target: Path) -> str:
    """A link relative to the page, so the report and the runs can move together."""
    from urllib.parse import quote

    return quote(os.path.relpath(target.resolve(), out_dir))


# -- the command ----------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="one self-contained HTML page about a runs directory")
    p.add_argument("--runs", default="runs", metavar="DIR", help="the runs directory (default: runs)")
    p.add_argument("--out", default=None, metavar="FILE", help="the page to write (default: <runs>/report.html)")
    p.add_argument("--title", default=None, help="the page's title")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    out = args.out or str(Path(args.runs) / "report.html")
    info = build_report(args.runs, out, title=args.title)
    swept = ", ".join(info["swept"]) or "none"
    print(f"{info['path']}: {info['runs']} runs, {len(info['metrics'])} metrics, swept: {swept}")
    return 0
