"""`expflow search RUNS_DIR`: every search's trials by objective, its best trial and package,
and (``--html``) a page with the optimization history and the parameters' importance
(Optuna's fANOVA evaluator), drawn as the report's self-contained SVG charts."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path
from typing import Any

from expflow.errors import ConfigError, ExpflowError
from expflow.search.study import SEARCH_DIR, journal_storage

STATE_COLOR = {"COMPLETE": "#2ca02c", "PRUNED": "#e377c2", "FAIL": "#d62728", "RUNNING": "#1f77b4",
               "WAITING": "#7f7f7f"}


@dataclass
class TrialRow:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    run_id: str | None
    package: str | None
    package_status: str | None
    pruned_at: int | None  # the last step reported before the pruner stopped it
    error: str | None


@dataclass
class StudyResult:
    name: str
    storage: str
    direction: str
    objective: str | None
    trials: list[TrialRow]
    best: TrialRow | None
    importance: dict[str, float]
    importance_note: str | None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "storage": self.storage, "direction": self.direction, "objective": self.objective,
                "counts": self.counts(), "best": asdict(self.best) if self.best else None,
                "importance": self.importance, "importance_note": self.importance_note,
                "trials": [asdict(t) for t in self.trials]}


def find_studies(runs_dir: str | Path) -> list[Path]:
    return sorted((Path(runs_dir) / SEARCH_DIR).glob("*/study.journal"))


def load_result(path: Path, runs_dir: Path) -> StudyResult:
    import optuna
    from optuna.trial import TrialState

    from expflow.package import SavePackage
    from expflow.package.manifest import is_package

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = path.parent.name
    try:
        study = optuna.load_study(study_name=name, storage=journal_storage(path))
        trials = study.get_trials(deepcopy=False)
    except Exception as e:  # a damaged or foreign journal: one line naming it
        raise ConfigError(f"{path}: not a readable Optuna journal of study {name!r} ({type(e).__name__}: {e})") from None
    maximize = study.direction.name == "MAXIMIZE"
    rows = []
    objective = None
    for t in trials:
        run_id = t.user_attrs.get("run_id")
        pkg_dir = runs_dir / run_id if run_id else None
        status = None
        if pkg_dir is not None and is_package(pkg_dir):
            try:
                pkg = SavePackage.open(pkg_dir)
                status = pkg.status().value
                objective = objective or (pkg.manifest().get("search") or {}).get("objective")
            except ExpflowError:
                status = "unreadable"
        value = t.value if t.state is TrialState.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        rows.append(TrialRow(t.number, t.state.name, value, dict(t.params), run_id,
                             str(pkg_dir) if pkg_dir is not None and status else None, status,
                             max(t.intermediate_values) if t.state is TrialState.PRUNED and t.intermediate_values else None,
                             t.user_attrs.get("error")))

    def order(r: TrialRow) -> tuple[int, float]:
        rank = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3}.get(r.state, 4)
        v = r.value if r.value is not None and math.isfinite(r.value) else math.inf
        return rank, (-v if maximize and v != math.inf else v)

    rows.sort(key=order)
    complete = [r for r in rows if r.state == "COMPLETE" and r.value is not None]
    best = complete[0] if complete else None
    importance, note = _importance(study, len(complete))
    return StudyResult(name, str(path), "max" if maximize else "min", objective, rows, best, importance, note)


def _importance(study: Any, complete: int) -> tuple[dict[str, float], str | None]:
    import optuna

    if complete < 2:
        return {}, f"{complete} complete trial(s): importance needs at least 2"
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}, None
    except (RuntimeError, ValueError, ZeroDivisionError) as e:
        return {}, f"importance not computable: {e}"


def search_results(runs_dir: str | Path, name: str | None = None) -> list[StudyResult]:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir}: no such runs directory")
    paths = find_studies(runs_dir)
    if name is not None:
        paths = [p for p in paths if p.parent.name == name]
        if not paths:
            known = ", ".join(p.parent.name for p in find_studies(runs_dir)) or "none"
            raise ConfigError(f"{runs_dir}: no search named {name!r} (searches there: {known})")
    return [load_result(p, runs_dir) for p in paths]


# -- output -----------------------------------------------------------------------------
def print_results(results: list[StudyResult], runs_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not results:
        console.print(f"{runs_dir}: no search (a workflow with search.enabled writes {runs_dir}/{SEARCH_DIR}/<name>/)")
        return
    for r in results:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(r.counts().items()))
        table = Table(title=f"search {r.name}: {r.direction} {r.objective or 'objective'} ({counts})")
        keys = list(dict.fromkeys(k for t in r.trials for k in t.params))
        for head in ("trial", "state", r.objective or "value", *keys, "run"):
            table.add_column(head)
        for t in r.trials:
            table.add_row(str(t.number), t.state, "" if t.value is None else f"{t.value:.6g}",
                          *(_cell(t.params.get(k, "")) for k in keys), t.run_id or "")
        console.print(table)
        if r.best is not None:
            console.print(f"best: trial {r.best.number}, {r.objective or 'value'} = {r.best.value:.6g}, "
                          f"package {r.best.package or r.best.run_id}")
        if r.importance:
            console.print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in r.importance.items()))


def write_html(results: list[StudyResult], out: Path) -> None:
    from expflow.atomic import atomic_write_text
    from expflow.svgchart import Series, line_chart, scatter_chart

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>expflow search</title><style>",
             "body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:2px 8px;"
             "border-bottom:1px solid #ddd;text-align:left}.chart text{font-size:11px}.gridline{stroke:#eee}"
             ".frame{fill:none;stroke:#999}.curve{fill:none;stroke-width:2}.bar{fill:#1f77b4}</style></head><body>"]
    for r in results:
        metric = r.objective or "objective"
        parts.append(f"<h1>search {escape(r.name)}</h1><p>{r.direction} {escape(metric)}; "
                     + ", ".join(f"{n} {escape(s)}" for s, n in sorted(r.counts().items())) + "</p>")
        if r.best is not None:
            parts.append(f"<p>best: trial {r.best.number}, {escape(metric)} = {r.best.value:.6g}, "
                         f"package <code>{escape(r.best.package or str(r.best.run_id))}</code></p>")
        points = [(t.number, t.value, f"trial {t.number}", STATE_COLOR.get(t.state, "#7f7f7f"))
                  for t in sorted(r.trials, key=lambda t: t.number) if t.value is not None]
        if points:
            parts.append(scatter_chart(points, title="optimization history", xlabel="trial", ylabel=metric))
            best, line = None, []
            for number, value, *_ in points:
                state = next(t.state for t in r.trials if t.number == number)
                if state == "COMPLETE":
                    best = value if best is None else (max(best, value) if r.direction == "max" else min(best, value))
                if best is not None:
                    line.append((float(number), float(best)))
            if line:
                parts.append(line_chart([Series("best", line, "#2ca02c", "best so far")], title="best value so far",
                                        xlabel="trial", metric=metric))
        if r.importance:
            parts.append(bar_chart(r.importance, title="parameter importance (fANOVA)"))
        elif r.importance_note:
            parts.append(f"<p>{escape(r.importance_note)}</p>")
        keys = list(dict.fromkeys(k for t in r.trials for k in t.params))
        parts.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in ("trial", "state", metric, *keys, "run"))
                     + "</tr>")
        for t in r.trials:
            cells = [str(t.number), t.state, "" if t.value is None else f"{t.value:.6g}",
                     *(str(t.params.get(k, "")) for k in keys), t.run_id or ""]
            parts.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    atomic_write_text(out, "\n".join(parts))


def bar_chart(values: dict[str, float], *, title: str) -> str:
    """Horizontal bars, one per key (largest first), as a self-contained SVG."""
    items = sorted(values.items(), key=lambda kv: -kv[1])
    width, row, left = 520, 24, 160
    height = 30 + row * len(items)
    top = max((v for _, v in items), default=1.0) or 1.0
    body = [f'<text class="title" x="{width / 2:.0f}" y="16" text-anchor="middle">{escape(title)}</text>']
    for i, (key, v) in enumerate(items):
        y = 26 + i * row
        w = (width - left - 60) * max(v, 0.0) / top
        body.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{escape(key)}</text>')
        body.append(f'<rect class="bar" data-param="{escape(key)}" x="{left}" y="{y}" width="{w:.1f}" height="{row - 6}">'
                    f'<title>{escape(key)}: {v:.3f}</title></rect>')
        body.append(f'<text x="{left + w + 4:.1f}" y="{y + 14}">{v:.2f}</text>')
    return (f'<svg class="chart bars" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{escape(title)}">\n' + "\n".join(body) + "\n</svg>")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="?", default="runs", help="the runs directory (default: runs)")
    p.add_argument("--name", default=None, help="only this search (search.name)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--html", default=None, metavar="OUT", help="also write a page with the optimization history and "
                                                               "the parameters' importance")


def run_command(args: argparse.Namespace) -> int:
    runs_dir = Path(args.runs)
    results = search_results(runs_dir, args.name)
    if args.html:
        write_html(results, Path(args.html))
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2, default=str))
    else:
        print_results(results, runs_dir)
        if args.html:
            print(f"page: {args.html}")
    return 0


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
