"""The manifest's name, format and the one fact read before everything else: what the run
leases. Light on purpose (json only): ``expflow run`` reads its GPU request here and leases
its devices before it imports OmegaConf, the package and the trainer, so that a device a
train job freed is taken by the next one within ~0.1 s (benchmarks/gpu_packing.py).
Everything else about the manifest is read and written by :class:`expflow.package.SavePackage`.
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING: no typing or pathlib import on the way to the lease
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

FORMAT = "expflow.package/1"
MANIFEST = "manifest.json"
MANIFEST_LOCK = ".manifest.lock"  # serializes the manifest's read-modify-write cycles
RECORDS = "metrics/records.log"  # the run's metric records (expflow.package.records)

# What gpu.* asks for, as ``expflow.gpu.place_job`` takes it.
LEASE_KEYS = {"count": int, "mem_mb": int, "max_jobs_per_gpu": int, "allow_cpu": bool}
# Recorded states of a package `expflow run` (re)starts: new (QUEUED), or a run that died
# (CRASHED, or still RUNNING/PREPARING in the manifest of a killed process: a retry). A run
# still alive elsewhere is refused after the lease, by the usual checks.
STARTABLE = ("QUEUED", "CRASHED", "RUNNING", "PREPARING")


def lease_request_of(config: dict[str, Any]) -> dict[str, Any] | None:
    """The lease request of a resolved run config (its ``gpu`` section), for the manifest;
    None when a value is not of its type (then the run is leased from its config)."""
    gpu = config.get("gpu")
    if not isinstance(gpu, dict):
        return None
    request = {key: gpu.get(key) for key in LEASE_KEYS}
    return request if _well_typed(request) else None


def _well_typed(request: dict[str, Any]) -> bool:
    """Every lease key present with exactly its type (a bool is no count), and in its range
    (what the config's schema allows: an edited manifest leases nothing it would not)."""
    return (set(request) == set(LEASE_KEYS) and all(type(request[k]) is t for k, t in LEASE_KEYS.items())
            and request["count"] >= 0 and request["mem_mb"] >= 0 and request["max_jobs_per_gpu"] >= 1)


def lease_request(package_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The recorded lease request of a package that `expflow run` would start; None for
    anything else (no or a damaged manifest, another format, a COMPLETED run, a package
    written before the request was recorded): that run is leased the usual way,
    after its package has been checked, and any error is reported there."""
    try:
        with open(os.path.join(package_dir, MANIFEST), "rb") as f:
            m = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("status") not in STARTABLE:
        return None
    request = m.get("lease_request")
    return request if isinstance(request, dict) and _well_typed(request) else None


def is_package(path: str | os.PathLike[str]) -> bool:
    """A save-package directory: one that holds a manifest (a directory this user may not
    enter holds none)."""
    try:
        return os.path.isfile(os.path.join(path, MANIFEST))
    except OSError:
        return False


# ``expflow rerun`` writes each rerun here, <runs>/.reruns/<run id>-<n>/, apart from the runs
RERUNS = ".reruns"


def package_dirs(runs_dir: str | os.PathLike[str], *, reruns: bool = False) -> list[Path]:
    """The package directories directly under ``runs_dir``, sorted: the one way expflow
    lists the packages of a runs directory. Hidden entries are expflow's own (the code
    store, the workflow's logs, reruns); ``reruns`` adds the reruns of :data:`RERUNS`.
    OSError when ``runs_dir`` cannot be listed."""
    from pathlib import Path

    found = sorted(p for p in Path(runs_dir).iterdir() if not p.name.startswith(".") and is_package(p))
    if reruns and (Path(runs_dir) / RERUNS).is_dir():
        found += package_dirs(Path(runs_dir) / RERUNS)
    return found

