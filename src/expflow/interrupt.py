"""A graceful stop on a signal: the warning before a time limit (SIGUSR1, which a Slurm job
asks for with ``--signal=USR1@<seconds>``), preemption or a cancel (SIGTERM).

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
import time
from typing import Any

TIMEOUT, PREEMPTED, CANCELLED = "TIMEOUT", "PREEMPTED", "CANCELLED"
REASONS = (TIMEOUT, PREEMPTED, CANCELLED)
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
        for s in self.signals:
            signal.signal(s, self._on_signal)
        _INSTALLED = self
        return self

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
    job (PREEMPTED, TIMEOUT, CANCELLED), else CANCELLED."""
    if signum == signal.SIGUSR1:
        return TIMEOUT
    return slurm_job_state(os.environ.get("SLURM_JOB_ID")) or CANCELLED


def slurm_job_state(job_id: str | None) -> str | None:
    """The job's state when it is one of :data:`REASONS` (``scontrol show job``), else None."""
    if not job_id:
        return None
    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for field in out.split():
        if field.startswith("JobState="):
            state = field.partition("=")[2]
            return state if state in REASONS else None
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
            signal.signal(s, handler)

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

