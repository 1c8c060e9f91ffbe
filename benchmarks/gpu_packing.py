"""Packing 16 runs of uneven length onto 4 simulated GPUs through the real workflow
(`snakemake --cores 8 --resources gpu=4`, EXPFLOW_SIMULATED_GPUS=4x81920).

    python benchmarks/gpu_packing.py [--scheduler greedy ilp] [--no-baseline]

Each run trains one short regression epoch, then its lifecycle holds the device for
`+lifecycle.hold_s` seconds (2-9.5 s, a different value per run), so runs differ in length. The
2 CPU cores are still busy much of the time: each run's own start (torch, its first optimizer
step) and epoch take ~5 s of CPU. The workflow config names that key as the runs' duration
estimate (`train.estimate: lifecycle.hold_s`): longer runs start first, through Snakemake's job
priorities. The baseline, measured in the same run, is the same workflow without the
estimate (every job at priority 0, Snakemake's own order).

Prints, per scheduler: the makespan over the LPT makespan of the same measured run times
(longest first onto the least loaded device; goal <= 1.03), over the ideal sum/4, and the
idle gap on a device between one lease's release and the next lease (goal <= 0.1 s), split
into release -> next job's process start (the releasing process's exit and Snakemake's
turnaround) and process start -> lease (Python start and the imports of `expflow run`).
A run's time is the device-seconds it held, from its lease to its release.
"""

from __future__ import annotations

import compileall
import heapq
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

from expflow.package import SavePackage  # noqa: E402

SLEEPY = '''
import time

from expflow.lifecycle import Lifecycle


class Sleepy(Lifecycle):
    """Holds its device for hold_s seconds more: runs of uneven length."""

    def __init__(self, hold_s, **kwargs):
        super().__init__(**kwargs)
        self.hold_s = float(hold_s)

    def after_epoch(self, state):
        time.sleep(self.hold_s)
'''
DEVICES = 4
RUNS = 16
GOAL_LPT = 1.03
GOAL_GAP_S = 0.1


def hold_seconds(i: int) -> float:
    """2-9.5 s, each value once, in an order unrelated to the run ids."""
    return 2.0 + ((i * 7) % RUNS) * 0.5


def lpt_makespan(lengths: list[float], machines: int) -> float:
    loads = [0.0] * machines
    for length in sorted(lengths, reverse=True):
        heapq.heapreplace(loads, loads[0] + length)
    return max(loads)


def start_time_offset() -> float:
    """How far psutil's process start times are ahead of time.time() on this machine."""
    import psutil

    before = time.time()
    proc = subprocess.Popen(["sleep", "0.05"])
    after = time.time()
    created = psutil.Process(proc.pid).create_time()
    proc.wait()
    return created - (before + after) / 2


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scheduler", nargs="+", default=["greedy", "ilp"],
                    help="Snakemake schedulers to measure (ilp is Snakemake's default, greedy the local profile's)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run without duration estimates")
    args = ap.parse_args()
    results = {}
    for scheduler in args.scheduler:
        print(f"--- snakemake --cores 8 --resources gpu={DEVICES} --scheduler {scheduler}, train.estimate: lifecycle.hold_s")
        results[scheduler] = measure(scheduler, estimate=True)
    if not args.no_baseline:
        scheduler = args.scheduler[0]
        print(f"--- baseline: the same, --scheduler {scheduler}, no estimate (Snakemake's own order)")
        measure(scheduler, estimate=False)
    best = min(results, key=lambda k: results[k])
    print(f"best scheduler here: {best} (makespan / LPT {results[best]:.3f})")


