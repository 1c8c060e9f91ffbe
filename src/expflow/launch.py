"""Launching a package: materialize it from a config, lease its GPUs, run it (fresh or continued).

``train(cfg)`` is the plain function behind ``python -m expflow.train``; ``run_package(pkg)``
is what the workflow's train rule and ``expflow continue`` run; ``launch(pkg)`` runs a package
in child processes (torchrun for DDP, or from the package's code snapshot for continue and
rerun). A Python runner's rank executes in :mod:`expflow.rank`; a command run
(``runner=command``) is supervised by :mod:`expflow.runner.command`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from expflow.errors import ExpflowError, PackageError, RunCrashed
from expflow.outcome import RunResult
from expflow.package import SavePackage, Status
from expflow.paths import check_package_writable, check_writable

if TYPE_CHECKING:
    from expflow.gpu import Placement


# -- entry points -----------------------------------------------------------------
def create_package(
    cfg: DictConfig,
    *,
    overrides: Sequence[str] = (),
    package_dir: str | os.PathLike[str] | None = None,
    hydra_files: dict[str, str] | None = None,
    claim: bool = False,
) -> SavePackage:
    """Validate ``cfg`` and materialize its package (code snapshot before training starts).

    ``claim``: this process runs the package next (a kill before it leaves QUEUED shows
    CRASHED); without it the package is pending, for ``expflow run`` later."""
    from expflow.config import resolve, setup, validate_config

    setup()
    validate_config(cfg)
    cfg = cfg.copy()
    if package_dir is None:
        cfg.run_id = str(cfg.run_id)  # resolve the generated id once
        package_dir = Path(str(cfg.paths.runs)) / cfg.run_id
    else:
        cfg.run_id = Path(package_dir).name
    container = resolve(cfg)
    code = container["code"]
    # Where the package and the code store go must take files: one line naming the path if not.
    check_writable(Path(package_dir).parent, what="paths.runs")
    check_writable(container["paths"]["store"], what="paths.store")
    return SavePackage.create(
        package_dir,
        config=container,
        overrides=overrides,
        store=container["paths"]["store"],
        code_root=code["root"],
        code_include=code["include"],
        code_exclude=code["exclude"],
        hydra_files=hydra_files,
        claim=claim,
    )


def train(
    cfg: DictConfig,
    *,
    overrides: Sequence[str] = (),
    package_dir: str | os.PathLike[str] | None = None,
    hydra_files: dict[str, str] | None = None,
) -> RunResult:
    """Materialize the package for ``cfg`` and train it to the end."""
    check_nodes(cfg)
    pkg = create_package(cfg, overrides=overrides, package_dir=package_dir, hydra_files=hydra_files, claim=True)
    return run_package(pkg, from_snapshot=False)


def run_package(pkg: SavePackage, *, from_snapshot: bool = True, wait: bool = True,
                resume: str | int | None = None, completed: bool = False,
                placement: Placement | None = None) -> RunResult:
    """Train a package to the end, or continue it after a crash; a COMPLETED package is left as
    it is unless ``completed`` (``expflow continue --force``).

    ``resume``: the checkpoint to continue from (a step or ``"latest"``); by default the
    latest once the package has been started. Leases the run's GPUs first (status QUEUED while
    waiting) and releases them on every exit path. This is what the workflow's train rule and
    ``expflow continue`` run, retries included. ``placement``: GPUs the caller leased already
    from the package's recorded request (``expflow run`` leases before its heavy imports);
    the caller releases them.
    """
    from expflow.gpu import place_job
    from expflow.runner import is_command
    from expflow.runner.command import run_command

    status = pkg.status()
    if status.finished and not completed:
        return RunResult(pkg, status, _last_metrics(pkg))
    pkg.check()  # a damaged file is one line before the package is touched (claimed, leased)
    check_nodes(pkg.config())  # a run across nodes outside an allocation of them: one line, untouched
    if status.active and pkg.manifest().get("attempts"):
        raise PackageError(f"{pkg.path}: the run is {status.value} in a live process")
    check_package_writable(pkg.path)  # before anything is written to it
    cfg = pkg.config()
    if resume is None:
        resume = "latest" if pkg.manifest().get("attempts") else None
    gpu = cfg.gpu

    def waiting() -> None:
        pkg.set_status(Status.QUEUED, note=f"waiting for {gpu.count} GPU(s)", claim=True)

    # Claimed (QUEUED) from here: killed before the run leaves QUEUED, the package shows CRASHED.
    claimed = pkg.claim()
    owned = placement is None
    leased = (nullcontext(placement) if placement is not None else
              place_job(int(gpu.count), int(gpu.mem_mb), int(gpu.max_jobs_per_gpu), bool(gpu.allow_cpu),
                        owner=str(pkg.path.resolve()), on_wait=waiting, wait=wait))
    with claimed, leased as placement:
        acquired = placement.acquired

        def record_lease(m: dict[str, Any]) -> None:
            m["gpus"] = placement.gpus
            m["lease"] = placement.lease.to_json() if placement.lease else None
            m.setdefault("leases", []).append({"gpus": placement.gpus, "acquired": acquired, "released": None})
            job = scheduler_job()
            if job:
                m.setdefault("scheduler_jobs", []).append(job)

        pkg.update_manifest(record_lease)
        real_gpus = placement.lease is not None and not placement.simulated
        saved = {k: os.environ.get(k) for k in placement.env}
        try:
            if is_command(cfg):  # the program is the child; this process supervises it
                return run_command(pkg, resume=resume, extra_env=placement.env)
            # (A package made before trainer.nodes existed has none: one node.)
            across = int(OmegaConf.select(cfg, "trainer.processes", default=1)) > 1 or \
                int(OmegaConf.select(cfg, "trainer.nodes", default=1)) > 1
            if from_snapshot or real_gpus or across:
                # A child process: CUDA_VISIBLE_DEVICES must be set before CUDA starts.
                return launch(pkg, resume=resume, from_snapshot=from_snapshot, extra_env=placement.env)
            os.environ.update(placement.env)
            from expflow.rank import execute

            return execute(pkg, resume=resume)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            if owned:  # a caller's placement: the caller records its release, when it releases
                record_release(pkg)


def check_nodes(cfg: DictConfig) -> None:
    """``trainer.nodes > 1`` needs a Slurm allocation of that many nodes around this process:
    one line naming the key when there is none (:func:`expflow.nodes.allocation`)."""
    nodes = OmegaConf.select(cfg, "trainer.nodes", default=1)
    if isinstance(nodes, int) and nodes > 1:
        from expflow.nodes import allocation

        allocation(nodes)


def asked_devices(pkg: SavePackage) -> tuple[int, str | None]:
    """The GPUs the run's config asks for (gpu.count) and its trainer.device; (0, None) when
    the config is unreadable (the manifest says the rest)."""
    from expflow.package.package import read_plain_config

    try:
        cfg = read_plain_config(pkg.config_path)
    except ExpflowError:
        return 0, None
    gpu, trainer = (cfg.get(k) if isinstance(cfg.get(k), dict) else {} for k in ("gpu", "trainer"))
    try:
        return int(gpu.get("count") or 0), trainer.get("device")
    except (TypeError, ValueError):
        return 0, None


def fallback_note(pkg: SavePackage) -> str | None:
    """The CPU fallback line of a package that has run (None when it did not fall back)."""
    from expflow.gpu import cpu_fallback_line

    m = pkg.manifest()
    gpu_count, trainer_device = asked_devices(pkg)
    return cpu_fallback_line(m.get("device"), m.get("gpus"), gpu_count, trainer_device)


def record_release(pkg: SavePackage, *, quiet: bool = False) -> None:
    """Record in the manifest that the run's last lease is released (now); nothing when no
    lease is open there (the run stopped before it recorded one: nothing is written, so a
    read-only package stays untouched). ``quiet``: another error is on its way out, and a
    failure to record must not hide it."""
    released = time.time()

    def change(m: dict[str, Any]) -> None:
        if m.get("leases") and m["leases"][-1].get("released") is None:
            m["leases"][-1]["released"] = released

    try:
        leases = pkg.manifest().get("leases")
        if leases and leases[-1].get("released") is None:
            pkg.update_manifest(change)
    except (ExpflowError, OSError):
        if not quiet:
            raise


def launch(
    pkg: SavePackage,
    *,
    resume: str | int | None = None,
    from_snapshot: bool = False,
    extra_env: dict[str, str] | None = None,
) -> RunResult:
    """Run ``pkg`` in child processes: torchrun for ``trainer.processes > 1``, one per node of
    the Slurm allocation for ``trainer.nodes > 1`` (:mod:`expflow.nodes`); with
    ``from_snapshot`` the package's own code comes first on the import path."""
    from expflow.runner import is_command

    check_package_writable(pkg.path)  # a read-only or full package: one line here, no child started
    cfg = pkg.config()
    if is_command(cfg):  # a program: it runs from the snapshot anyway
        from expflow.runner.command import run_command

        return run_command(pkg, resume=resume, extra_env=extra_env)
    env = dict(os.environ, **(extra_env or {}))
    if from_snapshot:
        env = pkg.snapshot_env(env, cfg)
    worker = ["-m", "expflow.worker", str(pkg.path.resolve())]
    if resume is not None:
        worker += ["--resume", str(resume)]
    processes = int(OmegaConf.select(cfg, "trainer.processes", default=1))
    nodes = int(OmegaConf.select(cfg, "trainer.nodes", default=1))
    if nodes > 1:  # one torchrun per node of the Slurm allocation, through srun (expflow.nodes)
        from expflow import nodes as multinode

        alloc = multinode.allocation(nodes, env)
        cmd = multinode.srun_command(alloc, nodes, processes, int(cfg.gpu.count), worker[2:])
        env = multinode.srun_env(env)
    elif processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc-per-node={processes}", *worker]
    else:
        cmd = [sys.executable, *worker]
    from expflow.interrupt import Forwarder, prepare_training_child

    with pkg.claim():  # a QUEUED package (a rerun's): killed before the child starts, it shows CRASHED
        child = subprocess.Popen(cmd, env=env, preexec_fn=prepare_training_child)
        # A stop signal: to the ranks (srun passes it to every node's agent, which does so).
        with Forwarder(child.pid, through_torchrun=processes > 1 and nodes == 1):
            child.wait()
        proc = child
    status = pkg.status()
    # A stop signal that came as a finished run's process was exiting ends nothing.
    late_signal = proc.returncode in (-signal.SIGUSR1, -signal.SIGTERM) and status in (Status.COMPLETED, Status.PRUNED)
    if (proc.returncode != 0 and not late_signal) or not status.finished:
        error = pkg.manifest().get("error") or {}
        detail = f"{error.get('type')}: {error.get('message')}" if error else f"exit code {proc.returncode}"
        error = RunCrashed(f"run {pkg.run_id} crashed: {detail} (logs in {pkg.logs_dir})")
        # A child that exited with an error code printed its own one-line error; one killed
        # by a signal (negative code) printed nothing, so this error must be shown.
        error.reported = proc.returncode > 0
        raise error
    return RunResult(pkg, status, _last_metrics(pkg))


def scheduler_job(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The Slurm job this process runs in (id, node, granted GPUs), or None outside Slurm."""
    environ = os.environ if environ is None else environ
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job_id:
        return None
    return {
        "scheduler": "slurm",
        "job_id": job_id,
        "node": environ.get("SLURMD_NODENAME") or environ.get("SLURM_NODELIST"),
        "granted_gpus": environ.get("EXPFLOW_GRANTED_DEVICES", environ.get("CUDA_VISIBLE_DEVICES")),
        "time": _now(),
    }


def _last_metrics(pkg: SavePackage) -> dict[str, float]:
    from expflow.package import last_values

    return last_values(pkg.scan_records().records)


def _now() -> str:
    from expflow.package import utc_now

    return utc_now()
