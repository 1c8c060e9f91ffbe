"""A 1-D regression's fit: the model's prediction against the target over the validation
inputs (seed 004's GroundTruth and PredictFunc curves), with its errors.

    expflow analyze runs/<run_id> regression_fit
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from expflow.analysis import AnalysisContext, AnalysisOutput, NotApplicable


def analyze(ctx: AnalysisContext) -> AnalysisOutput:
    inputs = torch.cat([x for x, _ in ctx.val_loader])
    output, target = ctx.predict()
    if inputs.ndim != 2 or inputs.shape[1] != 1 or output.shape != target.shape:
        raise NotApplicable("regression_fit needs a 1-D regression (inputs [N, 1], outputs shaped like the targets)")
    x = inputs.flatten()
    order = x.argsort()
    error = (output - target).abs().flatten()
    results = {
        "mae": error.mean().item(),
        "max_abs_error": error.max().item(),
        "worst_x": x[error.argmax()].item(),
        "points": int(x.numel()),
        "checkpoint_step": ctx.checkpoint.step,
    }
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x[order], target.flatten()[order], label="ground truth", linewidth=2)
    ax.plot(x[order], output.flatten()[order], label="prediction", linestyle="--")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"{ctx.run_id} · step {ctx.checkpoint.step} · MAE {results['mae']:.4g}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return AnalysisOutput(results, {"fit": fig})
