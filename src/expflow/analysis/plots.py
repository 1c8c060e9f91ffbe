"""Figures shared by the shipped analyses (matplotlib's object API: no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Points = Sequence[tuple[float, float]]


def metric_groups(names: Sequence[str]) -> list[list[str]]:
    """Losses share one panel (same scale, compared directly); every other metric gets its own."""
    losses = [n for n in names if "loss" in n.rsplit("/", 1)[-1]]
    others = [[n] for n in names if n not in losses]
    return ([losses] if losses else []) + others


def metric_panels(series: dict[str, Points], *, title: str, xlabel: str = "step",
                  marker: str | None = None, notes: dict[str, str] | None = None) -> Any:
    """A figure with one panel per group of metrics, each a line over ``xlabel``."""
    from matplotlib.figure import Figure

    groups = metric_groups(sorted(series))
    cols = min(len(groups), 2) or 1
    rows = math.ceil(len(groups) / cols) or 1
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows), layout="constrained")
    fig.suptitle(title)
    for i, group in enumerate(groups):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name in group:
            xs = [x for x, _ in series[name]]
            ys = [y for _, y in series[name]]
            ax.plot(xs, ys, marker=marker or ("o" if len(xs) <= 30 else None), markersize=3, label=name)
        positive = all(y > 0 for n in group for _, y in series[n] if math.isfinite(y))
        values = [y for n in group for _, y in series[n] if math.isfinite(y) and y > 0]
        if positive and values and max(values) / min(values) > 100:
            ax.set_yscale("log")  # losses spanning decades: a log scale shows the late progress
        ax.set_xlabel(xlabel)
        ax.set_title(", ".join(group) if len(group) == 1 else "losses", fontsize=10)
        ax.grid(alpha=0.3)
        if len(group) > 1:
            ax.legend(fontsize=8)
        for name in group:
            if notes and name in notes:
                ax.annotate(notes[name], xy=(0.99, 0.02), xycoords="axes fraction", ha="right",
                            va="bottom", fontsize=8, color="0.35")
    return fig


def confusion_figure(matrix: Sequence[Sequence[int]], labels: Sequence[str], *, title: str) -> Any:
    """Counts annotated on a row-normalized heatmap (rows: true class, columns: predicted)."""
    from matplotlib.figure import Figure

    n = len(labels)
    rates = [[c / max(sum(row), 1) for c in row] for row in matrix]
    size = max(4.0, 0.45 * n + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if rates[i][j] > 0.5 else "black")
    return fig
