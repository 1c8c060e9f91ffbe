"""The validation metrics of every retained checkpoint (fast, slow and persistent tracks)."""

from __future__ import annotations

from omegaconf import OmegaConf

from expflow.analysis import AnalysisContext, AnalysisError, AnalysisOutput, NotApplicable
from expflow.analysis.metrics import higher_is_better, main_metric
from expflow.analysis.plots import metric_panels


def analyze(ctx: AnalysisContext) -> AnalysisOutput:
    checkpoints = ctx.checkpoints
    if not checkpoints:
        raise NotApplicable(f"{ctx.package_dir}: the package has no checkpoint to compare")
    rows = []
    for i, info in enumerate(checkpoints, 1):
        ctx.load_checkpoint(info)
        metrics = ctx.evaluate()
        rows.append({"step": info.step, "epoch": info.epoch, "tracks": list(info.tracks), "file": info.file, **metrics})
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"[{i}/{len(checkpoints)}] checkpoint step {info.step} ({','.join(info.tracks)}): {shown}", flush=True)
    names = sorted(k for k in rows[0] if k.startswith("val/"))
    metric = main_metric(names, OmegaConf.select(ctx.config, "lifecycle.hold_best", default=None))
    if metric is None:
        raise AnalysisError("the task reports no validation metric to compare")
    pick = max if higher_is_better(metric) else min
    best = pick(rows, key=lambda r: r[metric])
    series = {name: [(r["step"], r[name]) for r in rows] for name in names}
    notes = {metric: f"best: step {best['step']} ({best[metric]:.4g})"}
    figure = metric_panels(series, title=f"{ctx.run_id}: {len(rows)} retained checkpoints", notes=notes)
    results = {"metric": metric, "best_step": best["step"], "best": best[metric], "checkpoints": rows}
    return AnalysisOutput(results, {"checkpoints": figure})
