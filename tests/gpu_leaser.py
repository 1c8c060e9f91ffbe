"""A leaser process for the concurrency tests: leases, logs its interval, releases."""

import json
import os
import random
import sys
import time

from expflow.gpu import lease_gpus

out, cycles, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(os.getpid())
with open(out, "a") as f:
    for _ in range(cycles):
        with lease_gpus(1, 1000, 1, owner=f"pid{os.getpid()}", poll=0.005) as lease:
            start = time.time()
            time.sleep(rng.uniform(0, hold))
            end = time.time()
        f.write(json.dumps({"pid": os.getpid(), "devices": lease.devices, "start": start, "end": end}) + "\n")
        f.flush()
