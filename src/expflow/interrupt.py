"""A graceful stop on a signal: the warning before a time limit (SIGUSR1), preemption or a
cancel (SIGTERM).

The warning: in a Slurm job, ``$EXPFLOW_STOP_BEFORE_END_S`` (the workflow's
``train.signal_s``) arms a timer that sends this process SIGUSR1 that long before the job's
end time (``scontrol``). Slurm's own ``--signal=USR1@<s>`` reaches every process of the job's
steps, and under Snakemake's executor plugin one of them is an inner Snakemake that SIGUSR1
would end; a job script of one's own may use it (or ``B:USR1`` with a shell that passes it on).

The handler only records the request. The loop finishes the step it is in, writes a
checkpoint at that step (mid-epoch included) and raises :class:`Interrupted` with the reason;
the run is left CRASHED with that reason recorded, so a retry (Snakemake's ``retries``) or
``expflow continue`` resumes from that step. A second SIGTERM while the run is stopping stops
it at once (:class:`Terminated`), as before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

TIMEOUT, PREEMPTED, CANCELLED, REQUEUED = "TIMEOUT", "PREEMPTED", "CANCELLED", "REQUEUED"
REASONS = (TIMEOUT, PREEMPTED, CANCELLED, REQUEUED)
# A signal can reach a rank twice for one event (Slurm signals every process of the step, and
# the launcher forwards it too): a SIGTERM this soon after the first is the same request.
DUPLICATE_S = 1.0


class Terminated(BaseException):
    """SIGTERM (a scheduler's cancel, or the launcher died) while a run was executing."""


class Interrupted(BaseException):
    """The run stopped on a signal after checkpointing at ``step`` (a BaseException: a
    runner's ``except Exception`` does not swallow it)."""

    def __init__(self, reason: str, step: int, signame: str):
        super().__init__(f"{reason} ({signame}): stopped at step {step}, checkpointed")
        self.reason, self.step, self.signame = reason, step, signame


class StopRequest:
    """What the signal handlers saw: the first signal, and when."""

    signals = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.time: float | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> StopRequest:
        """Handle SIGUSR1 and SIGTERM in this process (the main thread only)."""
        global _INSTALLED
        self._saved = {s: signal.signal(s, self._on_signal) for s in self.signals}
        _INSTALLED = self
        return self

    def uninstall(self) -> None:
        """After the run: SIGTERM as before, SIGUSR1 ignored (a late warning, e.g. while the
        process exits, must not kill a finished run's process: Python's own shutdown would
        put back the default action, which ends it)."""
        global _INSTALLED
        saved = getattr(self, "_saved", {})
        if signal.SIGTERM in saved:
            signal.signal(signal.SIGTERM, saved[signal.SIGTERM])
        if saved:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        _INSTALLED = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self.time = signum, time.monotonic()
        elif signum == signal.SIGTERM and time.monotonic() - (self.time or 0) > DUPLICATE_S:  # asked again: stop now
            raise Terminated(f"terminated by signal {signum} while stopping")

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def reason(self) -> str:
        return reason_for(self.signum)


_INSTALLED: StopRequest | None = None


def requested() -> bool:
    """Whether this process was asked to stop (a signal the run's handler saw): a runner's long
    ``validate`` or ``end_epoch`` may check it to cut its work short; the loop stops at the
    next step either way."""
    return _INSTALLED is not None and _INSTALLED.requested


def reason_for(signum: int | None) -> str:
    """TIMEOUT for the time limit's warning (SIGUSR1); for SIGTERM, what Slurm says of the
    job (PREEMPTED, TIMEOUT, CANCELLED, or REQUEUED: `scontrol requeue`), else CANCELLED."""
    if signum == signal.SIGUSR1:
        return TIMEOUT
    return slurm_job_state(os.environ.get("SLURM_JOB_ID")) or CANCELLED


STOP_BEFORE_END_ENV = "EXPFLOW_STOP_BEFORE_END_S"


def arm_time_limit_warning(environ: dict[str, str] | None = None) -> Any:
    """At a run's start in a Slurm job: remembers how often the job had been restarted (a
    later SIGTERM with more restarts is a requeue: :func:`slurm_job_state`) and, with
    ``$EXPFLOW_STOP_BEFORE_END_S``, arms a daemon timer that sends this process SIGUSR1 that
    many seconds before the job's end time. The timer, or None when not in such a job, the end
    is unknown, or it is nearer than that (the limit's SIGTERM still stops the run)."""
    import threading

    global _STARTED_RESTARTS
    environ = os.environ if environ is None else environ
    job_id = environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    fields = job_fields(job_id)
    _STARTED_RESTARTS = _as_int(fields.get("Restarts"))
    seconds = environ.get(STOP_BEFORE_END_ENV)
    if not seconds:
        return None
    try:
        lead = float(seconds)
    except ValueError:
        return None
    end = _timestamp(fields.get("EndTime"))
    if end is None:
        return None
    delay = end - time.time() - lead
    if delay <= 0:
        return None
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.daemon = True
    timer.start()
    return timer


# The job's restart count when this run started in it (arm_time_limit_warning); None: unknown.
_STARTED_RESTARTS: int | None = None


def _timestamp(value: str | None) -> float | None:
    """A time ``scontrol`` printed (the controller's local time) as a timestamp; None if none."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(value).timestamp() if value else None
    except ValueError:
        return None


def _as_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol show job -o``'s fields of the job (empty when scontrol cannot say)."""
    return dict(f.partition("=")[::2] for f in _scontrol_job(job_id))


def _scontrol_job(job_id: str) -> list[str]:
    try:
        return subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                              timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []


def slurm_job_state(job_id: str | None) -> str | None:
    """The job's state when it is one of :data:`REASONS` (``scontrol show job``), else None.
    REQUEUED: the job counts more restarts than when this run started in it
    (``SLURM_RESTART_COUNT`` where the job's environment has it, else what
    :func:`arm_time_limit_warning` saw): `scontrol requeue` (or a requeue on preemption) is
    ending it, with JobState COMPLETING, to queue it again under the same id."""
    if not job_id:
        return None
    fields = job_fields(job_id)
    state = fields.get("JobState")
    if state in (TIMEOUT, PREEMPTED, CANCELLED):
        return state
    restarts = _as_int(fields.get("Restarts"))
    started = _as_int(os.environ.get("SLURM_RESTART_COUNT"))
    started = _STARTED_RESTARTS if started is None else started
    if restarts is not None and restarts > (started or 0):
        return REQUEUED
    return None


class Forwarder:
    """In a launcher waiting for its training child (``expflow continue``, ``expflow run``):
    SIGUSR1 and SIGTERM are passed on to the child's training processes (torchrun's workers,
    not torchrun, which would end them) instead of ending the launcher, which waits on."""

    def __init__(self, pid: int, through_torchrun: bool):
        self.pid, self.through_torchrun = pid, through_torchrun
        self.received: list[int] = []
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> Forwarder:
        import threading

        import psutil  # here, not in the handler: the signal is passed on at once

        self._psutil = psutil

        if threading.current_thread() is threading.main_thread():
            self._saved = {s: signal.signal(s, self._forward) for s in StopRequest.signals}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._saved.items():
            signal.signal(s, signal.SIG_IGN if s == signal.SIGUSR1 else handler)  # a late warning: nothing to stop

    def _forward(self, signum: int, frame: Any) -> None:
        psutil = self._psutil
        self.received.append(signum)
        try:
            parent = psutil.Process(self.pid)
            targets = parent.children(recursive=True) if self.through_torchrun else [parent]
        except psutil.Error:
            return
        for p in targets:
            try:
                p.send_signal(signum)
            except psutil.Error:
                pass


def ignore_usr1() -> None:
    """In a launched child before exec: SIGUSR1 ignored (torchrun would die of it); expflow's
    ranks install their own handler."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def prepare_training_child() -> None:
    """``preexec_fn`` of a launcher's training child (torchrun, srun, a rank): SIGUSR1 ignored
    until the ranks handle it, and on Linux the child dies with the launcher."""
    ignore_usr1()
    if sys.platform == "linux":
        from expflow.outcome import die_with_parent

        die_with_parent()

