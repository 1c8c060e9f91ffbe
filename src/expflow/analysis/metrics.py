"""A run's metric series and its main metric: what the status board, the learning-curve
analysis and the report all read from a package's records."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from expflow.package.records import metric_points

# Substrings of metric names where a smaller value is better (losses and errors).
_LOWER_IS_BETTER = ("loss", "mae", "mse", "rmse", "err", "perplexity", "ppl")


def higher_is_better(name: str) -> bool:
    leaf = name.rsplit("/", 1)[-1].lower()
    return not any(part in leaf for part in _LOWER_IS_BETTER)


def metric_series(records: Iterable[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Every metric's (step, value) points over the effective records, in record order."""
    series: dict[str, list[tuple[int, float]]] = {}
    for step, name, value in metric_points(records):
        series.setdefault(name, []).append((int(step), float(value)))
    return series


def main_metric(names: Iterable[str], preferred: str | None = None) -> str | None:
    """The metric a run is judged by: ``preferred`` (the lifecycle's ``hold_best``) when
    recorded, else ``val/acc``, ``val/loss``, the first validation metric, the first metric."""
    available = sorted(set(names))
    if preferred and preferred in available:
        return preferred
    for candidate in ("val/acc", "val/loss"):
        if candidate in available:
            return candidate
    val = [n for n in available if n.startswith("val/")]
    return (val or available or [None])[0]


def best_value(name: str, values: Iterable[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if higher_is_better(name) else min(finite)
