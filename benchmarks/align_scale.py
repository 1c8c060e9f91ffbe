"""Aligning 1,000,000 points (50 metrics, 3 step groups, 3 frameworks): expflow's
alignment next to a straightforward pandas implementation of seed 002's per-metric
approach, on the same data, in the same process.

    python benchmarks/align_scale.py [--points 1000000] [--metrics 50] [--repeat 3]

Seed 002, per framework: fetch each metric with its step key; per metric, group by step
and keep the last non-null value; per step group, index on the full step range and
back-fill; merge the groups on the train step (left join); rename. expflow does the same
on flat arrays (``expflow.align.steps.align_steps``). Goal: >= 5x faster, identical values.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from expflow.align.aligned import align_framework  # noqa: E402
from expflow.align.sources import RawRun  # noqa: E402
from expflow.align.spec import FrameworkPlan, SourceSpec  # noqa: E402
from expflow.align.steps import assign_groups  # noqa: E402

GROUPS = (("train/step", "train", 0.5), ("rollout/step", "rollout", 0.4), ("eval/step", "eval", 0.1))
FRAMEWORKS = ("verl", "roll", "slime")


# -- data ------------------------------------------------------------------------------
def make_run(rng: np.random.Generator, n_points: int, n_metrics: int) -> pd.DataFrame:
    """A W&B-like history (metric, row, value): three step groups on one row counter,
    uneven steps (gaps, repeats), metrics missing at some steps, a few null values."""
    per_group = [max(1, round(n_metrics * share)) for _, _, share in GROUPS]
    per_group[0] += n_metrics - sum(per_group)
    eval_every = 10
    # points per step of the train axis, to size the run: keys + metrics present ~95%
    per_step = sum(n * 0.95 + 1 for n in per_group[:2]) + (per_group[2] * 0.95 + 1) / eval_every
    n_steps = max(10, int(np.ceil(n_points / per_step * 1.02)))
    metrics, rows, values = [], [], []
    for gi, ((key, prefix, _), n) in enumerate(zip(GROUPS, per_group, strict=True)):
        every = eval_every if prefix == "eval" else 1
        steps = np.arange(0, n_steps, every)
        steps = steps[rng.random(len(steps)) > 0.02]  # gaps: steps never logged
        repeat = steps[rng.random(len(steps)) < 0.01]  # steps logged twice (the last counts)
        steps_all = np.concatenate([steps, repeat])
        row_all = np.concatenate([steps * 4 + gi, repeat * 4 + 3])  # 4 rows per step: one per group + a re-log
        metrics.append(np.full(len(steps_all), key, dtype=object))
        rows.append(row_all)
        values.append(steps_all.astype(np.float64))
        for m in range(n):
            present = rng.random(len(steps_all)) < 0.95
            vals = rng.normal(size=present.sum())
            vals[rng.random(len(vals)) < 0.01] = np.nan  # logged as null
            metrics.append(np.full(present.sum(), f"{prefix}/m{m:02d}", dtype=object))
            rows.append(row_all[present])
            values.append(vals)
    metric = np.concatenate(metrics)
    row = np.concatenate(rows)
    value = np.concatenate(values)
    order = np.argsort(row, kind="stable")  # log order
    return pd.DataFrame({"metric": pd.Categorical(metric[order]), "row": row[order], "value": value[order]})


# -- seed 002's approach, in pandas ----------------------------------------------------
def seed_align(points: pd.DataFrame, groups: dict[str, str | None], mapping: dict[str, str],
               train_step: str = "train/step") -> pd.DataFrame:
    """Per metric: its rows joined with its step key's rows, last non-null per step; per
    group: full step range, bfill; groups merged on the train step; long table, renamed."""
    metric = points["metric"].astype(str)
    key_rows = {
        key: points.loc[metric == key, ["row", "value"]].rename(columns={"value": "_x"}).drop_duplicates("row", keep="last")
        for key in {k for k in groups.values() if k is not None}
    }
    by_group: dict[str | None, list[pd.Series]] = {}
    for name in sorted(set(metric)):
        key = groups.get(name)
        rows = points.loc[metric == name, ["row", "value"]]
        if key is None:
            joined = rows.assign(_x=rows["row"].astype(np.float64))
        else:
            joined = rows.merge(key_rows[key], on="row", how="inner")
        joined = joined[joined["_x"].notna()]
        series = joined.groupby(joined["_x"].round().astype(np.int64))["value"].last()  # last non-null
        by_group.setdefault(key, []).append(series.rename(name))
    frames = {}
    for key, series in by_group.items():
        wide = pd.concat(series, axis=1)
        # bfill inside each series only (issue 12: nothing before a series' first step)
        wide = wide.reindex(range(int(wide.index.min()), int(wide.index.max()) + 1)).bfill(limit_area="inside")
        frames[key] = wide
    main_key = train_step if train_step in frames else None
    merged = frames[main_key]
    for key, wide in frames.items():
        if key != main_key:
            merged = merged.merge(wide, left_index=True, right_index=True, how="left")
    long = merged.rename_axis("step").reset_index().melt(id_vars="step", var_name="metric", value_name="value")
    long = long[long["value"].notna() & long["metric"].isin(list(mapping))]
    return long.assign(metric=long["metric"].map(mapping))[["metric", "step", "value"]]


def expflow_align(points: pd.DataFrame, groups: dict[str, str | None], mapping: dict[str, str]) -> pd.DataFrame:
    """What ``expflow align`` does with a framework's points once they are read."""
    plan = FrameworkPlan(
        name="bench", source=SourceSpec(kind="csv", path="-"), mapping=mapping, derived={},
        target_exp_name="bench", step_groups={}, train_step="train/step", fill="bfill",
    )
    return align_framework(RawRun(points), plan).table


