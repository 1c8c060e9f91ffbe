"""The fixed cost of the workflow's jobs (what a run pays besides its own training), next to
``python -c "import torch"`` (the least any job that trains or evaluates a model pays), all
measured in the same run, interleaved, medians over ``--repeats``.

    python benchmarks/job_overhead.py [--repeats 5]

On a temporary copy of this project (src/, conf/), with the smoke config (+freq=smoke,
trainer.threads=1, gpu=cpu):

* package job: ``expflow materialize`` (interpreter, imports, Hydra's composition, the code
  snapshot, the manifest): the whole process.
* train job: ``expflow run <package>`` on a fresh package. Its fixed cost is the process's
  wall time minus its training (the manifest's RUNNING to COMPLETED span): interpreter and
  imports, opening the package, the lease, seeding, building the runner (the model, the data),
  and closing (records flushed, status written).
* analysis job, per run: the workflow's way now, ``expflow analyze <package> accuracy
  learning_curves`` (both scripts in one analysis process on one lease), next to the way it
  was, one ``expflow analyze <package> <script>`` job per script (each its own interpreters:
  the job's and the analysis process's, each importing torch).

Prints the figures, their ratios to the torch import, and the saving of one analysis job per
run. A second baseline is what the smoke example itself needs before it trains: torch, its
data module (scikit-learn's digits) and its first optimizer (torch imports torch._dynamo
there, ~1.5 s); the train job's cost above that is expflow's share. No goal: the numbers are reported (the workflow issue asks for them to be measured and
cut). Exits non-zero only on an error.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("accuracy", "learning_curves")
OVERRIDES = ["+freq=smoke", "trainer.threads=1", "gpu=cpu"]
# What the example's own code imports and builds before its first step, without expflow.
EXAMPLE = "import torch, sklearn.datasets; torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())"


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return wall, proc


def training_span(pkg: Path) -> float:
    """Seconds from RUNNING to COMPLETED in the package's status history."""
    history = json.loads((pkg / "manifest.json").read_text())["status_history"]
    at = {h["status"]: datetime.fromisoformat(h["time"]) for h in history}
    return (at["COMPLETED"] - at["RUNNING"]).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="expflow-jobs-") as tmp:
        proj = Path(tmp) / "proj"
        for name in ("src", "conf", "analysis"):
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        compileall.compile_dir(proj / "src", quiet=1)  # as an install leaves it (PYTHONDONTWRITEBYTECODE may be set)
        env = dict(os.environ, PYTHONPATH=str(proj / "src"), MPLBACKEND="Agg")
        env.pop("CUDA_VISIBLE_DEVICES", None)
        cli = [py, "-m", "expflow.cli"]
        figures: dict[str, list[float]] = {k: [] for k in ("torch", "example", "package", "train", "train_loop",
                                                            "analyze_one", "analyze_each")}
        print(f"{args.repeats} repetitions (+1 warm-up), interleaved ...", flush=True)
        for i in range(-1, args.repeats):
            record = i >= 0
            wall, _ = timed([py, "-c", "import torch"], proj, env)
            if record:
                figures["torch"].append(wall)
            wall, _ = timed([py, "-c", EXAMPLE], proj, env)
            if record:
                figures["example"].append(wall)
            wall, proc = timed([*cli, "materialize", "--runs", "runs", "--config-dir", "conf", "--",
                                *OVERRIDES, f"seed={i + 10}"], proj, env)
            pkg = proj / "runs" / proc.stdout.split(":")[0].strip().rsplit("/", 1)[-1]
            if not (pkg / "manifest.json").is_file():
                raise SystemExit(f"materialize printed no package: {proc.stdout!r}")
            wall_train, _ = timed([*cli, "run", str(pkg)], proj, env)
            span = training_span(pkg)
            wall_one, _ = timed([*cli, "analyze", str(pkg), *SCRIPTS], proj, env)
            each = sum(timed([*cli, "analyze", str(pkg), s], proj, env)[0] for s in SCRIPTS)
            if record:
                figures["package"].append(wall)
                figures["train"].append(wall_train - span)
                figures["train_loop"].append(span)
                figures["analyze_one"].append(wall_one)
                figures["analyze_each"].append(each)
    med = {k: statistics.median(v) for k, v in figures.items()}
    base = med["torch"]
    print(f"\nfixed cost per job (median of {args.repeats}); baseline `python -c \"import torch\"`: "
          f"{base * 1e3:.0f} ms")
    rows = (
        ("package job (expflow materialize), whole process", med["package"]),
        (f"train job (expflow run), wall minus training ({med['train_loop'] * 1e3:.0f} ms)", med["train"]),
        (f"analysis of a run, one job: {' + '.join(SCRIPTS)} in one process", med["analyze_one"]),
        (f"analysis of a run, one job per script (before), {len(SCRIPTS)} jobs", med["analyze_each"]),
    )
    for label, value in rows:
        print(f"  {value * 1e3:7.0f} ms  {value / base:5.2f}x import torch  {label}")
    example = med["example"]
    print(f"the example's own start (torch, sklearn's digits, its first optimizer: `python -c` alone): "
          f"{example * 1e3:.0f} ms; the train job above it, expflow's share: {(med['train'] - example) * 1e3:.0f} ms "
          f"({med['train'] / example:.2f}x)")
    saved = med["analyze_each"] - med["analyze_one"]
    print(f"one analysis job per run instead of one per script saves {saved * 1e3:.0f} ms per run "
          f"({med['analyze_each'] / med['analyze_one']:.2f}x less) with {len(SCRIPTS)} scripts")
    per_run = med["package"] + med["train"] + med["analyze_one"]
    print(f"a run's fixed cost through the workflow (package + train + analysis jobs): {per_run * 1e3:.0f} ms "
          f"= {per_run / base:.1f}x one torch import")


if __name__ == "__main__":
    main()
