"""Step groups: putting metrics logged against different step keys on one step axis.

W&B runs of SLIME log ``train/*`` against ``train/step``, ``rollout/*`` and ``perf/*``
against ``rollout/step``, ``eval/*`` against ``eval/step`` (``define_metric``); SwanLab runs
do the same with ``define_metric(..., x_axis=...)``. Seed 002 aligns such a run by
fetching each metric with its step key, and then, per group:

1. index the group on its full step range (seed: ``0..max``),
2. keep the last non-null value per step,
3. back-fill missing steps (``bfill``: a step takes the next logged value); here only
   inside each series, from its first logged step to its last, so no value is invented
   before a metric starts (the seed back-fills from step 0) or after it ends,
4. merge the groups on the train step (a left join: the train group's range is the axis).

:func:`align_steps` does all of it for every metric at once, on flat arrays (a stable sort,
one searchsorted per step key, one for the fill), instead of a DataFrame per metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase

import numpy as np
import pandas as pd

# Seed 002's grouping (it mirrors SLIME's define_metric calls); used when neither the spec
# nor the source says otherwise, and only when the step key is in the data.
DEFAULT_STEP_GROUPS: dict[str, tuple[str, ...]] = {
    "train/step": ("train/*",),
    "rollout/step": ("rollout/*", "multi_turn/*", "passrate/*", "perf/*"),
    "eval/step": ("eval/*",),
}

_I64 = np.iinfo(np.int64)


def assign_groups(
    names: Iterable[str],
    *,
    configured: Mapping[str, Sequence[str]] | None = None,
    declared: Mapping[str, str] | None = None,
    defaults: Mapping[str, Sequence[str]] = DEFAULT_STEP_GROUPS,
) -> dict[str, str | None]:
    """Metric name -> its step key (None: the source's own step).

    Rules come in layers: the spec's ``step_groups`` (step key -> patterns), then what the
    source declared (pattern -> step key), then the defaults. Within a layer an exact name
    beats a glob. A rule whose step key was never logged does not apply.
    """
    names = list(names)
    present = set(names)
    layers = [
        [(pat, key) for key, pats in (configured or {}).items() for pat in pats],
        list((declared or {}).items()),
        [(pat, key) for key, pats in defaults.items() for pat in pats],
    ]
    return {name: _first_match(name, layers, present) for name in names}


def _first_match(name: str, layers: list[list[tuple[str, str]]], present: set[str]) -> str | None:
    for rules in layers:
        for exact in (True, False):
            for pat, key in rules:
                if key not in present:
                    continue
                if exact and pat == name:
                    return key
                if not exact and any(ch in pat for ch in "*?[") and fnmatchcase(name, pat):
                    return key
    return None


def align_steps(
    points: pd.DataFrame,
    groups: Mapping[str, str | None],
    *,
    train_step: str = "train/step",
    fill: str = "bfill",
    wanted: Iterable[str] | None = None,
    scale_keys: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """One value per (metric, step) on the train step axis.

    ``points``: columns ``metric`` (str or categorical), ``row`` (the source's own step:
    SwanLab's step, W&B's ``_step``, a TensorBoard step...) and ``value``, in log order.
    ``groups``: metric -> step key, from :func:`assign_groups`. A point's step is the value
    its step key had at the point's row (the last one logged at or before it, as W&B's
    ``step_sync`` does); without a step key, the row itself. Only ``wanted`` metrics are
    returned (all when None). ``scale_keys``: step key -> factor its group's steps are
    multiplied by (SLIME's ``rollout/step`` is the rollout id: × ``num_steps_per_rollout``
    puts a rollout at the train step it starts). With a ``segment`` column (several files
    or runs, see ``sources.merge_runs``) a step key applies within its segment, a later
    segment wins at a repeated step, and one that rewinds replaces (:func:`_not_replaced`).
    Returns columns ``metric`` (categorical), ``step``, ``value``.
    """
    scale_keys = dict(scale_keys or {})
    metric = points["metric"]
    if isinstance(metric.dtype, pd.CategoricalDtype):
        codes = metric.cat.codes.to_numpy(np.int64)
        names = [str(n) for n in metric.cat.categories]
    else:
        raw_codes, uniques = pd.factorize(metric)
        codes, names = raw_codes.astype(np.int64), [str(n) for n in uniques]
    rows = points["row"].to_numpy(np.int64)
    vals = points["value"].to_numpy(np.float64)
    seg = points["segment"].to_numpy(np.int64) if "segment" in points.columns else None
    if seg is not None and len(rows):
        # A step key applies within its own segment (file, run): look rows up on
        # (segment, row), one number.
        span_rows = int(rows.max()) - int(rows.min()) + 1
        if int(seg.max()) + 1 > (_I64.max // 2) // max(span_rows, 1):
            raise ValueError("rows too far apart to merge the segments")
        look = seg * span_rows + (rows - int(rows.min()))
    else:
        look = rows
    code_of = {n: i for i, n in enumerate(names)}
    keys = sorted({k for n, k in groups.items() if k is not None and n in code_of and k in code_of})
    key_index = {k: i for i, k in enumerate(keys)}
    name_group = np.array([key_index.get(groups.get(n) or "", -1) for n in names] + [-1], dtype=np.int64)
    pgroup = name_group[codes]  # code -1 (a null name) maps to the sentinel

    # 1. each point's step: its group's step key at the point's row
    x = rows.astype(np.float64)
    for gi, key in enumerate(keys):
        members = pgroup == gi
        kmask = (codes == code_of[key]) & np.isfinite(vals)
        krows, kvals = _last_per_row(look[kmask], vals[kmask])
        idx = np.searchsorted(krows, look[members], side="right") - 1
        xs = np.full(idx.shape, np.nan)
        ok = idx >= 0
        if seg is not None:  # not a key row of an earlier segment
            ok &= (krows[np.maximum(idx, 0)] // span_rows) == seg[members]
        xs[ok] = kvals[idx[ok]]
        x[members] = xs
    if scale_keys:
        for gi, key in enumerate(keys):
            factor = scale_keys.get(key)
            if factor and factor != 1:
                x[pgroup == gi] *= factor
    placed = (codes >= 0) & ~np.isnan(x)
    c, steps, v, g = codes[placed], np.rint(x[placed]).astype(np.int64), vals[placed], pgroup[placed]
    if seg is not None:
        keep = _not_replaced(c, steps, seg[placed], len(names))
        c, steps, v, g = c[keep], steps[keep], v[keep], g[keep]
    if not len(c):
        return _frame(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), names)

    # 2. each group's full range: every step it logged at (a null too), over all its metrics;
    #    the train group's range is the axis
    first = {gi: int(steps[g == gi].min()) for gi in np.unique(g)}
    last = {gi: int(steps[g == gi].max()) for gi in first}
    main = key_index.get(train_step, -1)
    if main not in first:
        main = -1 if -1 in first else None  # no train group: the source's step, else all groups
    lo_main = first[main] if main is not None else _I64.min
    hi_main = last[main] if main is not None else _I64.max

    sel = ~np.isnan(v)  # nulls are not values (seed: the last non-null one per step)
    if wanted is not None:
        wanted_codes = [code_of[n] for n in wanted if n in code_of]
        sel &= np.isin(c, np.array(wanted_codes, dtype=np.int64))
    c, steps, v, g = c[sel], steps[sel], v[sel], g[sel]
    if not len(c):
        return _frame(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), names)

    # 3. the last value per (metric, step): a stable sort keeps log order among equal keys
    xmin = int(steps.min())
    span = int(steps.max()) - xmin + 1
    if span > (_I64.max // 2) // (len(names) + 1):
        raise ValueError(f"step range {xmin}..{xmin + span - 1} is too wide to align")
    key = c * span + (steps - xmin)
    order = np.argsort(key, kind="stable")
    ks = key[order]
    is_last = np.empty(len(ks), dtype=bool)
    is_last[:-1] = ks[1:] != ks[:-1]
    is_last[-1] = True
    sel = order[is_last]
    ku, cu, xu, vu = ks[is_last], c[sel], steps[sel], v[sel]

    if fill == "none":
        inside = (xu >= lo_main) & (xu <= hi_main)
        return _frame(cu[inside], xu[inside], vu[inside], names)

    # 4. back-fill inside each series only: metric m gets every step from its own first
    #    logged step (or the axis start) to its own last (or the axis end); each takes the
    #    next logged value. Nothing before a series starts (VERL's step-0 validation does
    #    not give the training metrics a step 0) or after it ends.
    starts = np.flatnonzero(np.r_[True, cu[1:] != cu[:-1]])
    ends = np.r_[starts[1:], len(cu)] - 1
    lo = np.maximum(xu[starts], lo_main)
    hi = np.minimum(xu[ends], hi_main)
    counts = np.clip(hi - lo + 1, 0, None)
    offsets = np.cumsum(counts) - counts
    out_steps = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(offsets - lo, counts)
    out_codes = np.repeat(cu[starts], counts)
    pos = np.searchsorted(ku, out_codes * span + (out_steps - xmin), side="left")
    return _frame(out_codes, out_steps, vu[pos], names)


def _not_replaced(codes: np.ndarray, steps: np.ndarray, seg: np.ndarray, n_names: int) -> np.ndarray:
    """Per metric, a later segment replaces an earlier one's points from its own first
    step on, when it starts at or before a step the earlier one reached (a restart that
    rewinds); a segment that starts after them continues the series."""
    n_seg = int(seg.max()) + 1 if len(seg) else 0
    if n_seg < 2:
        return np.ones(len(codes), dtype=bool)
    first = np.full((n_names, n_seg + 1), _I64.max, dtype=np.int64)
    np.minimum.at(first, (codes, seg), steps)
    # the smallest first step of any later segment: the limit an earlier point must stay under
    later = np.minimum.accumulate(first[:, ::-1], axis=1)[:, ::-1]
    return steps < later[codes, seg + 1]


def _last_per_row(rows: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(rows, kind="stable")
    rows, vals = rows[order], vals[order]
    if not len(rows):
        return rows, vals
    is_last = np.r_[rows[1:] != rows[:-1], True]
    return rows[is_last], vals[is_last]


def _frame(codes: np.ndarray, steps: np.ndarray, values: np.ndarray, names: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "metric": pd.Categorical.from_codes(codes, categories=pd.Index(names, dtype=object)),
            "step": steps,
            "value": values,
        }
    )
