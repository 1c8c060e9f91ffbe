"""Packing 16 runs of uneven length onto 4 simulated GPUs through the real workflow
(`snakemake --cores 8 --resources gpu=4`, EXPFLOW_SIMULATED_GPUS=4x81920).

    python benchmarks/gpu_packing.py

Each run trains one digits epoch, then its lifecycle sleeps 1-4 s by seed, so runs differ
in length while the 2 CPU cores stay free. Prints the makespan divided by
(sum of run times / 4). That is the ideal, counting every device-second a run held
(process start included). It also prints the ratio to the best greedy schedule of the
same run times (LPT), which shows how much of the gap is job order rather than lease
latency. Goal: <= 1.1 (no polling delays; a freed device is leased at once).
"""

from __future__ import annotations

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
    """Holds its device for 1-4 s more, by seed: runs of uneven length."""

    def after_epoch(self, state):
        time.sleep(1.0 + (int(state.config.seed) % 4))
'''
DEVICES = 4


def lpt_makespan(lengths: list[float], machines: int) -> float:
    loads = [0.0] * machines
    for length in sorted(lengths, reverse=True):
        heapq.heapreplace(loads, loads[0] + length)
    return max(loads)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scheduler", nargs="+", default=["ilp", "greedy"],
                    help="Snakemake schedulers to measure (ilp is Snakemake's default)")
    args = ap.parse_args()
    for scheduler in args.scheduler:
        print(f"--- snakemake --cores 8 --resources gpu={DEVICES} --scheduler {scheduler}")
        measure(scheduler)


def measure(scheduler: str) -> None:
    with tempfile.TemporaryDirectory(prefix="expflow-pack-") as tmp:
        proj = Path(tmp) / "proj"
        for name in ("src", "conf", "workflows"):
            shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        shutil.copy(REPO / "Snakefile", proj / "Snakefile")
        (proj / "src" / "sleepy.py").write_text(SLEEPY)
        wf = {
            "sweep": ["seed=range(16)"],
            "common": ["trainer=debug", "trainer.max_epochs=1", "trainer.threads=1", "gpu.count=1",
                       "gpu.max_jobs_per_gpu=1", "lifecycle._target_=sleepy.Sleepy"],
            "train": {"threads": 1, "retries": 0},
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
            # A run holds its device from lease to release (its process start included).
            (lease,) = m["leases"]
            spans.append((lease["acquired"], lease["released"], lease["gpus"][0]))
    lengths = [e - s for s, e, _ in spans]
    makespan = max(e for _, e, _ in spans) - min(s for s, _, _ in spans)
    ideal = sum(lengths) / DEVICES
    lpt = lpt_makespan(lengths, DEVICES)
    gaps = []
    for d in range(DEVICES):
        mine = sorted((s, e) for s, e, dev in spans if dev == d)
        gaps += [s2 - e1 for (_, e1), (s2, _) in zip(mine, mine[1:], strict=False)]
    print(f"{len(spans)} runs on {DEVICES} simulated GPUs; run times {min(lengths):.2f}-{max(lengths):.2f} s, "
          f"sum {sum(lengths):.1f} s; snakemake wall {wall:.1f} s")
    print(f"makespan {makespan:.2f} s; ideal sum/{DEVICES} {ideal:.2f} s; best greedy order (LPT) {lpt:.2f} s")
    print(f"idle gap on a device between runs: mean {sum(gaps) / max(len(gaps), 1):.3f} s, max {max(gaps, default=0):.3f} s")
    ratio = makespan / ideal
    print(f"makespan / (sum of run times / {DEVICES}) = {ratio:.3f}  (goal <= 1.1: {'OK' if ratio <= 1.1 else 'ABOVE GOAL'})")
    print(f"makespan / LPT makespan of the same runs = {makespan / lpt:.3f}")


if __name__ == "__main__":
    main()
