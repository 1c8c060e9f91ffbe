"""One tracker experiment per framework in the target project (SwanLab; offline by default,
so the sync machinery can upload it later).

Never a duplicate: ``<out>/swanlab/experiments.json`` records, per framework, the digest
of what was logged and the experiment it went to. A re-run with the same aligned data
writes nothing; changed data replaces the framework's offline run directory (one per
framework, always). The experiment id is derived from project, name and digest, so the
same data is the same experiment wherever it is logged from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from expflow.atomic import atomic_write_json
from expflow.errors import AlignError
from expflow.tracking.modes import SWANLAB_NATIVE
from expflow.tracking.secrets import find_credential, missing_message

STATE = "experiments.json"
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def experiment_id(project: str, name: str, digest: str) -> str:
    """21 lowercase letters and digits, like SwanLab's own experiment ids."""
    n = int(hashlib.sha256(f"{project}\0{name}\0{digest}".encode()).hexdigest(), 16)
    chars = []
    for _ in range(21):
        n, r = divmod(n, 36)
        chars.append(_ALPHABET[r])
    return "".join(chars)


def table_digest(table: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for metric, part in table.groupby("metric", observed=True, sort=True):
        h.update(str(metric).encode() + b"\0")
        h.update(part["step"].to_numpy(np.int64).tobytes())
        h.update(part["value"].to_numpy(np.float64).tobytes())
    return h.hexdigest()


def check_target(target: Any) -> None:
    """Fail before any source is read when the target cannot be written."""
    if target.mode == "cloud" and find_credential("swanlab") is None:
        raise AlignError(f"target.mode=cloud: {missing_message('swanlab')}")


def write_experiments(
    tables: Mapping[str, pd.DataFrame],
    names: Mapping[str, str],
    target: Any,
    out: Path,
) -> dict[str, dict[str, Any]]:
    """Log each framework's aligned table as one experiment; returns what happened per
    framework (``written`` or ``unchanged``, the id, the run directory when offline)."""
    return start_experiments(tables, names, target, out).finish()


class PendingExperiments:
    """Experiments being written (in worker processes where they run in parallel):
    ``finish()`` waits for them, records each in the state file and returns the result."""

    def __init__(self, state_path: Path, state: dict[str, Any], result: dict[str, dict[str, Any]],
                 jobs: list[tuple[str, str, str, str]], target: Any, runs: Iterator[Path | None], pool: Any = None,
                 workers: int = 0):
        self.state_path, self.state, self.result, self.jobs = state_path, state, result, jobs
        self.target, self.runs, self.pool = target, runs, pool
        self.workers = workers  # CPUs these writes keep busy meanwhile

    def finish(self) -> dict[str, dict[str, Any]]:
        try:
            for (label, name, digest, exp_id), run_dir in zip(self.jobs, self.runs, strict=True):
                entry = {"id": exp_id, "name": name, "project": self.target.project, "mode": self.target.mode,
                         "digest": digest, "dir": run_dir.name if run_dir else None}
                self.state[label] = entry
                atomic_write_json(self.state_path, self.state)  # after each one: an interrupted run loses nothing done
                self.result[label] = {**entry, "status": "written"}
        finally:
            if self.pool is not None:
                self.pool.shutdown()
        return self.result


def start_experiments(
    tables: Mapping[str, pd.DataFrame],
    names: Mapping[str, str],
    target: Any,
    out: Path,
) -> PendingExperiments:
    """Start writing the experiments whose data changed (the rest are ``unchanged``); with
    several to write and CPUs for them, each in its own process, so the caller can draw its
    plots meanwhile."""
    log_dir = out / "swanlab"
    state_path = log_dir / STATE
    if target.mode == "disabled":
        return PendingExperiments(state_path, {}, {}, [], target, iter(()))
    check_target(target)
    try:
        state: dict[str, Any] = json.loads(state_path.read_text())
    except (OSError, ValueError):
        state = {}
    result: dict[str, dict[str, Any]] = {}
    jobs: list[tuple[str, str, str, str]] = []  # label, name, digest, id
    for label, table in tables.items():
        name = names[label]
        digest = table_digest(table)
        exp_id = experiment_id(target.project, name, digest)
        old = state.get(label) or {}
        # Run directories are kept relative to log_dir: the output directory can move.
        old_dir = log_dir / old["dir"] if old.get("dir") else None
        if old.get("id") == exp_id and old.get("mode") == target.mode and (target.mode != "offline" or (old_dir and old_dir.exists())):
            result[label] = {**old, "status": "unchanged"}
            continue
        if old_dir is not None and old_dir.exists():
            shutil.rmtree(old_dir)  # the framework's previous run: replaced, never duplicated
        jobs.append((label, name, digest, exp_id))
    args = [(tables[label], target, name, exp_id, log_dir) for label, name, _, exp_id in jobs]
    workers = min(len(args), os.cpu_count() or 1, 4)
    if workers < 2 or target.mode != "offline":
        # SwanLab keeps one run per process: in this process, one after the other
        return PendingExperiments(state_path, state, result, jobs, target, (_log_experiment(*a) for a in args))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    futures = [pool.submit(_log_experiment, *a) for a in args]
    return PendingExperiments(state_path, state, result, jobs, target, (f.result() for f in futures), pool, workers)


def _quiet_settings(swanlab: Any) -> Any:
    """No environment probe: the experiment holds aligned data, not this machine's pip list,
    git state or hardware (collecting them takes ~1.3 s per experiment, a ``pip list``)."""
    try:
        return swanlab.Settings(probe={"hardware": False, "runtime": False, "requirements": False,
                                       "conda": False, "git": False, "monitor": False})
    except Exception:  # another swanlab version: its defaults
        return None


def _log_experiment(table: pd.DataFrame, target: Any, name: str, exp_id: str, log_dir: Path) -> Path | None:
    import swanlab

    mode = SWANLAB_NATIVE[target.mode]
    log_dir.mkdir(parents=True, exist_ok=True)
    for stale in log_dir.glob(f"run-*-{exp_id}"):
        shutil.rmtree(stale)  # a run of this very id left by an interrupted attempt
    if mode == "online":
        cred = find_credential("swanlab")
        assert cred is not None  # check_target
        swanlab.login(api_key=cred.value, host=target.host, save=False)
    wide = table.pivot(index="step", columns="metric", values="value").sort_index()
    steps = wide.index.to_numpy(np.int64)
    columns = [str(c) for c in wide.columns]
    values = wide.to_numpy(np.float64)
    if mode == "offline":  # the run files written directly: what swanlab writes, without its per-call cost
        return _write_offline(steps, columns, values, target, name, exp_id, log_dir)
    from expflow.sync.swanlab_sdk import scalar_key_cache

    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), \
            scalar_key_cache():
        run = swanlab.init(
            mode=mode,
            log_dir=str(log_dir),
            settings=_quiet_settings(swanlab),
            project=target.project,
            workspace=target.workspace,
            name=name,
            id=exp_id,
            reinit=True,
            config={"expflow.align": {"experiment": name}},
        )
        try:
            for i, step in enumerate(steps):
                row = values[i]
                present = ~np.isnan(row)
                if present.any():
                    run.log({columns[j]: float(row[j]) for j in np.flatnonzero(present)}, step=int(step))
        except BaseException:
            swanlab.finish(state="crashed")
            raise
        swanlab.finish()
    found = sorted(log_dir.glob(f"run-*-{exp_id}"))
    return found[-1] if found else None


def _write_offline(steps: np.ndarray, columns: list[str], values: np.ndarray, target: Any, name: str,
                   exp_id: str, log_dir: Path) -> Path:
    """The experiment as the run directory ``swanlab.init(mode="offline")`` and one ``run.log``
    per step would leave (keys cleaned as swanlab cleans them), written in one pass."""
    import time

    from expflow.sync.swanlab_sdk import clean_key, write_offline_run

    keys = [clean_key(c) for c in columns]
    now = time.time()

    def scalars() -> Iterator[tuple[str, int, float, float]]:
        for i, step in enumerate(steps.tolist()):
            row = values[i]
            for j in np.flatnonzero(~np.isnan(row)).tolist():
                if keys[j] is not None:
                    yield keys[j], step, float(row[j]), now

    start = {"id": exp_id, "project": target.project, "workspace": target.workspace, "name": name}
    return write_offline_run(log_dir, start, {"expflow.align": {"experiment": name}}, scalars())

