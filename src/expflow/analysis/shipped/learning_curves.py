"""Learning curves: every recorded train/val metric per step (no model needed: works on any run)."""

from __future__ import annotations

from expflow.analysis import AnalysisContext, AnalysisError, AnalysisOutput
from expflow.analysis.metrics import best_value, higher_is_better
from expflow.analysis.plots import metric_panels


def analyze(ctx: AnalysisContext) -> AnalysisOutput:
    series = ctx.series()
    if not series:
        raise AnalysisError(f"{ctx.package_dir}: no metric records yet (nothing to plot)")
    results = {}
    for name, points in sorted(series.items()):
        values = [v for _, v in points]
        best = best_value(name, values)
        results[name] = {
            "points": len(points),
            "first": values[0],
            "last": values[-1],
            "last_step": points[-1][0],
            "best": best,
            "best_step": next((s for s, v in points if v == best), None),
            "goal": "max" if higher_is_better(name) else "min",
        }
    status = ctx.package.status().value
    figure = metric_panels(series, title=f"{ctx.run_id} ({status})")
    return AnalysisOutput(results, {"learning_curves": figure})
