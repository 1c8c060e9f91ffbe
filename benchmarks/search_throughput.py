"""An adaptive search's overhead per trial: expflow's trial slot (ask the shared journal
study, materialize the trial's package, train it with pruning reports, tell the result)
next to the trial's own training time, and next to Hydra's Optuna sweeper
(``python -m expflow.train -m hydra/sweeper=optuna``) running the same trials one after
another, measured in the same run.

    python benchmarks/search_throughput.py [--trials 8] [--epochs 2]

Both run the digits example on the CPU with the same search space and a seeded random
sampler, in a fresh process each (imports included), sequentially (one slot; the sweeper's
n_jobs=1). Prints, per trial: expflow's ask, materialize, train and tell times (the slot
records them); each side's wall time per trial; and the ratio expflow / Hydra sweeper.
The sweeper's side needs hydra-optuna-sweeper (``pip install --no-deps hydra-optuna-sweeper``:
it pins Optuna < 3, which expflow's search does not need).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = {"optim.lr": "tag(log, interval(1e-4, 1e-1))", "model.hidden": "choice([16],[64])"}


def common(epochs: int) -> list[str]:
    return ["trainer=debug", f"trainer.max_epochs={epochs}", "trainer.threads=1", "gpu=cpu", "trainer.progress=plain",
            "tracker=none"]


SLOT = """
import json, sys, time
t0 = time.perf_counter()
from expflow.search.slot import run_slot
from expflow.search.study import SearchSpec
spec = SearchSpec.from_json(json.loads(sys.argv[1]))
outcomes = run_slot(spec, sys.argv[2], config_dir=sys.argv[3], out=open("/dev/null", "w"))
print(json.dumps({"wall": time.perf_counter() - t0,
                  "trials": [dict(o.timings, state=o.state) for o in outcomes]}))
"""


def run_expflow(work: Path, trials: int, epochs: int) -> dict:
    spec = {"name": "bench", "objective": "val/acc", "direction": "max", "n_trials": trials, "params": SPACE,
            "overrides": common(epochs), "sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": 0},
            "pruner": None}
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SLOT, json.dumps(spec), str(work / "runs"), str(REPO / "conf")],
                          cwd=work, env=env, capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall"] = time.perf_counter() - t0
    return out


def run_sweeper(work: Path, trials: int, epochs: int) -> dict:
    args = [sys.executable, "-m", "expflow.train", "-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=random",
            "hydra.sweeper.sampler.seed=0", f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.n_jobs=1",
            "hydra.sweeper.direction=maximize", "objective=val/acc", f"paths.runs={work / 'runs'}",
            *(f"{k}={v}" for k, v in SPACE.items()), *common(epochs)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return {"process_wall": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    try:
        import hydra_plugins.hydra_optuna_sweeper  # noqa: F401
    except ImportError:
        sys.exit("search_throughput: needs hydra-optuna-sweeper (pip install --no-deps hydra-optuna-sweeper)")
    root = Path(tempfile.mkdtemp(prefix="expflow-search-bench-"))
    try:
        runs: dict[str, list[dict]] = {"expflow": [], "sweeper": []}
        for rep in range(2):  # interleaved, so both see the same machine
            for side, fn in (("expflow", run_expflow), ("sweeper", run_sweeper)):
                work = root / f"{side}-{rep}"
                work.mkdir()
                runs[side].append(fn(work, args.trials, args.epochs))
        n = args.trials
        per_trial = [t for r in runs["expflow"] for t in r["trials"]]
        print(f"search_throughput: {n} trials x 2 repetitions, digits, {args.epochs} epoch(s), CPU, sequential")
        print("expflow trial slot, per trial (median):")
        for key in ("ask", "materialize", "train", "tell"):
            print(f"  {key:12s} {statistics.median(t[key] for t in per_trial) * 1e3:8.1f} ms")
        overhead = statistics.median(t["ask"] + t["materialize"] + t["tell"] for t in per_trial)
        train = statistics.median(t["train"] for t in per_trial)
        print(f"  overhead (ask + materialize + tell) {overhead * 1e3:.1f} ms = {overhead / train:.2f}x the trial's "
              f"own training ({train * 1e3:.1f} ms)")
        ours = statistics.median(r["process_wall"] for r in runs["expflow"]) / n
        theirs = statistics.median(r["process_wall"] for r in runs["sweeper"]) / n
        print(f"wall time per trial, process start included: expflow slot {ours:.3f} s, "
              f"Hydra's Optuna sweeper {theirs:.3f} s: ratio {ours / theirs:.2f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
