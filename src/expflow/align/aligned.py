"""One framework's points -> its aligned series: step groups, derived metrics, names.

The result is the long table ``metric, step, value`` under the aligned names, plus notes
on what could not be produced (a derived metric without its inputs or parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from expflow.align.derived import FORMULAS
from expflow.align.sources import RawRun
from expflow.align.spec import FrameworkPlan
from expflow.align.steps import align_steps, assign_groups


@dataclass
class Aligned:
    table: pd.DataFrame  # metric (aligned name), step, value
    notes: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)  # step key -> its metrics (for the report)


def align_framework(raw: RawRun, plan: FrameworkPlan) -> Aligned:
    names = raw.metrics
    groups = assign_groups(names, configured=plan.step_groups, declared=raw.step_keys)
    steps = align_steps(raw.points, groups, train_step=plan.train_step, fill=plan.fill, wanted=plan.wanted())
    notes: list[str] = []
    steps = _add_derived(steps, plan, notes)
    table = _rename(steps, plan)
    by_key: dict[str, list[str]] = {}
    for name, key in groups.items():
        by_key.setdefault(key or "(source step)", []).append(name)
    return Aligned(table, notes, by_key)


def _add_derived(steps: pd.DataFrame, plan: FrameworkPlan, notes: list[str]) -> pd.DataFrame:
    if not plan.derived:
        return steps
    metric = steps["metric"].astype(str)
    present = set(metric.unique())
    extra: list[pd.DataFrame] = []
    replaced: set[str] = set()
    for name, d in plan.derived.items():
        formula = FORMULAS[d.formula]
        why = formula.skip(d)
        inputs = formula.inputs(d)
        missing = [i for i in inputs if i not in present]
        if why is None and missing:
            why = f"no {', '.join(missing)}"
        if why is not None:
            notes.append(f"{name}: not derived ({why})")
            continue
        series = [steps.loc[metric == i].set_index("step")["value"] for i in inputs]
        joined = pd.concat(series, axis=1, join="inner").sort_index()
        with np.errstate(divide="ignore", invalid="ignore"):
            values = formula.compute([joined.iloc[:, k].to_numpy(np.float64) for k in range(len(inputs))], d)
        ok = ~np.isnan(values)
        extra.append(pd.DataFrame({"metric": name, "step": joined.index.to_numpy(np.int64)[ok], "value": values[ok]}))
        replaced.add(name)
    if not extra:
        return steps
    base = steps.loc[~metric.isin(replaced)].assign(metric=lambda f: f["metric"].astype(str))
    return pd.concat([base, *extra], ignore_index=True)


def _rename(steps: pd.DataFrame, plan: FrameworkPlan) -> pd.DataFrame:
    """Framework names -> aligned names; what maps to nothing is dropped."""
    cat = steps["metric"].astype("category")
    targets = [plan.mapping.get(str(n), str(n) if str(n) in plan.derived else None) for n in cat.cat.categories]
    aligned = sorted({t for t in targets if t is not None})
    index = {t: i for i, t in enumerate(aligned)}
    lookup = np.array([index[t] if t is not None else -1 for t in targets] + [-1], dtype=np.int64)
    codes = lookup[cat.cat.codes.to_numpy(np.int64)]
    keep = np.flatnonzero(codes >= 0)
    # Each aligned name comes from one series whose steps ascend: a stable sort on the new
    # codes alone orders the table by (metric, step).
    keep = keep[np.argsort(codes[keep], kind="stable")]
    return pd.DataFrame(
        {
            "metric": pd.Categorical.from_codes(codes[keep], categories=pd.Index(aligned, dtype=object)),
            "step": steps["step"].to_numpy(np.int64)[keep],
            "value": steps["value"].to_numpy(np.float64)[keep],
        }
    )
