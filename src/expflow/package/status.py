"""Run status and liveness: a package whose process died shows CRASHED."""

from __future__ import annotations

import os
import time
from enum import StrEnum


class Status(StrEnum):
    QUEUED = "QUEUED"
    PREPARING = "PREPARING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    CRASHED = "CRASHED"
    PRUNED = "PRUNED"  # a search trial stopped early by its study's pruner (checkpoint and records kept)

    @property
    def active(self) -> bool:
        return self in (Status.QUEUED, Status.PREPARING, Status.RUNNING)

    @property
    def finished(self) -> bool:
        """Trained to its end: COMPLETED, or PRUNED at the step its pruner chose (nothing to continue)."""
        return self in (Status.COMPLETED, Status.PRUNED)


HOST = os.uname().nodename  # what socket.gethostname() returns, without importing socket
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[str, float] | None:
    """(state, start time) of ``pid`` from /proc, computed as psutil does (the boot time of
    /proc/stat plus the start tick over the clock rate); None where /proc cannot tell (not
    Linux). ProcessLookupError when there is no such process. Read directly: this runs on
    the way to every GPU lease, and importing psutil costs ~25 ms there."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith(b"btime"))
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            raise ProcessLookupError(pid) from None
        return None
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return fields[0].decode(), float(fields[19]) / _CLOCK_TICKS + boot


def process_identity(pid: int | None = None) -> dict[str, object]:
    """Who is writing: host, pid and the pid's start time (guards against pid reuse)."""
    pid = os.getpid() if pid is None else pid
    found = _proc_stat(pid)
    if found is None:
        import psutil

        started = psutil.Process(pid).create_time()
    else:
        started = found[1]
    return {"host": HOST, "pid": pid, "pid_started": round(started, 3)}


def group_left_over(ident: dict[str, object]) -> list[int]:
    """The live processes (zombies not counted) of the process group that a recorded process
    of this host led, its group's id being its ``pid``: the process itself, or what it
    started in its group after it died. Empty when the pid is another process's since
    (Linux gives out no pid a live group still uses), or where /proc cannot tell."""
    pgid = ident.get("pid")
    if ident.get("host") != HOST or type(pgid) is not int or pgid <= 1 or ident.get("pid_started") is None:
        return []
    try:
        found = _proc_stat(pgid)
    except ProcessLookupError:
        found = None  # the leader is gone: its group lives on while a member does
    members = []
    if found is not None:
        try:
            if abs(found[1] - float(ident["pid_started"])) >= 1.0:  # type: ignore[arg-type]
                return []  # the pid is another process's now: the group was gone before
        except (TypeError, ValueError):
            return []
        if found[0] != "Z":
            members.append(pgid)  # the process itself, even if it left its group since
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if fields[2:3] == [str(pgid).encode()] and fields[0] != b"Z" and int(entry) != pgid:
            members.append(int(entry))
    return members


def is_claim(entry: dict[str, object]) -> bool:
    """A QUEUED history entry by a process that is about to run the package (it claimed
    it, or waits for its GPUs), as opposed to the entry of a package materialized for
    whoever runs it later."""
    return entry.get("claim") is True or str(entry.get("note") or "").startswith("waiting")


def process_alive(ident: dict[str, object]) -> bool | None:
    """True/False for a process of this host; None when it ran elsewhere (unknowable here)."""
    if ident.get("host") != HOST or not isinstance(ident.get("pid"), int):
        return None
    pid = int(ident["pid"])  # type: ignore[arg-type]
    started = ident.get("pid_started")
    try:
        found = _proc_stat(pid)
    except ProcessLookupError:
        return False
    if found is None:
        import psutil

        try:
            proc = psutil.Process(pid)
            found = ("Z" if proc.status() == psutil.STATUS_ZOMBIE else "R", proc.create_time())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
    state, created = found
    if state == "Z":
        return False
    try:
        return started is None or abs(created - float(started)) < 1.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True  # an unreadable start time says nothing more than none: the pid lives


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
