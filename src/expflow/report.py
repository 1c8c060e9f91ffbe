"""``expflow report [--runs DIR] --out report.html``: one self-contained HTML page about a
runs directory: the run table, every metric's learning curves with all runs overlaid, the
sweep's final metric against each swept parameter, and links to each package's analyses.

Self-contained: the charts are inline SVG, the style and the little script (highlight a run
across charts, sort the table) are inline too; the page loads nothing from anywhere.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from html import escape
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
    """Every readable package of ``runs_dir`` (oldest first) with its series and analyses."""
    from rich.progress import track

    from expflow.analysis import analysis_records
    from expflow.analysis.metrics import metric_series
    from expflow.package import SavePackage
    from expflow.status_board import Board, read_config, select
    from expflow.svgchart import color

    board = Board(runs_dir)
    rows = select(board.rows(), sort="created")
    runs = []
    for i, row in enumerate(track(rows, description="reading packages", transient=True,
                                  disable=not os.isatty(2) or len(rows) < 50)):
        pkg = SavePackage(row.path)
        runs.append(RunData(row, color(i), metric_series(pkg.scan_records().records),
                            overridden(row.overrides), read_config(pkg.config_path), analysis_records(pkg)))
    return runs, board.skipped


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
    from expflow.status_board import STATUS_ORDER

    counts = Counter(r.row.status for r in runs)
    summary = " · ".join(f'<span class="st {s}">{counts[s]} {s}</span>' for s in STATUS_ORDER if counts[s])
    generated = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    sections = [
        _section("runs", f"Runs ({len(runs)})", _legend(runs) + _run_table(runs, main, swept, out_dir)),
        _section("curves", "Learning curves", _curves(runs, metrics)),
        _section("sweep", f"Final {escape(main or 'metric')} against each swept parameter", _sweep(runs, main, swept)),
        _section("analyses", "Analyses", _analyses(runs, out_dir)),
    ]
    if skipped:
        sections.append(_section("skipped", "Unreadable directories",
                                 "<ul>" + "".join(f"<li>{escape(s)}</li>" for s in skipped) + "</ul>"))
    nav = " ".join(f'<a href="#{k}">{k}</a>' for k in ("runs", "curves", "sweep", "analyses"))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<header><h1>{escape(title)}</h1>
<p class="meta">{len(runs)} runs in <code>{escape(runs_dir)}</code> · {summary or "no runs"} · generated {generated}</p>
<nav>{nav}</nav></header>
<main>
{"".join(sections)}
</main>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _section(key: str, heading: str, body: str) -> str:
    return f'<section id="{key}"><h2>{heading}</h2>\n{body}\n</section>\n'


def _legend(runs: list[RunData]) -> str:
    chips = "".join(f'<span class="chip" data-run="{escape(r.row.run_id)}"><i style="background:{r.color}"></i>'
                    f"{escape(r.row.run_id)}</span>" for r in runs)
    return f'<div class="legend">{chips}</div>'


def _run_table(runs: list[RunData], main: str | None, swept: list[str], out_dir: Path) -> str:
    from expflow.status_board import duration_text, local_time, progress_text

    notes = any(r.row.note for r in runs)
    heads = ["run", "status", "devices", "progress", main or "metric", *swept, "started", "finished",
             "duration", "analyses", *(["note"] if notes else [])]
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    body = []
    for r in runs:
        row = r.row
        value = "" if row.value is None else f"{row.value:.4g}"
        cells = [
            f'<td><i class="dot" style="background:{r.color}"></i>{escape(row.run_id)}</td>',
            f'<td><span class="st {row.status}">{row.status}</span></td>',
            f"<td>{escape(row.devices)}</td>",
            f'<td data-sort="{row.step}">{escape(progress_text(row))}</td>',
            f'<td class="num" data-sort="{row.value if row.value is not None else ""}">{value}</td>',
            *(f"<td>{escape(str(parameter(r, k)))}</td>" for k in swept),
            f'<td data-sort="{row.started or ""}">{local_time(row.started)}</td>',
            f'<td data-sort="{row.finished or ""}">{("~" if row.finished_estimated else "") + local_time(row.finished)}</td>',
            f'<td class="num" data-sort="{row.duration_s or ""}">{duration_text(row.duration_s)}</td>',
            '<td class="links">' + " ".join(f'<a href="{escape(_href(out_dir, Path(row.path) / "analysis" / name))}">{escape(name)}</a>'
                              for name in r.analyses) + "</td>",
            *([f'<td class="note">{escape(row.note)}</td>'] if notes else []),
        ]
        body.append(f'<tr data-run="{escape(row.run_id)}">{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table id="run-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _curves(runs: list[RunData], metrics: list[str]) -> str:
    from expflow.svgchart import Series, line_chart

    if not metrics:
        return '<p class="empty">No metric records yet.</p>'
    charts = []
    for name in metrics:
        series = [Series(r.row.run_id, r.series[name], r.color) for r in runs if r.series.get(name)]
        charts.append(f'<figure data-metric="{escape(name)}">'
                      f'{line_chart(series, title=name, metric=name)}</figure>')
    return f'<div class="grid">{"".join(charts)}</div>'


def _sweep(runs: list[RunData], main: str | None, swept: list[str]) -> str:
    from expflow.svgchart import scatter_chart

    if main is None:
        return '<p class="empty">No metric to compare yet.</p>'
    if not swept:
        return '<p class="empty">No swept parameter: every run has the same overrides.</p>'
    charts = []
    for key in swept:
        points = [(parameter(r, key), r.row.last_metrics[main], r.row.run_id, r.color)
                  for r in runs if main in r.row.last_metrics]
        charts.append(f'<figure data-param="{escape(key)}">'
                      f'{scatter_chart(points, title=f"final {main} vs {key}", xlabel=key, ylabel=main)}</figure>')
    return f'<div class="grid">{"".join(charts)}</div>'


def _analyses(runs: list[RunData], out_dir: Path) -> str:
    from expflow.analysis import headline

    items = []
    for r in runs:
        if not r.analyses:
            continue
        entries = []
        for name, rec in r.analyses.items():
            if rec.get("error"):
                entries.append(f"<li><b>{escape(name)}</b>: unreadable ({escape(str(rec['error']))})</li>")
                continue
            if not rec.get("applicable", True):
                entries.append(f"<li><b>{escape(name)}</b>: does not apply ({escape(str(rec.get('reason')))})</li>")
                continue
            folder = Path(r.row.path) / "analysis" / name
            files = " ".join(f'<a href="{escape(_href(out_dir, folder / f))}">{escape(f)}</a>'
                             for f in rec.get("files", []))
            ck = rec.get("checkpoint") or {}
            at = f" at step {ck['step']}" if ck else ""
            entries.append(f'<li><a href="{escape(_href(out_dir, folder))}"><b>{escape(name)}</b></a>{at}: '
                           f"{escape(headline(r.row.path, name, rec))} <span class=files>{files}</span></li>")
        items.append(f'<div class="run-analyses" data-run="{escape(r.row.run_id)}" id="analyses-{escape(r.row.run_id)}">'
                     f'<h3><i class="dot" style="background:{r.color}"></i>{escape(r.row.run_id)}</h3>'
                     f'<ul>{"".join(entries)}</ul></div>')
    if not items:
        return '<p class="empty">No analyses yet (<code>expflow analyze &lt;package&gt; &lt;script&gt;</code>).</p>'
    return "".join(items)


def _href(out_dir: Path, target: Path) -> str:
    """A link relative to the page, so the report and the runs can move together."""
    from urllib.parse import quote

    return quote(os.path.relpath(target.resolve(), out_dir))


STYLE = """
:root{--fg:#1d2433;--muted:#667085;--line:#e4e7ec;--bg:#fff;--head:#f6f8fb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{padding:18px 28px 10px;border-bottom:1px solid var(--line);background:var(--head)}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 10px}h3{font-size:14px;margin:12px 0 4px}
.meta{color:var(--muted);margin:0 0 6px}nav a{margin-right:14px;color:#175cd3;text-decoration:none}
main{padding:0 28px 40px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{background:var(--head);cursor:pointer;user-select:none;position:sticky;top:0}
.scroll{overflow-x:auto}td.links{white-space:normal;min-width:12em}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.note{white-space:normal;color:var(--muted);max-width:28em}
tr.hl td{background:#fff6d6}
.st{font-weight:600;font-size:12px;padding:1px 6px;border-radius:9px;background:#eef}
.st.COMPLETED{background:#dcfae6;color:#067647}.st.CRASHED{background:#fee4e2;color:#b42318}
.st.RUNNING{background:#d1e9ff;color:#175cd3}.st.PREPARING{background:#e0eaff;color:#3538cd}
.st.QUEUED{background:#fef0c7;color:#b54708}
.dot,.chip i{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px;vertical-align:-1px}
.legend{display:flex;flex-wrap:wrap;gap:6px 14px;margin:0 0 10px}
.chip{cursor:default;font-family:ui-monospace,monospace;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:14px}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:6px}
svg.chart{width:100%;max-width:680px;height:auto;display:block;margin:auto;font:11px system-ui,sans-serif}
svg .title{font-weight:600;font-size:13px}svg .tick{fill:var(--muted)}svg .label{fill:var(--fg)}
svg .gridline{stroke:#eef0f3}svg .frame{fill:none;stroke:#c9ced6}
svg .curve{fill:none;stroke-width:1.8;stroke-linejoin:round;stroke-linecap:round;opacity:.9}
svg .curve.single{stroke-width:8}
svg .point{stroke:#fff;stroke-width:1.5}
.focus .curve,.focus .point{opacity:.12}.focus .curve.hl,.focus .point.hl{opacity:1;stroke-width:3}
.empty{color:var(--muted)}.files a{margin-right:8px;font-size:12px}
code{font-family:ui-monospace,monospace;font-size:12px}
"""

# Hover a run anywhere (legend, table row, curve, point): it stands out in every chart.
# Click a column head: sort the table. `data-ready` tells a headless check the script ran.
SCRIPT = """
(function(){
  var marks=document.querySelectorAll('[data-run]');
  function focus(run){
    document.body.classList.toggle('focus',!!run);
    marks.forEach(function(el){el.classList.toggle('hl',!!run&&el.getAttribute('data-run')===run);});
  }
  marks.forEach(function(el){
    el.addEventListener('mouseenter',function(){focus(el.getAttribute('data-run'));});
    el.addEventListener('mouseleave',function(){focus(null);});
  });
  var table=document.getElementById('run-table');
  if(table){table.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      var dir=th.getAttribute('data-dir')==='asc'?-1:1;th.setAttribute('data-dir',dir>0?'asc':'desc');
      function val(r){var c=r.cells[i],s=c.getAttribute('data-sort');var v=s!==null?s:c.textContent;
        var n=parseFloat(v);return isNaN(n)||!/^[-+0-9.eE]+$/.test(v)?v:n;}
      rows.sort(function(a,b){var x=val(a),y=val(b);return (x>y?1:x<y?-1:0)*dir;});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });}
  document.documentElement.setAttribute('data-ready','1');
})();
"""


# -- the command ----------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="one self-contained HTML page about a runs directory",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
