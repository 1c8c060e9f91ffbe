"""Run status and liveness: a package whose process died shows CRASHED."""

from __future__ import annotations

import socket
import time
from enum import StrEnum

import psutil


class Status(StrEnum):
    QUEUED = "QUEUED"
    PREPARING = "PREPARING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    CRASHED = "CRASHED"

    @property
    def active(self) -> bool:
        return self in (Status.QUEUED, Status.PREPARING, Status.RUNNING)


HOST = socket.gethostname()


def process_identity(pid: int | None = None) -> dict[str, object]:
    """Who is writing: host, pid and the pid's start time (guards against pid reuse)."""
    proc = psutil.Process(pid)
    return {"host": HOST, "pid": proc.pid, "pid_started": round(proc.create_time(), 3)}


def is_claim(entry: dict[str, object]) -> bool:
    """A QUEUED history entry by a process that is about to run the package (it claimed
    it, or waits for its GPUs), as opposed to the entry of a package materialized for
    whoever runs it later."""
    return entry.get("claim") is True or str(entry.get("note") or "").startswith("waiting")


def process_alive(ident: dict[str, object]) -> bool | None:
    """True/False for a process of this host; None when it ran elsewhere (unknowable here)."""
    if ident.get("host") != HOST or not isinstance(ident.get("pid"), int):
        return None
    try:
        proc = psutil.Process(int(ident["pid"]))  # type: ignore[arg-type]
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = ident.get("pid_started")
        return started is None or abs(proc.create_time() - float(started)) < 1.0  # type: ignore[arg-type]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def derive_status(
    recorded: Status,
    writer: dict[str, object] | None,
    heartbeat_time: float | None,
    heartbeat_timeout: float,
    now: float | None = None,
) -> Status:
    """The status to show: an active status whose process is gone is CRASHED."""
    if not recorded.active:
        return recorded
    alive = process_alive(writer) if writer else None
    if alive is False:
        return Status.CRASHED
    if alive is None and heartbeat_time is not None:
        if (now or time.time()) - heartbeat_time > heartbeat_timeout:
            return Status.CRASHED
    return recorded