# -- the measurement ---------------------------------------------------------------------
def run_all(runs: dict[str, tuple[pd.DataFrame, dict, dict]], impl) -> tuple[float, pd.DataFrame]:
    t0 = time.perf_counter()
    parts = [impl(points, groups, mapping).assign(framework=fw) for fw, (points, groups, mapping) in runs.items()]
    elapsed = time.perf_counter() - t0
    table = pd.concat(parts, ignore_index=True)[["framework", "metric", "step", "value"]]
    table = table.astype({"metric": str})  # (outside the timing) one order to compare in
    return elapsed, table.sort_values(["framework", "metric", "step"]).reset_index(drop=True)


def identical(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return (
        a.shape == b.shape
        and (a["framework"].to_numpy() == b["framework"].to_numpy()).all()
        and (a["metric"].to_numpy() == b["metric"].to_numpy()).all()
        and np.array_equal(a["step"].to_numpy(np.int64), b["step"].to_numpy(np.int64))
        and np.array_equal(a["value"].to_numpy(np.float64), b["value"].to_numpy(np.float64))
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--metrics", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each arm; the best time counts")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    runs = {}
    for fw in FRAMEWORKS:
        points = make_run(rng, args.points // len(FRAMEWORKS), args.metrics)
        names = [str(n) for n in points["metric"].cat.categories]
        groups = assign_groups(names)
        mapping = {n: f"aligned/{n.replace('/', '_')}" for n in names if not n.endswith("/step")}
        runs[fw] = (points, groups, mapping)
    n_points = sum(len(p) for p, _, _ in runs.values())
    n_metrics = len(next(iter(runs.values()))[2])
    print(f"data: {n_points:,} points, {n_metrics} metrics x {len(runs)} frameworks, 3 step groups "
          f"(gaps, repeated steps, nulls)")

    fast_t, seed_t = [], []
    for _ in range(args.repeat):
        t, fast = run_all(runs, expflow_align)
        fast_t.append(t)
        t, seed = run_all(runs, seed_align)
        seed_t.append(t)
    same = identical(fast, seed)
    best_fast, best_seed = min(fast_t), min(seed_t)
    print(f"aligned rows: {len(fast):,} (expflow) / {len(seed):,} (seed approach)")
    print(f"expflow align_framework:      {best_fast:8.3f} s  (best of {args.repeat})")
    print(f"seed 002 per-metric (pandas): {best_seed:8.3f} s  (best of {args.repeat})")
    print(f"ratio: {best_seed / best_fast:.1f}x faster (goal >= 5x)")
    print(f"identical values: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
