"""The validation images a classifier gets wrong, drawn with their true and predicted labels,
and the (true, predicted) pairs it confuses most.

    expflow analyze runs/<run_id> misclassified
"""

from __future__ import annotations

import math
from collections import Counter

from matplotlib.figure import Figure

from expflow.analysis import AnalysisContext, AnalysisOutput, NotApplicable

MAX_SHOWN = 40


def analyze(ctx: AnalysisContext) -> AnalysisOutput:
    output, target = ctx.predict()
    if output.ndim != 2:
        raise NotApplicable("misclassified needs a classifier (outputs [N, classes])")
    predicted = output.argmax(dim=1)
    wrong = (predicted != target).nonzero().flatten().tolist()
    pairs = Counter((int(target[i]), int(predicted[i])) for i in wrong)
    results = {
        "misclassified": len(wrong),
        "total": int(target.shape[0]),
        "error_rate": len(wrong) / max(int(target.shape[0]), 1),
        "checkpoint_step": ctx.checkpoint.step,
        "most_confused": [{"true": t, "predicted": p, "count": n} for (t, p), n in pairs.most_common(10)],
    }
    shown = wrong[:MAX_SHOWN]
    if not shown:
        return AnalysisOutput(results)
    dataset = ctx.val_loader.dataset
    side = math.isqrt(int(dataset[shown[0]][0].numel()))
    cols = min(len(shown), 10)
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(cols * 1.1, rows * 1.3 + 0.4), layout="constrained")
    fig.suptitle(f"{ctx.run_id}: {len(wrong)} of {results['total']} misclassified (true -> predicted)", fontsize=9)
    for k, i in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        image = dataset[i][0].reshape(-1)[: side * side].reshape(side, side)
        ax.imshow(image.numpy(), cmap="gray_r")
        ax.set_title(f"{int(target[i])} -> {int(predicted[i])}", fontsize=8, color="firebrick")
        ax.axis("off")
    return AnalysisOutput(results, {"misclassified": fig})