def measure(scheduler: str, *, estimate: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="expflow-pack-") as tmp:
        proj = Path(tmp) / "proj"
        for name in ("src", "conf", "workflows"):
            shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        shutil.copy(REPO / "Snakefile", proj / "Snakefile")
        (proj / "src" / "sleepy.py").write_text(SLEEPY)
        # Byte-compiled, as an install leaves it (and Python's first import would): with
        # PYTHONDONTWRITEBYTECODE set, every job would compile expflow's modules again.
        compileall.compile_dir(proj / "src", quiet=1)
        wf = {
            "sweep": [f"seed={i} +lifecycle.hold_s={hold_seconds(i)}" for i in range(RUNS)],
            "common": ["+freq=regression", "trainer=debug", "trainer.max_epochs=1", "trainer.threads=1",
                       "gpu.count=1", "gpu.max_jobs_per_gpu=1", "lifecycle._target_=sleepy.Sleepy"],
            "train": {"threads": 1, "retries": 0, **({"estimate": "lifecycle.hold_s"} if estimate else {})},
            "report": {"enabled": False},
        }
        (proj / "conf" / "workflow.yaml").write_text(yaml.safe_dump(wf))
        env = dict(os.environ, PYTHONPATH=str(proj / "src"), EXPFLOW_SIMULATED_GPUS=f"{DEVICES}x81920",
                   EXPFLOW_LEASE_DIR=str(Path(tmp) / "leases"))
        env.pop("CUDA_VISIBLE_DEVICES", None)
        t0 = time.time()
        cmd = [sys.executable, "-m", "snakemake", "--cores", "8", "--resources", f"gpu={DEVICES}",
               "--scheduler", scheduler]
        proc = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        spans = []
        for p in sorted((proj / "runs").iterdir()):
            if not (p / "manifest.json").exists():
                continue
            m = SavePackage.open(p).manifest()
            # A run holds its device from lease to release; its process started before that.
            (lease,) = m["leases"]
            spans.append((lease["acquired"], lease["released"], lease["gpus"][0], m["lease"]["pid_started"]))
    # A process's start time (psutil, from /proc) is off time.time() by up to a second
    # (the boot time it counts from is whole seconds): measured once here and taken off.
    offset = start_time_offset()
    spans = [(s, e, dev, started - offset) for s, e, dev, started in spans]
    lengths = [e - s for s, e, _, _ in spans]
    makespan = max(e for _, e, _, _ in spans) - min(s for s, _, _, _ in spans)
    ideal = sum(lengths) / DEVICES
    lpt = lpt_makespan(lengths, DEVICES)
    gaps, to_start, to_lease = [], [], []
    for d in range(DEVICES):
        mine = sorted((s, e, started) for s, e, dev, started in spans if dev == d)
        for (_, e1, _), (s2, _, started2) in zip(mine, mine[1:], strict=False):
            gaps.append(s2 - e1)
            to_start.append(started2 - e1)  # process start times have a 10 ms resolution (/proc)
            to_lease.append(s2 - started2)

    def mean(xs: list[float]) -> float:
        return sum(xs) / max(len(xs), 1)

    print(f"{len(spans)} runs on {DEVICES} simulated GPUs; run times {min(lengths):.2f}-{max(lengths):.2f} s, "
          f"sum {sum(lengths):.1f} s; snakemake wall {wall:.1f} s")
    print(f"makespan {makespan:.2f} s; LPT order of the same run times {lpt:.2f} s; ideal sum/{DEVICES} {ideal:.2f} s")
    gap = mean(gaps)
    print(f"idle gap on a device, release -> next lease: mean {gap:.3f} s, max {max(gaps, default=0):.3f} s "
          f"(goal <= {GOAL_GAP_S}: {'OK' if gap <= GOAL_GAP_S else 'ABOVE GOAL'})")
    print(f"  of which release -> next job's process start {mean(to_start):.3f} s, "
          f"process start -> lease {mean(to_lease):.3f} s")
    ratio = makespan / lpt
    print(f"makespan / LPT makespan = {ratio:.3f}  (goal <= {GOAL_LPT}: {'OK' if ratio <= GOAL_LPT else 'ABOVE GOAL'})")
    print(f"makespan / (sum of run times / {DEVICES}) = {makespan / ideal:.3f}")
    return ratio


if __name__ == "__main__":
    main()
