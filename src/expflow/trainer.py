"""Training: materialize a save-package from a config, then run it (fresh or continued).

``train(cfg)`` is the plain function behind ``python -m expflow.train``;
``execute(pkg)`` runs a package in this process (one rank); ``launch(pkg)`` runs it
in child processes: under torchrun for DDP, or from the package's code snapshot
(continue and rerun).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from expflow.errors import CheckpointError, ExpflowError, PackageError, RunCrashed
from expflow.package import SavePackage, Status
from expflow.package.records import RecordWriter
from expflow.paths import (
    WRITE_ONLY_ERRNOS,
    WriteError,
    check_package_writable,
    check_writable,
    write_error,
)

CHECKPOINT_FORMAT = 1


@dataclass
class RunResult:
    package: SavePackage
    status: Status
    metrics: dict[str, float]


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
    pkg = create_package(cfg, overrides=overrides, package_dir=package_dir, hydra_files=hydra_files, claim=True)
    return run_package(pkg, from_snapshot=False)


def run_package(pkg: SavePackage, *, from_snapshot: bool = True, wait: bool = True,
                resume: str | int | None = None, completed: bool = False) -> RunResult:
    """Train a package to the end, or continue it after a crash; a COMPLETED package is left as
    it is unless ``completed`` (``expflow continue --force``).

    ``resume``: the checkpoint to continue from (a step or ``"latest"``); by default the
    latest once the package has been started. Leases the run's GPUs first (status QUEUED while
    waiting) and releases them on every exit path. This is what the workflow's train rule and
    ``expflow continue`` run, retries included.
    """
    from expflow.gpu import place_job

    status = pkg.status()
    if status is Status.COMPLETED and not completed:
        return RunResult(pkg, status, _last_metrics(pkg))
    pkg.check()  # a damaged file is one line before the package is touched (claimed, leased)
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
    with claimed, place_job(int(gpu.count), int(gpu.mem_mb), int(gpu.max_jobs_per_gpu), bool(gpu.allow_cpu),
                            owner=str(pkg.path.resolve()), on_wait=waiting, wait=wait) as placement:
        acquired = time.time()

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
            if from_snapshot or real_gpus or int(cfg.trainer.processes) > 1:
                # A child process: CUDA_VISIBLE_DEVICES must be set before CUDA starts.
                return launch(pkg, resume=resume, from_snapshot=from_snapshot, extra_env=placement.env)
            os.environ.update(placement.env)
            return execute(pkg, resume=resume)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            released = time.time()
            pkg.update_manifest(lambda m: m["leases"][-1].update(released=released))


def launch(
    pkg: SavePackage,
    *,
    resume: str | int | None = None,
    from_snapshot: bool = False,
    extra_env: dict[str, str] | None = None,
) -> RunResult:
    """Run ``pkg`` in child processes: torchrun for ``trainer.processes > 1``; with
    ``from_snapshot`` the package's own code comes first on the import path."""
    check_package_writable(pkg.path)  # a read-only or full package: one line here, no child started
    cfg = pkg.config()
    env = dict(os.environ, **(extra_env or {}))
    if from_snapshot:
        paths = [str((pkg.code_dir / p).resolve()) for p in OmegaConf.select(cfg, "code.pythonpath", default=["src", "."])]
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["PYTHONSAFEPATH"] = "1"  # the working directory must not shadow the snapshot
    worker = ["-m", "expflow.worker", str(pkg.path.resolve())]
    if resume is not None:
        worker += ["--resume", str(resume)]
    processes = int(OmegaConf.select(cfg, "trainer.processes", default=1))
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                     f"--nproc-per-node={processes}"]
    cmd = launcher + worker
    with pkg.claim():  # a QUEUED package (a rerun's): killed before the child starts, it shows CRASHED
        proc = subprocess.run(cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    status = pkg.status()
    if proc.returncode != 0 or status is not Status.COMPLETED:
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


def _die_with_parent() -> None:
    """In a launched child: receive SIGTERM when the launcher dies, even by SIGKILL,
    so no worker trains on unattended (the worker marks its package CRASHED)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM (a scheduler's cancel, or the launcher died) while a run was executing."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated(f"terminated by signal {signum}")


def _last_metrics(pkg: SavePackage) -> dict[str, float]:
    from expflow.package import last_values

    return last_values(pkg.scan_records().records)


# -- one rank ---------------------------------------------------------------------
class Heartbeat:
    """Rewrites the package's heartbeat file every ``interval`` seconds (rank 0)."""

    def __init__(self, pkg: SavePackage, interval: float):
        self.pkg = pkg
        self.interval = interval
        self.fields: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="expflow-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.pkg.beat(**self.fields)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.pkg.beat(**self.fields)
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def execute(pkg: SavePackage, *, resume: str | int | None = None) -> RunResult:
    """Run ``pkg`` in this process as one rank (torchrun sets RANK/WORLD_SIZE).

    ``resume``: None starts from scratch; ``"latest"`` or a step continues from that
    checkpoint (from scratch when the package has none yet).
    """
    import signal

    from expflow.distributed import DistEnv
    from expflow.runlog import RankLogs

    env = DistEnv.from_env()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    with RankLogs(pkg.logs_dir, env.rank) as logs:
        try:
            return _execute(pkg, resume, env, logs)
        except RunCrashed:
            raise
        except WriteError as e:
            raise write_error(e, hint=_write_hint(pkg, e)) from None
        except ExpflowError:
            raise
        except BaseException as e:
            if isinstance(e, OSError) and e.errno in WRITE_ONLY_ERRNOS:  # a write outside expflow's own
                raise write_error(e, hint=_write_hint(pkg, e)) from None
            assert logs.err is not None
            try:
                logs.err.write(traceback.format_exc())
                logs.err.flush()
            except OSError:
                pass
            if isinstance(e, (KeyboardInterrupt, Terminated)):
                raise RunCrashed(f"run {pkg.run_id} interrupted: {e or 'Ctrl-C'} (continue it with `expflow continue {pkg.path}`)") from None
            raise RunCrashed(
                f"run {pkg.run_id} crashed: {e.__class__.__name__}: {e} (traceback in {logs.err_path})"
            ) from None


def _execute(pkg: SavePackage, resume: str | int | None, env: Any, logs: Any) -> RunResult:
    import torch

    from expflow import distributed
    from expflow.gpu import resolve_device
    from expflow.seeding import seed_everything

    cfg = pkg.config()
    main = env.is_main
    # Find and verify the checkpoint before touching the package: a bad one must not
    # turn a package into CRASHED or append anything to it.
    checkpoint = _checkpoint_to_resume(pkg, resume) if resume is not None else None
    writer = pkg.record_writer() if main else None
    heartbeat = Heartbeat(pkg, float(cfg.trainer.heartbeat_s)) if main else None
    tracker = None
    failed = False
    try:
        if main:
            kind = "continue" if resume is not None else "train"
            pkg.set_status(Status.PREPARING, error=None, note=kind)
            if resume is None:
                pkg.update_manifest(lambda m: m.setdefault("attempts", []).append({"kind": kind, "time": _now()}))
            heartbeat.start()  # type: ignore[union-attr]
        device = resolve_device(cfg.trainer.device, int(cfg.gpu.count), bool(cfg.gpu.allow_cpu), env.local_rank)
        distributed.init(env, device)
        if cfg.trainer.threads:
            torch.set_num_threads(int(cfg.trainer.threads))
        seed_everything(int(cfg.seed), bool(cfg.trainer.deterministic), cuda=device.type == "cuda")
        run = _Run(pkg, cfg, env, device, writer, logs, heartbeat)
        tracker = run.tracker
        if resume is not None:
            run.restore(checkpoint)
        if main:
            pkg.set_status(Status.RUNNING, device=str(device), world_size=env.world_size)
        run.loop()
        distributed.barrier()
        if main:
            writer.flush()  # type: ignore[union-attr]  # every record is on disk before COMPLETED
            pkg.set_status(Status.COMPLETED, progress=run.progress())
            tracker.finish("COMPLETED")
        return RunResult(pkg, Status.COMPLETED, dict(run.state.metrics))
    except BaseException as e:
        failed = True
        if main:
            try:
                pkg.set_status(
                    Status.CRASHED,
                    error={"type": e.__class__.__name__, "message": str(e)[:2000], "log": str(logs.err_path)},
                )
            except Exception:
                pass
            if tracker is not None:
                try:
                    tracker.finish("CRASHED")
                except Exception:
                    pass
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if writer is not None:
            try:
                writer.close()
            except Exception:
                if not failed:
                    raise
                # else the run's own error is the one to report (often the same full disk)
        distributed.shutdown()


class _Run:
    """The objects of one training run and its loop."""

    def __init__(self, pkg: SavePackage, cfg: DictConfig, env: Any, device: Any,
                 writer: RecordWriter | None, logs: Any, heartbeat: Heartbeat | None = None):
        import torch
        from hydra.utils import instantiate

        from expflow.data import Shard, train_loader, val_loader
        from expflow.lifecycle import TrainState
        from expflow.runlog import ProgressReporter
        from expflow.tracking import build_tracker

        self.pkg, self.cfg, self.env, self.device, self.writer = pkg, cfg, env, device, writer
        self.heartbeat = heartbeat
        self.data = instantiate(cfg.dataset)
        model = instantiate(cfg.model).to(device)
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.model = model
        self.optimizer = instantiate(cfg.optim.optimizer)(model.parameters())
        sched = cfg.optim.get("scheduler")
        self.scheduler = instantiate(sched)(self.optimizer) if sched else None
        self.lifecycle = instantiate(cfg.lifecycle)
        # Rank 0 only (a NullTracker elsewhere); a failing tracker never stops training.
        self.tracker = build_tracker(cfg.tracker, is_main=env.is_main, run_dir=pkg.tracker_dir, run_id=pkg.run_id)
        if env.is_main:
            self.tracker.log_config(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        shard = Shard(env.rank, env.world_size)
        self.train_dl, self.sampler = train_loader(self.data, int(cfg.seed), shard)
        self.val_dl = val_loader(self.data, shard)
        self.steps_per_epoch = len(self.train_dl)
        self.state = TrainState(config=cfg, max_epochs=int(cfg.trainer.max_epochs), rank=env.rank)
        self.reporter = ProgressReporter(
            str(cfg.trainer.progress), logs, self.steps_per_epoch * self.state.max_epochs,
            pkg.path.name, enabled=env.is_main,
        )
        self._torch = torch

    # -- checkpoints -------------------------------------------------------------
    def _unwrapped(self) -> Any:
        return getattr(self.model, "module", self.model)

    def restore(self, checkpoint: tuple[Any, dict[str, Any]] | None) -> None:
        """Load a verified checkpoint (None: none yet, start over) and roll the records back."""
        from expflow.seeding import restore_rng_state

        store = self.pkg.checkpoints()
        if checkpoint is None:
            start = -1  # killed before the first checkpoint: start over, drop its records
            self.reporter.line(f"[{self.pkg.path.name}] no checkpoint yet: starting from the beginning")
        else:
            info, ck = checkpoint
            self._unwrapped().load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            if self.scheduler is not None and ck.get("scheduler") is not None:
                self.scheduler.load_state_dict(ck["scheduler"])
            self.lifecycle.load_state_dict(ck.get("lifecycle") or {})
            rng = ck["rng"]
            restore_rng_state(rng[self.env.rank] if len(rng) == self.env.world_size else rng[0])
            self.state.epoch, self.state.step = int(ck["epoch"]), int(ck["step"])
            self.state.metrics = dict(ck.get("metrics") or {})
            start = info.step
            self.reporter.line(f"[{self.pkg.path.name}] continuing from checkpoint at step {info.step} (epoch {info.epoch})")
        if self.env.is_main:
            store.truncate_after(start)
            assert self.writer is not None
            self.writer.rollback(start)
            self.pkg.update_manifest(lambda m: m.setdefault("attempts", []).append(
                {"kind": "continue", "from_step": start, "time": _now()}))

    def save(self, hold: bool) -> None:
        from expflow import distributed
        from expflow.seeding import capture_rng_state

        rng = distributed.gather_objects(capture_rng_state())
        if self.env.is_main:
            assert self.writer is not None
            self.writer.flush()  # a checkpoint never exists before the records it covers are on disk
            state = {
                "format": CHECKPOINT_FORMAT,
                "model": self._unwrapped().state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "lifecycle": self.lifecycle.state_dict(),
                "rng": rng,
                "world_size": self.env.world_size,
                "step": self.state.step,
                "epoch": self.state.epoch,
                "metrics": dict(self.state.metrics),
                "config": OmegaConf.to_container(self.cfg, resolve=True),
            }
            self.pkg.checkpoints().save(state, step=self.state.step, epoch=self.state.epoch, hold=hold)
        distributed.barrier()

    # -- metrics ---------------------------------------------------------------
    def log(self, values: dict[str, float], epoch: int) -> None:
        """Record ``values`` at the current step (rank 0): queued for the package's record
        writer (microseconds; acknowledged at the next checkpoint or ``flush``), then mirrored
        to the tracker."""
        self.state.metrics.update(values)
        if self.writer is not None:
            self.writer.log(values, step=self.state.step, epoch=epoch)
            self.tracker.log(values, self.state.step)

    def progress(self) -> dict[str, Any]:
        return {"epoch": self.state.epoch, "step": self.state.step, "max_epochs": self.state.max_epochs,
                "steps_per_epoch": self.steps_per_epoch}

    # -- the loop ------------------------------------------------------------------
    def loop(self) -> None:
        from expflow.lifecycle import SKIP

        lc, state = self.lifecycle, self.state
        try:
            if lc.before_run(state) != SKIP:
                while lc.need_continue(state):
                    self.one_epoch()
            lc.after_run(state)
        finally:
            self.reporter.close()

    def one_epoch(self) -> None:
        from expflow import distributed
        from expflow.data import to_device
        from expflow.lifecycle import SKIP
        from expflow.runlog import format_metrics

        torch, lc, state, cfg = self._torch, self.lifecycle, self.state, self.cfg
        epoch_no = state.epoch + 1
        if lc.before_epoch(state) != SKIP:
            self.sampler.set_epoch(state.epoch)
            self.model.train()
            loss_sum = torch.zeros((), device=self.device)
            count = torch.zeros((), device=self.device)
            log_every = int(cfg.trainer.log_every_n_steps)
            for b, batch in enumerate(self.train_dl):
                state.batch = b
                if lc.before_train_step(state) == SKIP:
                    lc.after_train_step(state)
                    continue
                x, y = to_device(batch, self.device)  # type: ignore[misc]
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.data.task.loss(self.model(x), y)
                loss.backward()
                if cfg.trainer.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(cfg.trainer.grad_clip))
                self.optimizer.step()
                if self.scheduler is not None and cfg.optim.scheduler_interval == "step":
                    self.scheduler.step()
                state.step += 1
                n = torch.tensor(float(len(y)), device=self.device)
                loss_sum += loss.detach() * n
                count += n
                if state.step % log_every == 0:
                    mean = distributed.all_reduce_sum(loss.detach()) / self.env.world_size
                    self.log({"train/loss": mean.item(), "train/lr": self.optimizer.param_groups[0]["lr"]}, epoch_no)
                lc.after_train_step(state)
                self.reporter.advance(state.step, f"epoch {epoch_no}/{state.max_epochs}")
            if self.scheduler is not None and cfg.optim.scheduler_interval == "epoch":
                self.scheduler.step()
            total = distributed.all_reduce_sum(torch.stack([loss_sum, count]))
            epoch_values = {"train/epoch_loss": (total[0] / total[1].clamp(min=1)).item()}
        else:
            epoch_values = {}
        state.epoch = epoch_no
        state.batch = 0
        lc.after_epoch(state)
        if lc.need_validation(state):
            if lc.before_validation(state) != SKIP:
                epoch_values.update(self.validate())
            lc.after_validation(state)
        if epoch_values:
            self.log(epoch_values, epoch_no)
        self.reporter.line(
            f"[{self.pkg.path.name}] epoch {epoch_no}/{state.max_epochs} step {state.step} {format_metrics(epoch_values)}"
        )
        if lc.need_save(state):
            if lc.before_save(state) != SKIP:
                self.save(hold=bool(lc.hold_checkpoint(state)))
            lc.after_save(state)
        if self.env.is_main:
            self.pkg.update_manifest(lambda m: m.__setitem__("progress", self.progress()))
        if self.heartbeat is not None:
            self.heartbeat.fields = {"step": state.step, "epoch": state.epoch}

    def validate(self) -> dict[str, float]:
        from expflow import distributed
        from expflow.data import to_device

        torch = self._torch
        self.model.eval()
        sums: dict[str, Any] = {}
        count = torch.zeros((), device=self.device)
        with torch.no_grad():
            for batch in self.val_dl:
                x, y = to_device(batch, self.device)  # type: ignore[misc]
                for k, v in self.data.task.metric_sums(self.model(x), y).items():
                    sums[k] = sums.get(k, 0) + v.detach().to(torch.float64)
                count += len(y)
        keys = sorted(sums)
        stacked = distributed.all_reduce_sum(torch.stack([*(sums[k] for k in keys), count.to(torch.float64)]))
        n = stacked[-1].clamp(min=1)
        return {f"val/{k}": (stacked[i] / n).item() for i, k in enumerate(keys)}


def _checkpoint_to_resume(pkg: SavePackage, resume: str | int) -> tuple[Any, dict[str, Any]] | None:
    store = pkg.checkpoints()
    if resume == "latest" and not store.list():
        return None
    info = store.find(None if resume == "latest" else int(resume))
    ck = store.load(info, map_location="cpu")
    if ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{store.dir / info.file}: unknown checkpoint format {ck.get('format')!r}")
    return info, ck


def _write_hint(pkg: SavePackage, error: OSError) -> str:
    fix = "free some space" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    return (f"the run stopped with its checkpoints and records intact; {fix}, then "
            f"`expflow continue {pkg.path}`")


def _now() -> str:
    from expflow.package import utc_now

    return utc_now()
