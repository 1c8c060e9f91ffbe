"""GPU lease throughput under load: N concurrent leaser processes (default 100) on a
simulated inventory (EXPFLOW_SIMULATED_GPUS=4x81920, EXPFLOW_LEASE_DIR in a temp dir).

    python benchmarks/lease_throughput.py [--procs 100] [--seed 0] [--two-gpu-share 0.1]

Each process imports expflow, waits at a start barrier (a pipe from this script, so
process start-up is not measured), leases its devices, holds them for a random time
(seeded; uniform 20-212 ms, mean 116 ms), records the interval it held them, releases,
and exits only once all are done (so exits are not measured either).

The bound is the devices': total device-seconds held / device slots (devices x
``--jobs-per-gpu``) is the ideal makespan, so the leases/s the devices allow is
N / ideal makespan. Both come from the recorded holds of this same run. Prints leases/s
next to that bound and their ratio, the idle gap on a device between one release and the
next grant, the CPU time the leasers spent per lease, how long the 2-GPU requests waited
(fairness), and the over-assignments reconstructed from the recorded intervals (a device
holding more than ``--jobs-per-gpu`` leases at one instant). Goal: ratio >= 0.8 with 0
over-assignments; the exit code is 1 when a device was over-assigned.

``--compare-src`` runs the same seeded leasers first against another expflow source tree,
e.g. the previous implementation: ``git worktree add /tmp/old HEAD~1`` then
``--compare-src /tmp/old/src``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.8


def child(count: int, mem_mb: int, max_jobs: int, hold: float) -> None:
    from expflow.gpu import lease_gpus

    print("ready", flush=True)
    if sys.stdin.read(1) != "g":
        raise SystemExit("no start signal")
    cpu0, t0 = time.process_time(), time.time()
    with lease_gpus(count, mem_mb, max_jobs, owner=f"bench-{os.getpid()}") as lease:
        start = time.time()
        time.sleep(hold)
        end = time.time()
    print(json.dumps({"devices": lease.devices, "start": start, "end": end, "asked": t0,
                      "cpu": time.process_time() - cpu0}), flush=True)
    sys.stdin.read()  # exit once every leaser is done: exits would load the CPU mid-run


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(int(len(values) * q), len(values) - 1)] if values else 0.0


def over_assignments(spans: list[tuple[float, float]], limit: int) -> int:
    """How many leases started on a device that already held ``limit`` leases."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])  # an end sorts before a start
    running = over = 0
    for _, delta in events:
        running += delta
        if delta > 0 and running > limit:
            over += 1
    return over


