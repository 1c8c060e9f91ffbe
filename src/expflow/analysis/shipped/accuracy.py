"""Accuracy of a classifier on the validation set: overall, per class, and the confusion matrix."""

from __future__ import annotations

from typing import Any

from expflow.analysis import AnalysisContext, AnalysisOutput, NotApplicable
from expflow.analysis.plots import confusion_figure


def analyze(ctx: AnalysisContext) -> AnalysisOutput:
    import torch

    output, target = ctx.predict()
    if output.ndim != 2 or target.ndim != 1 or target.dtype.is_floating_point:
        raise NotApplicable(
            f"accuracy needs a classifier (outputs [N, classes], integer targets); this model gives "
            f"outputs of shape {list(output.shape)} and {target.dtype} targets (try learning_curves)"
        )
    classes = int(output.shape[1])
    predicted = output.argmax(dim=1)
    matrix = torch.zeros(classes, classes, dtype=torch.long)
    matrix.index_put_((target, predicted), torch.ones_like(target), accumulate=True)
    correct, total = int(matrix.diagonal().sum()), int(matrix.sum())
    labels = [str(c) for c in getattr(ctx.data, "classes", range(classes))]
    per_class = {
        label: (int(matrix[i, i]) / int(matrix[i].sum()) if int(matrix[i].sum()) else None)
        for i, label in enumerate(labels)
    }
    step = ctx.checkpoint.step
    results: dict[str, Any] = {
        "accuracy": correct / total if total else None,
        "correct": correct,
        "total": total,
        "checkpoint_step": step,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "metrics": ctx.evaluate(),
    }
    title = f"{ctx.run_id} · step {step} · accuracy {correct}/{total} = {results['accuracy']:.4f}"
    return AnalysisOutput(results, {"confusion_matrix": confusion_figure(matrix.tolist(), labels, title=title)})
