"""One framework's points -> its aligned series: step groups, derived metrics, names.

The result is the long table ``metric, step, value`` under the aligned names, plus notes
on what could not be produced (a derived metric without its inputs or parameters).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from expflow.align.derived import FORMULAS
from expflow.align.presets import PATTERN_PREFIX
from expflow.align.sources import RawRun
from expflow.align.spec import FrameworkPlan
from expflow.align.steps import align_steps, assign_groups


@dataclass
class Aligned:
    table: pd.DataFrame  # metric (aligned name), step, value
    notes: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)  # step key -> its metrics (for the report)


def resolve_mapping(mapping: dict[str, str], names: list[str], notes: list[str]) -> dict[str, str]:
    """The plan's mapping against the run's metric names: one name per aligned name. Entries
    are tried in order; a ``re:`` entry takes the first matching name (sorted), noting the
    others; an aligned name already taken (an alternative of a preset) is not taken again."""
    present = set(names)
    out: dict[str, str] = {}
    taken: set[str] = set()
    for raw, aligned in mapping.items():
        if aligned in taken:
            continue
        if raw.startswith(PATTERN_PREFIX):
            rx = re.compile(raw[len(PATTERN_PREFIX):])
            hits = [n for n in sorted(names) if rx.fullmatch(n) and n not in out]
            if not hits:
                continue
            if len(hits) > 1:
                notes.append(f"{aligned}: from {hits[0]} (also matched: {', '.join(hits[1:4])}{', ...' if len(hits) > 4 else ''})")
            raw = hits[0]
        elif raw not in present:
            continue
        out[raw] = aligned
        taken.add(aligned)
    return out


def align_framework(raw: RawRun, plan: FrameworkPlan) -> Aligned:
    names = raw.metrics
    notes: list[str] = []
    plan = dataclasses.replace(plan, mapping=resolve_mapping(plan.mapping, [*names, *plan.derived], notes))
    groups = assign_groups(names, configured=plan.step_groups, declared=raw.step_keys)
    scale, why = rollout_scale(plan, raw, groups)
    if why:
        notes.append(why)
    steps = align_steps(raw.points, groups, train_step=plan.train_step, fill=plan.fill, wanted=plan.wanted(),
                        scale_keys=scale)
    steps = _add_derived(steps, plan, notes)
    table = _rename(steps, plan)
    by_key: dict[str, list[str]] = {}
    for name, key in groups.items():
        by_key.setdefault(key or "(source step)", []).append(name)
    return Aligned(table, notes, by_key)


ROLLOUT_KEYS = ("rollout/step", "eval/step")  # SLIME: both are the rollout id (compute_rollout_step)


def rollout_scale(plan: FrameworkPlan, raw: RawRun, groups: dict[str, str | None]) -> tuple[dict[str, int], str | None]:
    """SLIME's rollout axis. ``train/step`` counts train steps (rollout_id ×
    num_steps_per_rollout + step_id); ``rollout/step`` and ``eval/step`` are the rollout id
    unless ``--wandb-always-use-train-step``. Rollout metrics go to the train step where
    their rollout's training starts: rollout id × ``steps_per_rollout`` (the spec's, else
    the run's own config: ``wandb_always_use_train_step`` -> 1, else ``rollout_batch_size
    × n_samples_per_prompt // global_batch_size``, slime/observability/metric_utils.py)."""
    keys = [k for k in ROLLOUT_KEYS if k in set(groups.values()) and k != plan.train_step]
    if not keys or plan.train_step not in set(groups.values()):
        return {}, None
    n = plan.steps_per_rollout
    origin = "steps_per_rollout"
    if n is None:
        cfg = raw.info.get("config") or {}
        if cfg.get("wandb_always_use_train_step") is True:
            return {}, None
        try:
            n = int(cfg["rollout_batch_size"]) * int(cfg["n_samples_per_prompt"]) // int(cfg["global_batch_size"])
            origin = "the run's config"
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            n = None
    if n is None:
        return {}, None
    if n == 1:
        return {}, None
    return {k: n for k in keys}, f"{', '.join(keys)} × {n} (train steps per rollout, from {origin})"


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
