"""A leaser process for the concurrency tests: leases, logs its interval, releases.

    gpu_leaser.py OUT CYCLES HOLD [COUNT MEM_MB MAX_JOBS]

The logged interval lies inside the lease (taken after lease_gpus returns, before the
release), so two logged intervals that overlap on one device are a real double assignment.
"""

import json
import os
import random
import sys
import time

from expflow.gpu import lease_gpus

out, cycles, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
count, mem_mb, max_jobs = (int(a) for a in (sys.argv[4:7] if len(sys.argv) >= 7 else ("1", "1000", "1")))
rng = random.Random(os.getpid())
with open(out, "a") as f:
    for _ in range(cycles):
        with lease_gpus(count, mem_mb, max_jobs, owner=f"pid{os.getpid()}") as lease:
            start = time.time()
            time.sleep(rng.uniform(0, hold))
            end = time.time()
        f.write(json.dumps({"pid": os.getpid(), "devices": lease.devices, "mem_mb": mem_mb,
                            "start": start, "end": end}) + "\n")
        f.flush()