def run(args: argparse.Namespace, jobs: list[tuple[int, float]], src: Path) -> tuple[float, list[dict]]:
    """Start the leasers against the expflow in ``src``; returns the start time and their rows."""
    with tempfile.TemporaryDirectory(prefix="expflow-leases-") as tmp:
        env = dict(os.environ, EXPFLOW_SIMULATED_GPUS=args.gpus, EXPFLOW_LEASE_DIR=str(Path(tmp) / "leases"))
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env.pop("EXPFLOW_GRANTED_DEVICES", None)
        procs = [subprocess.Popen([sys.executable, __file__, "--src", str(src), "--child", str(count),
                                   str(args.mem_mb), str(args.jobs_per_gpu), repr(hold)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
                 for count, hold in jobs]
        try:
            for p in procs:  # the start barrier: every leaser has imported expflow and waits
                if p.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
                    raise SystemExit(f"a leaser did not start (exit code {p.wait()})")
            go = time.time()
            for p in procs:
                p.stdin.write("g")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            rows = []
            for p in procs:
                line = p.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    raise SystemExit(f"a leaser failed (exit code {p.wait()})")
                rows.append(json.loads(line))
            for p in procs:
                p.stdin.close()  # type: ignore[union-attr]
            for p in procs:
                if p.wait() != 0:
                    raise SystemExit(f"a leaser failed (exit code {p.returncode})")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    return go, rows


def report(args: argparse.Namespace, devices: int, go: float, rows: list[dict]) -> tuple[float, int]:
    slots = devices * args.jobs_per_gpu
    makespan = max(r["end"] for r in rows) - go
    device_seconds = sum((r["end"] - r["start"]) * len(r["devices"]) for r in rows)
    ideal = device_seconds / slots
    rate, bound = len(rows) / makespan, len(rows) / ideal
    over = 0
    gaps: list[float] = []
    for d in range(devices):
        mine = sorted((r["start"], r["end"]) for r in rows if d in r["devices"])
        over += over_assignments(mine, args.jobs_per_gpu)
        if args.jobs_per_gpu == 1:
            gaps += [s2 - e1 for (_, e1), (s2, _) in zip(mine, mine[1:], strict=False)]
    holds = [r["end"] - r["start"] for r in rows]
    print(f"{len(rows)} leasers on {args.gpus} (x{args.jobs_per_gpu} job(s) per device = {slots} slots); "
          f"holds {min(holds) * 1e3:.0f}-{max(holds) * 1e3:.0f} ms, mean {sum(holds) / len(holds) * 1e3:.0f} ms; "
          f"seed {args.seed}")
    print(f"makespan {makespan:.2f} s; ideal (device-seconds {device_seconds:.2f} / {slots} slots) {ideal:.2f} s")
    print(f"leases/s {rate:.1f}; the devices allow {bound:.1f}; ratio {rate / bound:.3f}  "
          f"(goal >= {GOAL}: {'OK' if rate / bound >= GOAL else 'BELOW GOAL'})")
    if gaps:
        print(f"idle gap on a device between release and next grant: median {percentile(gaps, 0.5) * 1e3:.1f} ms, "
              f"p99 {percentile(gaps, 0.99) * 1e3:.1f} ms, max {max(gaps) * 1e3:.1f} ms")
    cpu = [r["cpu"] for r in rows]
    print(f"leaser CPU time per lease (ask to release, waiting included): mean {sum(cpu) / len(cpu) * 1e3:.1f} ms, "
          f"max {max(cpu) * 1e3:.1f} ms")
    for count in sorted({len(r["devices"]) for r in rows}):
        waits = [r["start"] - r["asked"] for r in rows if len(r["devices"]) == count]
        print(f"wait for a lease of {count} device(s) ({len(waits)} leasers): median {percentile(waits, 0.5):.2f} s, "
              f"max {max(waits):.2f} s")
    print(f"over-assignments (a device holding more than {args.jobs_per_gpu} lease(s) at once): {over}  "
          f"({'OK' if over == 0 else 'FAIL'})")
    return rate / bound, over


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=100, help="concurrent leaser processes")
    ap.add_argument("--gpus", default="4x81920", help="EXPFLOW_SIMULATED_GPUS")
    ap.add_argument("--jobs-per-gpu", type=int, default=1, help="gpu.max_jobs_per_gpu of every leaser")
    ap.add_argument("--mem-mb", type=int, default=1000, help="gpu.mem_mb of every leaser")
    ap.add_argument("--two-gpu-share", type=float, default=0.0, help="share of leasers that ask for 2 devices")
    ap.add_argument("--hold-min", type=float, default=0.020)
    ap.add_argument("--hold-max", type=float, default=0.212)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-src", type=Path, action="append", default=[],
                    help="also run the same leasers against another expflow source tree (e.g. a git worktree's src/)")
    ap.add_argument("--src", type=Path, default=REPO / "src", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=4, metavar=("COUNT", "MEM", "JOBS", "HOLD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(args.src))
    if args.child:
        count, mem, jobs, hold = args.child
        child(int(count), int(mem), int(jobs), float(hold))
        return 0

    from expflow.gpu import parse_simulated

    devices = sum(n for n, _ in parse_simulated(args.gpus))
    rng = random.Random(args.seed)
    jobs = [(2 if rng.random() < args.two_gpu_share else 1, rng.uniform(args.hold_min, args.hold_max))
            for _ in range(args.procs)]
    failed = False
    for src in [*args.compare_src, args.src]:
        print(f"--- expflow from {src}")
        _, over = report(args, devices, *run(args, jobs, src.resolve()))
        failed = failed or over > 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
