"""Alignment at scale, two measurements in one run.

End to end (issue 12): three W&B offline runs written by the real wandb library (2,000 train
steps x 60 metrics in three step groups each), aligned by the whole ``expflow align``
command (read -> aligned tables -> plots and HTML page -> SwanLab offline experiments) in a
fresh process, next to a plain pandas script of seed 002's method on the same files, with
the same outputs (per-metric step-grouped alignment, the seed's CSV per framework, one
SwanLab experiment per framework, one plot per aligned metric); then ``expflow align`` again
with nothing changed. Goals: >= 3x faster end to end, unchanged re-run <= 1 s, identical
aligned values.

In memory: 1,000,000 points (50 metrics, 3 step groups, 3 frameworks): expflow's
``align_framework`` next to the pandas implementation of seed 002's per-metric approach.
Goal >= 5x.

    python benchmarks/align_scale.py [--steps 2000] [--e2e-metrics 60] [--data DIR]
                                     [--points 1000000] [--metrics 50] [--repeat 3]
                                     [--only e2e|memory]

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
    ap.add_argument("--steps", type=int, default=2000, help="end to end: train steps per run")
    ap.add_argument("--e2e-metrics", type=int, default=60, help="end to end: metrics per run")
    ap.add_argument("--data", default=None, help="end to end: where the W&B runs are written (kept: reused)")
    ap.add_argument("--only", choices=("e2e", "memory"), default=None)
    ap.add_argument("--seed-arm", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.seed_arm:
        return seed_command(Path(args.seed_arm[0]), Path(args.seed_arm[1]))
    ok = True
    if args.only in (None, "e2e"):
        ok &= end_to_end(args)
    if args.only in (None, "memory"):
        ok &= in_memory(args)
    return 0 if ok else 1


def in_memory(args: argparse.Namespace) -> bool:
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
    return same


# -- end to end: the whole command on W&B files written by wandb ---------------------------
E2E_GROUPS = (("train/step", "train", 0.5, 1), ("rollout/step", "rollout", 0.4, 1), ("eval/step", "eval", 0.1, 10))


def e2e_names(n_metrics: int) -> dict[str, list[str]]:
    """step key -> its metrics (half train, 40% rollout, 10% eval)."""
    counts = [max(1, round(n_metrics * share)) for _, _, share, _ in E2E_GROUPS]
    counts[0] += n_metrics - sum(counts)
    return {key: [f"{prefix}/m{i:02d}" for i in range(n)] for (key, prefix, _, _), n in zip(E2E_GROUPS, counts, strict=True)}


def write_e2e_runs(data: Path, steps: int, n_metrics: int, seed: int = 0) -> dict[str, Path]:
    """One W&B offline run per framework, SLIME's define_metric groups, gaps and nulls;
    written once per (steps, metrics) and reused."""
    import contextlib
    import os
    from unittest import mock

    marker = data / f"done-{steps}-{n_metrics}.txt"
    paths = {fw: data / fw for fw in FRAMEWORKS}
    if marker.exists():
        return paths
    import wandb

    rng = np.random.default_rng(seed)
    groups = e2e_names(n_metrics)
    for fw, root in paths.items():
        root.mkdir(parents=True, exist_ok=True)
        env = dict(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONSOLE="off", WANDB_DISABLE_GIT="true")
        with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(open(os.devnull, "w")):
            run = wandb.init(project="bench", name=fw, dir=str(root), settings=wandb.Settings(x_disable_stats=True))
            for key, (pattern) in ((k, k.split("/")[0] + "/*") for k in groups):
                run.define_metric(key)
                run.define_metric(pattern, step_metric=key)
            for s in range(steps):
                for (key, _prefix, _share, every) in E2E_GROUPS:
                    if s % every or (key == "rollout/step" and rng.random() < 0.02):
                        continue  # eval every 10 steps; 2% of rollouts never logged
                    row = {key: s}
                    for m in groups[key]:
                        if rng.random() < 0.97:
                            row[m] = float(rng.normal()) if rng.random() > 0.005 else float("nan")
                    run.log(row)
            run.finish()
    marker.write_text("ok\n")
    return paths


def aligned_name(metric: str) -> str:
    return "aligned/" + metric.replace("/", "_")


def e2e_spec(data: Path, n_metrics: int, out: Path) -> Path:
    import json

    metrics = [m for ms in e2e_names(n_metrics).values() for m in ms]
    mapping = {m: aligned_name(m) for m in metrics}
    spec = {
        "aligned_metrics": [aligned_name(m) for m in metrics],
        "frameworks": {fw: {"source": {"kind": "wandb-offline", "path": str(data / fw / "wandb")}, "mapping": mapping,
                            "target_exp_name": f"{fw}_experiment"} for fw in FRAMEWORKS},
        "target": {"project": "bench", "mode": "offline"},
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "spec.yaml"
    path.write_text(json.dumps(spec))
    return path


def seed_command(data: Path, out: Path) -> int:
    """Seed 002's method in plain pandas, with the same outputs: per framework each metric
    with its step key, the last non-null value per step, each group on its full step range
    back-filled (inside each series, as expflow does since issue 12), the groups merged on
    the train step; the seed's CSV; one SwanLab experiment per framework (logged row by
    row, as the seed uploads); one plot per aligned metric."""
    import contextlib
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import swanlab

    from expflow.align.sources.wandb import find_run_file, read_run_file

    t0 = time.perf_counter()
    n_metrics = int(next(data.glob("done-*")).stem.split("-")[2])
    groups = e2e_names(n_metrics)
    group_of = {m: key for key, ms in groups.items() for m in ms}
    longs = []
    out.mkdir(parents=True, exist_ok=True)
    for fw in FRAMEWORKS:
        points = read_run_file(find_run_file(data / fw / "wandb")).points
        metric = points["metric"].astype(str)
        # scan_history(keys=[_step, key, metric]) per metric, as the seed fetches them
        key_rows = {k: points.loc[metric == k, ["row", "value"]].rename(columns={"value": k}) for k in groups}
        frames = {}
        for key, names in groups.items():
            cols = []
            for m in names:
                rows = points.loc[metric == m, ["row", "value"]].rename(columns={"value": m})
                df = rows.merge(key_rows[key], on="row", how="inner")
                df = df[df[key].notna() & df[m].notna()]
                cols.append(df.groupby(df[key].astype(np.int64))[m].last())
            wide = pd.concat(cols, axis=1)
            wide = wide.reindex(range(int(wide.index.min()), int(wide.index.max()) + 1)).bfill(limit_area="inside")
            frames[key] = wide
        merged = frames["train/step"]
        for key, wide in frames.items():
            if key != "train/step":
                merged = merged.merge(wide, left_index=True, right_index=True, how="left")
        merged.index.name = "step"
        merged.to_csv(out / f"{fw}.csv")  # the seed's output_file
        long = merged.reset_index().melt(id_vars="step", var_name="metric", value_name="value").dropna()
        long["metric"] = long["metric"].map(aligned_name)
        longs.append(long.assign(framework=fw))
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            swanlab.init(mode="offline", log_dir=str(out / "swanlab"), project="bench", name=f"{fw}_experiment", reinit=True)
            renamed = merged.rename(columns=aligned_name)
            for step, row in renamed.iterrows():
                values = {k: float(v) for k, v in row.items() if v == v}
                if values:
                    swanlab.log(values, step=int(step))
            swanlab.finish()
    t_tracker = time.perf_counter()
    table = pd.concat(longs, ignore_index=True)[["framework", "metric", "step", "value"]]
    (out / "plots").mkdir(exist_ok=True)
    for m in sorted(group_of):
        name = aligned_name(m)
        plt.figure(figsize=(7.5, 4.0))
        for fw in FRAMEWORKS:
            part = table[(table["framework"] == fw) & (table["metric"] == name)]
            plt.plot(part["step"], part["value"], label=fw)
        plt.title(name)
        plt.legend()
        plt.tight_layout()
        plt.savefig(out / "plots" / f"{name.replace('/', '_')}.png")
        plt.close()
    table.to_parquet(out / "seed.parquet", index=False)
    print(f"seed arm: read+align+csv+swanlab {t_tracker - t0:.2f} s, plots {time.perf_counter() - t_tracker:.2f} s")
    return 0


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    import os
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout + proc.stderr


def end_to_end(args: argparse.Namespace) -> bool:
    import shutil
    import tempfile

    data = Path(args.data or Path(tempfile.gettempdir()) / "expflow-align-bench")
    t0 = time.perf_counter()
    write_e2e_runs(data, args.steps, args.e2e_metrics)
    print(f"end to end: {len(FRAMEWORKS)} W&B offline runs x {args.steps:,} steps x {args.e2e_metrics} metrics, "
          f"3 step groups (in {data}, written in {time.perf_counter() - t0:.1f} s)")
    work = Path(tempfile.mkdtemp(prefix="expflow-align-e2e-"))
    try:
        env = {"SWANLAB_ROOT": str(work / "swanlab-root"), "MPLBACKEND": "Agg"}
        spec = e2e_spec(data, args.e2e_metrics, work)
        out = work / "expflow"
        cmd = [sys.executable, "-m", "expflow.cli", "align", str(spec), "--out", str(out)]
        fresh, log = timed(cmd, env)
        again, log2 = timed(cmd, env)
        seed_t, seed_log = timed([sys.executable, str(Path(__file__).resolve()), "--seed-arm", str(data), str(work / "seed")], env)
        fast = pd.read_parquet(out / "aligned.parquet").astype({"framework": str, "metric": str})
        seed = pd.read_parquet(work / "seed" / "seed.parquet")
        key = ["framework", "metric", "step"]
        fast = fast.sort_values(key).reset_index(drop=True)
        seed = seed.sort_values(key).reset_index(drop=True)
        same = identical(fast, seed)
        n_plots = len(list((out / "plots").glob("*.png")))
        n_exps = len(list((out / "swanlab").glob("run-*")))
        print(f"expflow align (fresh, whole command: read, align, {n_plots} plots + HTML, {n_exps} SwanLab experiments): {fresh:7.2f} s")
        print(f"seed 002 method, plain pandas (same files, same outputs):  {seed_t:7.2f} s  [{seed_log.strip()}]")
        print(f"ratio: {seed_t / fresh:.1f}x faster end to end (goal >= 3x)")
        print(f"expflow align again, nothing changed: {again:5.2f} s (goal <= 1 s)  [{log2.strip().splitlines()[-1]}]")
        print(f"aligned rows: {len(fast):,} (expflow) / {len(seed):,} (seed method); identical values: {same}")
        return same
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
