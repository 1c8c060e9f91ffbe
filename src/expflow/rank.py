"""Executing one rank of a package in this process (torchrun sets RANK/WORLD_SIZE).

Sets the status (PREPARING, RUNNING, then COMPLETED or CRASHED with the error), beats the
heartbeat, seeds every RNG, initializes torch.distributed, and runs the loop
(:class:`expflow.loop.Loop`) over the config's runner.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import traceback
from typing import Any

from expflow.errors import ExpflowError, RunCrashed
from expflow.interrupt import Interrupted, StopRequest, Terminated, arm_time_limit_warning
from expflow.outcome import RunResult
from expflow.package import SavePackage, Status, utc_now
from expflow.paths import WRITE_ONLY_ERRNOS, WriteError, write_error


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
    from expflow.distributed import DistEnv
    from expflow.runlog import RankLogs

    env = DistEnv.from_env()
    stop = StopRequest()
    timer = None
    if threading.current_thread() is threading.main_thread():
        stop.install()  # SIGUSR1 / SIGTERM: checkpoint at the step, then stop (expflow.interrupt)
        timer = arm_time_limit_warning()  # a Slurm job's own warning before its end
    with RankLogs(pkg.logs_dir, env.rank) as logs:
        try:
            try:
                return _execute(pkg, resume, env, logs, stop)
            finally:
                if timer is not None:
                    timer.cancel()
                stop.uninstall()
        except RunCrashed:
            raise
        except Interrupted as e:
            raise RunCrashed(f"run {pkg.run_id} interrupted: {e} (continue it with `expflow continue {pkg.path}`; "
                             "a workflow retry does)") from None
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


def _execute(pkg: SavePackage, resume: str | int | None, env: Any, logs: Any, stop: StopRequest) -> RunResult:
    import torch

    from expflow import distributed
    from expflow.gpu import resolve_device
    from expflow.loop import Loop, checkpoint_to_resume
    from expflow.package.environment import record_attempt
    from expflow.seeding import seed_everything

    cfg = pkg.config()
    main = env.is_main
    # Find and verify the checkpoint before touching the package: a bad one must not
    # turn a package into CRASHED or append anything to it.
    checkpoint = checkpoint_to_resume(pkg, resume) if resume is not None else None
    # Not woken per record: the loop flushes before every checkpoint it writes (loop.py).
    writer = pkg.record_writer(wake=False) if main else None
    heartbeat = Heartbeat(pkg, float(cfg.trainer.heartbeat_s)) if main else None
    tracker = None
    failed = False
    try:
        if main:
            kind = "continue" if resume is not None else "train"
            pkg.set_status(Status.PREPARING, error=None, note=kind)
            if resume is None:
                pkg.update_manifest(lambda m: m.setdefault("attempts", []).append({"kind": kind, "time": utc_now()}))
            record_attempt(pkg, (pkg.manifest().get("code") or {}).get("store"))
            heartbeat.start()  # type: ignore[union-attr]
        device = resolve_device(cfg.trainer.device, int(cfg.gpu.count), bool(cfg.gpu.allow_cpu), env.local_rank)
        distributed.init(env, device)
        # Where each rank runs (a run across nodes: which node's ranks are which), for the manifest.
        host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        hosts = distributed.gather_objects(host)
        if env.distributed:  # every rank's log says where it ran
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            gpus = f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""
            print(f"rank {env.rank} of {env.world_size} on {host} (local rank {env.local_rank}, {device}{gpus})",
                  flush=True)
        if cfg.trainer.threads:
            torch.set_num_threads(int(cfg.trainer.threads))
        seed_everything(int(cfg.seed), bool(cfg.trainer.deterministic), cuda=device.type == "cuda")
        run = Loop(pkg, cfg, env, device, writer, logs, heartbeat, stop=stop)
        tracker = run.tracker
        if resume is not None:
            run.restore(checkpoint)
        if main:
            pkg.set_status(Status.RUNNING, device=str(device), world_size=env.world_size, rank_hosts=hosts)
        run.run()
        distributed.barrier()
        final = Status.PRUNED if run.trial is not None and run.trial.pruned else Status.COMPLETED
        if main:
            writer.flush()  # type: ignore[union-attr]  # every record is on disk before COMPLETED
            extra = {"pruned": run.trial.record()} if final is Status.PRUNED else {}  # type: ignore[union-attr]
            pkg.set_status(final, progress=run.progress(), **extra)
            tracker.finish(final.value)
        return RunResult(pkg, final, dict(run.state.metrics))
    except BaseException as e:
        failed = True
        if main:
            try:
                if isinstance(e, Interrupted):  # checkpointed at e.step: the reason, for status and retries
                    pkg.record_stop(e.reason, e.signame, e.step, str(e), str(logs.err_path))
                else:
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


def _write_hint(pkg: SavePackage, error: OSError) -> str:
    fix = "free some space" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    return (f"the run stopped with its checkpoints and records intact; {fix}, then "
            f"`expflow continue {pkg.path}`")


