"""Dry-run time of the workflow for 1,000- and 10,000-run sweeps (100,000 with --sizes), next
to plain Snakemake's dry run of a job graph of the same shape with trivial rules (the same
jobs per run and the same terminal jobs), measured in the same run.

    python benchmarks/dag_scale.py [--sizes 1000 10000 100000] [--repeats 3]

Two expflow figures: a dry run of an unchanged project (the plan kept in
.snakemake/expflow/plan.json from the parse before: every dry run after the first, the real run
after a dry run, every job of a cluster run) and the first dry run after a change to the
sweep or the configs (plan.json removed: Hydra imported, the sweep expanded and composed).

Each dry run is repeated (expflow's and plain Snakemake's interleaved) and the fastest of each
counts: one run alone swings by 10-20% on a small machine. Goal: at most 1.2x plain Snakemake
at every size; sweep expansion linear, <= 1 ms per run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from expflow.planning import Planner  # noqa: E402

# Plain Snakemake with trivial rules, on a job graph of the workflow's shape (its default
# conf/workflow.yaml): per run a package, a train and one analysis job (two outputs, one per
# script), each with a log file, plus the terminal report and `all` (which, like the workflow's,
# asks for every train and analysis output and the report): the same jobs and edges. Like the
# workflow's, a run's train and analysis jobs form one job group (a dry run builds the groups,
# whatever the executor: ~10-20% of Snakemake's own time here).
BASELINE_SNAKEFILE = """
import os

IDS = [f"{i:012x}" for i in range(int(os.environ["DAG_RUNS"]))]
SCRIPTS = ["accuracy", "learning_curves"]

wildcard_constraints:
    run=r"[0-9a-f]{12}",

rule all:
    input:
        expand("runs/{run}/train.done", run=IDS),
        [f"runs/{run}/analysis/{s}/analysis.done" for run in IDS for s in SCRIPTS],
        "runs/report.html",

rule package:
    output: "runs/{run}/config.yaml"
    log: "runs/.workflow/logs/package/{run}.log"
    shell: "touch {output}"

rule train:
    input: rules.package.output
    output: "runs/{run}/train.done"
    log: "runs/.workflow/logs/train/{run}.log"
    benchmark: "runs/.workflow/benchmarks/train/{run}.tsv"
    group: "runs"
    shell: "touch {output}"

rule analyze:
    input: rules.train.output
    output: [f"runs/{{run}}/analysis/{s}/analysis.done" for s in SCRIPTS]
    log: "runs/.workflow/logs/analyze/{run}.log"
    group: "runs"
    shell: "touch {output}"

rule report:
    input:
        expand("runs/{run}/train.done", run=IDS),
        [f"runs/{run}/analysis/{s}/analysis.done" for run in IDS for s in SCRIPTS],
    output: "runs/report.html"
    shell: "touch {output}"
"""


def sweep_line(n: int) -> str:
    seeds = n // 100
    lrs = ",".join(f"{i}e-4" for i in range(1, 11))
    wds = ",".join(f"0.{i}" for i in range(10))
    return f"optim.lr={lrs} optim.weight_decay={wds} seed=range({seeds})"


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--repeats", type=int, default=3, help="dry runs of each, interleaved; the fastest counts")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    goal = 1.2
    with tempfile.TemporaryDirectory(prefix="expflow-dag-") as tmp:
        tmp = Path(tmp)
        proj = tmp / "proj"
        for name in ("conf", "workflows"):
            shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "Snakefile", proj / "Snakefile")
        base = tmp / "baseline"
        base.mkdir()
        (base / "Snakefile").write_text(BASELINE_SNAKEFILE)
        planner = Planner(proj / "conf")
        planner.plan([sweep_line(100)])  # warm the compositions, as one DAG build would
        print(f"{'runs':>7} {'expflow -n':>11} {'plain -n':>9} {'ratio':>6}  {'first -n':>9} {'ratio':>6} "
              f"{'expand':>8} {'ms/run':>7}  goal (both ratios)")
        for n in args.sizes:
            wf = yaml.safe_load((REPO / "conf" / "workflow.yaml").read_text())
            wf["sweep"] = [sweep_line(n)]
            (proj / "conf" / "workflow.yaml").write_text(yaml.safe_dump(wf))
            t0 = time.perf_counter()
            runs = Planner(proj / "conf").plan([sweep_line(n)])
            expand = time.perf_counter() - t0
            assert len(runs) == n, len(runs)
            dry = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "progress"]
            cache = proj / ".snakemake" / "expflow" / "plan.json"
            ours_all, first_all, plain_all = [], [], []
            for _ in range(args.repeats):
                cache.unlink(missing_ok=True)
                first_all.append(timed(dry, proj, env))  # plans, and keeps the plan
                ours_all.append(timed(dry, proj, env))
                plain_all.append(timed(dry, base, dict(env, DAG_RUNS=str(n))))
            ours, first, plain = min(ours_all), min(first_all), min(plain_all)
            verdict = " ".join("PASS" if t / plain <= goal else "MISS" for t in (ours, first))
            print(f"{n:7d} {ours:10.2f}s {plain:8.2f}s {ours / plain:5.2f}x  {first:8.2f}s {first / plain:5.2f}x "
                  f"{expand:7.2f}s {1000 * expand / n:7.3f}  <= {goal}x: {verdict}")


if __name__ == "__main__":
    main()
