"""Derived metrics: computed per step from aligned series of the same framework.

``slime_throughput`` (seed 002): ``perf/actor_train_tok_per_s × perf/actor_train_time /
(perf/step_time × n_gpus)``, tokens per second of a whole step per GPU, the unit VERL's
``perf/throughput`` has. ``per_gpu``: a total divided by ``n_gpus`` (ROLL's ``system/tps``).
A formula is computed only when its parameters are set and its input columns exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

SLIME_TOK_PER_S = "perf/actor_train_tok_per_s"
SLIME_TRAIN_TIME = "perf/actor_train_time"
SLIME_STEP_TIME = "perf/step_time"


@dataclass(frozen=True)
class Formula:
    inputs: Callable[[Any], list[str]]  # DerivedSpec -> the columns it reads
    compute: Callable[[list[np.ndarray], Any], np.ndarray]  # input arrays (same steps) -> values
    check: Callable[[Any], str | None]  # DerivedSpec -> a spec error, or None
    skip: Callable[[Any], str | None]  # DerivedSpec -> why it is not computed, or None


def _n_gpus_ok(d: Any) -> str | None:
    if d.n_gpus is not None and d.n_gpus < 1:
        return f"n_gpus: {d.n_gpus} is out of range; valid: an integer >= 1"
    return None


def _no_n_gpus(d: Any) -> str | None:
    return None if d.n_gpus is not None else "n_gpus is not set"


def _slime_throughput(cols: list[np.ndarray], d: Any) -> np.ndarray:
    tok_per_s, train_time, step_time = cols
    return tok_per_s * train_time / (step_time * d.n_gpus)


def _per_gpu_check(d: Any) -> str | None:
    return _n_gpus_ok(d) or (None if d.column else "column: required by formula per_gpu")


FORMULAS: dict[str, Formula] = {
    "slime_throughput": Formula(
        inputs=lambda d: [SLIME_TOK_PER_S, SLIME_TRAIN_TIME, SLIME_STEP_TIME],
        compute=_slime_throughput,
        check=_n_gpus_ok,
        skip=_no_n_gpus,
    ),
    "per_gpu": Formula(
        inputs=lambda d: [d.column] if d.column else [],
        compute=lambda cols, d: cols[0] / d.n_gpus,
        check=_per_gpu_check,
        skip=_no_n_gpus,
    ),
}
