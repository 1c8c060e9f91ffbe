"""GPU leases: which devices a job may use, under a cross-process lock.

Snakemake's ``--resources gpu=N`` only counts; this module gives each job its own
devices. A device qualifies for a lease when its free memory covers the job's estimate
(``gpu.mem_mb``) and it holds fewer than ``gpu.max_jobs_per_gpu`` leases; a multi-GPU
job takes the qualifying devices with the most free memory (DLNest), and a job joins no
device whose holder asked for fewer jobs per device. The lease table is a JSON file
guarded by a file lock, with a queue of waiters: a release hands the devices to the
first waiters that fit and wakes them (no polling), leases of dead processes are
reclaimed as soon as they die, and a waiter for several devices is not starved by
smaller ones (see :class:`LeaseTable`). ``CUDA_VISIBLE_DEVICES`` already set by a
scheduler (Slurm) limits each job to the devices it granted.

Devices come from NVML (``nvidia-ml-py``), or from a simulated inventory:
``EXPFLOW_SIMULATED_GPUS=4x81920`` (four devices of 80 GiB; terms may be mixed,
``2x81920,1x40960``), whose free memory is its total minus the leased estimates.

Every train job's command (``expflow run``) imports this module before it leases, while
the device it is about to get waits idle: it imports only what that needs (no dataclasses,
pathlib or typing, ~9 ms of a job's start and twice that with the cores busy), so its
records are plain classes and its paths strings.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import threading
import time
from collections import namedtuple
from contextlib import contextmanager, suppress
from types import SimpleNamespace

from expflow.errors import ConfigError, ExpflowError
from expflow.package.status import HOST, process_alive, process_identity

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see above)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    import torch

SIMULATED_ENV = "EXPFLOW_SIMULATED_GPUS"
LEASE_DIR_ENV = "EXPFLOW_LEASE_DIR"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
GRANTED_ENV = "EXPFLOW_GRANTED_DEVICES"  # what the scheduler granted, kept across our own setting
TABLE_VERSION = 2
FALLBACK_S = 2.0  # a waiter checks on its own at least this often, woken or not
NO_PIDFD_CHECK_S = 0.25  # how often the first waiter checks the holders where pidfds are missing


class LeaseError(ExpflowError):
    """No lease can be had (and waiting was not allowed or timed out)."""


def _unusable(path: str, e: OSError) -> LeaseError:
    """The one line for a lease table (its directory, lock or file) that cannot be written."""
    return LeaseError(f"{path}: the GPU lease table cannot be used ({e.strerror or e}); set {LEASE_DIR_ENV} "
                      "to a directory every job of this machine can write")


class Device(namedtuple("Device", "index name uuid total_mb free_mb simulated", defaults=(False,))):
    """One device: its NVML index (physical order), name, UUID, total and free MiB."""

    __slots__ = ()

    @property
    def ident(self) -> str:
        """What CUDA_VISIBLE_DEVICES names this device by."""
        return str(self.index)


class Lease(SimpleNamespace):
    """A job's devices, as the table records it; ``table``: the table it is released from
    (None once released; not recorded). ``max_jobs``: the holder's gpu.max_jobs_per_gpu, no
    more jobs join it on its devices."""

    # What each recorded field must be (see _valid): an entry of another shape is not read.
    FIELDS = {"id": "str", "devices": "nats", "mem_mb": "nat", "owner": "str", "host": "str", "pid": "int",
              "pid_started": "num?", "time": "num", "max_jobs": "pos?"}

    def __init__(self, id: str, devices: list[int], mem_mb: int, owner: str, host: str, pid: int,
                 pid_started: float | None, time: float, table: str | None = None, max_jobs: int | None = None):
        super().__init__(id=id, devices=devices, mem_mb=mem_mb, owner=owner, host=host, pid=pid,
                         pid_started=pid_started, time=time, table=table, max_jobs=max_jobs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lease) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(str(d) for d in self.devices)

    def release(self) -> None:
        if self.table is not None:
            LeaseTable(self.table).release(self.id)
            self.table = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)  # the fields are flat
        d.pop("table")
        d["devices"] = list(self.devices)
        return d


# -- discovery ----------------------------------------------------------------------
def parse_simulated(spec: str) -> list[tuple[int, int]]:
    """``"4x81920"`` or ``"2x81920,1x40960"`` or ``"81920,40960"`` -> [(count, total_mb)]."""
    terms = []
    for term in spec.replace(" ", "").split(","):
        if not term:
            continue
        count, _, mb = term.rpartition("x")
        try:
            terms.append((int(count) if count else 1, int(mb)))
        except ValueError:
            raise ConfigError(f"{SIMULATED_ENV}={spec!r}: expected terms like 4x81920 (count x MiB), comma-separated") from None
    return terms


def _nvml_devices() -> list[Device]:
    """Every device NVML sees; a failing field does not lose the device (gpustat's way)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no library: no GPU here
        return []
    devices = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)

            def q(fn: Any, default: Any, h: Any = h) -> Any:
                try:
                    return fn(h)
                except Exception:
                    return default

            mem = q(pynvml.nvmlDeviceGetMemoryInfo, None)
            name = q(pynvml.nvmlDeviceGetName, "GPU")
            uid = q(pynvml.nvmlDeviceGetUUID, f"GPU-{i}")
            devices.append(Device(
                index=i,
                name=name.decode() if isinstance(name, bytes) else str(name),
                uuid=uid.decode() if isinstance(uid, bytes) else str(uid),
                total_mb=int(mem.total // 2**20) if mem else 0,
                free_mb=int(mem.free // 2**20) if mem else 0,
            ))
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return devices


def _inventory() -> list[Device]:
    """Every device of this machine, unfiltered; a simulated device reports all its memory free."""
    spec = os.environ.get(SIMULATED_ENV)
    if not spec:
        return _nvml_devices()
    devices: list[Device] = []
    for count, total in parse_simulated(spec):
        for _ in range(count):
            i = len(devices)
            devices.append(Device(i, "simulated", f"SIM-{i}", total, total, True))
    return devices


def discover(leases: list[Lease] | None = None) -> list[Device]:
    """The devices of this machine (NVML or simulated), limited to a scheduler's grant.

    A simulated device's free memory is its total minus the estimates of ``leases``."""
    devices = _inventory()
    if devices and devices[0].simulated:
        tally = _Tally(leases or [])
        devices = [d._replace(free_mb=max(tally.free(d), 0)) for d in devices]
    granted = granted_devices()
    if granted is not None:
        devices = [d for d in devices if _permitted(d, sorted(granted))]
    return devices


def granted_devices() -> set[str] | None:
    """Devices a scheduler granted through CUDA_VISIBLE_DEVICES, or None when it set none."""
    value = os.environ.get(GRANTED_ENV, os.environ.get(VISIBLE_ENV))
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip() and v.strip() != "-1"}


# -- the lease table -------------------------------------------------------------------
def default_lease_dir() -> str:
    explicit = os.environ.get(LEASE_DIR_ENV)
    if explicit:
        return explicit
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return os.path.join(base, f"expflow-{os.getuid()}", "gpu-leases")


class _Waiter(SimpleNamespace):
    """A queued request: its place (``seq``), what it needs, and who waits. ``id``: the id
    its lease will have; ``view``: the inventory it was made against (a simulated spec, or
    "nvml"); ``allowed``: the scheduler's grant (CUDA_VISIBLE_DEVICES) of the waiter."""

    FIELDS = {"id": "str", "seq": "int", "count": "pos", "mem_mb": "nat", "max_jobs": "pos", "owner": "str",
              "host": "str", "pid": "int", "pid_started": "num?", "time": "num", "view": "str", "allowed": "strs?"}

    def __init__(self, id: str, seq: int, count: int, mem_mb: int, max_jobs: int, owner: str, host: str,
                 pid: int, pid_started: float | None, time: float, view: str, allowed: list[str] | None = None):
        super().__init__(id=id, seq=seq, count=count, mem_mb=mem_mb, max_jobs=max_jobs, owner=owner, host=host,
                         pid=pid, pid_started=pid_started, time=time, view=view, allowed=allowed)


class _State:
    def __init__(self, leases: list[Lease] | None = None, waiters: list[_Waiter] | None = None, seq: int = 0):
        self.leases = leases if leases is not None else []
        self.waiters = waiters if waiters is not None else []
        self.seq = seq  # the last ticket handed out


class _Outcome:
    def __init__(self) -> None:
        self.changed = False
        self.lease: Lease | None = None  # the caller's own lease (a request that fit)
        self.waiter: _Waiter | None = None  # the caller's queue entry (a request that did not fit)
        self.wake: list[str] = []  # waiter ids to notify once the lock is released
        self.dropped: list[str] = []  # waiters found dead: their FIFOs go


class _TableLock:
    """An exclusive ``flock`` on the table's lock file; the caller sleeps in the kernel until
    the holder releases it (or dies: the kernel drops a dead process's locks). Reentrant
    within a thread; threads of one process exclude each other (one open file each)."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()

    def __enter__(self) -> _TableLock:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise _unusable(self.path, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._local.fd = fd
        self._local.depth = depth + 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._local.depth -= 1
        if self._local.depth == 0:
            os.close(self._local.fd)  # closing the file releases the lock


_SELF: dict[int, dict[str, object]] = {}


def _identity(pid: int | None = None) -> dict[str, object]:
    """process_identity, cached for this process (its start time does not change)."""
    me = os.getpid()
    if pid is not None and pid != me:
        return process_identity(pid)
    if me not in _SELF:  # a forked child has a pid of its own, hence an entry of its own
        _SELF[me] = process_identity(me)
    return _SELF[me]


def _alive(entry: Lease | _Waiter) -> bool:
    if entry.host != HOST:
        return True  # another machine's entry (shared file system): not ours to judge
    return process_alive({"host": entry.host, "pid": entry.pid, "pid_started": entry.pid_started}) is not False


def _view() -> str:
    return os.environ.get(SIMULATED_ENV) or "nvml"


def _valid(value: Any, kind: str) -> bool:
    """``value`` is of ``kind``: str, int, nat (an int >= 0), pos (an int >= 1), num (an int
    or a float), nats / strs (a list of them); a trailing ? admits None. A bool is no number."""
    if kind.endswith("?"):
        return value is None or _valid(value, kind[:-1])
    if kind == "str":
        return isinstance(value, str)
    if kind in ("int", "nat", "pos"):
        minimum = {"int": None, "nat": 0, "pos": 1}[kind]
        return type(value) is int and (minimum is None or value >= minimum)
    if kind == "num":
        return type(value) in (int, float) and value == value  # not NaN
    if kind in ("nats", "strs"):
        return isinstance(value, list) and all(_valid(v, kind[:-1]) for v in value)
    raise ValueError(kind)


def _from_json(cls: type[Any], items: Any) -> list[Any]:
    """The entries of ``cls`` in a list read from the table: fields this version does not know
    are left out; an entry missing a field, or with one of another type (a table damaged or
    written by hand), is not read (it protects nothing, as an unreadable table)."""
    out = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        known = {k: v for k, v in item.items() if k in cls.FIELDS}
        if all(_valid(v, cls.FIELDS[k]) for k, v in known.items()):
            try:
                out.append(cls(**known))
            except TypeError:  # a field missing
                continue
    return out


class _Tally:
    """Leases per device and the memory they reserve; the fit and choice rules."""

    def __init__(self, leases: list[Lease]):
        self.held: dict[int, int] = {}
        self.used: dict[int, int] = {}
        self.cap: dict[int, int] = {}  # the fewest jobs per device a holder there asked for
        for le in leases:
            self.take(le.devices, le.mem_mb, le.max_jobs)

    def take(self, devices: list[int], mem_mb: int, max_jobs: int | None) -> None:
        for d in devices:
            self.held[d] = self.held.get(d, 0) + 1
            self.used[d] = self.used.get(d, 0) + mem_mb
            if max_jobs is not None:
                self.cap[d] = min(self.cap.get(d, max_jobs), max_jobs)

    def free(self, d: Device) -> int:
        # NVML's free memory misses leases whose job has not allocated yet; a simulated
        # device's free memory is its total minus the leased estimates.
        total_free = d.total_mb if d.simulated else d.free_mb
        return min(total_free, d.total_mb - self.used.get(d.index, 0))

    def fits(self, d: Device, mem_mb: int, max_jobs: int) -> bool:
        """Room for one more job: under its own limit of jobs per device and under every
        holder's there (a job that asked for a device to itself keeps it), and memory."""
        limit = min(max_jobs, self.cap.get(d.index, max_jobs))
        return self.held.get(d.index, 0) < limit and self.free(d) >= mem_mb

    def choose(self, candidates: list[Device], count: int) -> list[int]:
        """The ``count`` candidates with the most free memory (then fewest jobs)."""
        ranked = sorted(candidates, key=lambda d: (-self.free(d), self.held.get(d.index, 0), d.index))
        return sorted(d.index for d in ranked[:count])

    def reservation(self, devices: list[Device], w: _Waiter) -> set[int] | None:
        """The devices a blocked waiter will get first: those that fit it already, then the
        ones closest to fitting. Nobody behind it may lease them, so they only drain."""
        eligible = [d for d in devices if _permitted(d, w.allowed) and d.total_mb >= w.mem_mb]
        if len(eligible) < w.count:
            return None  # it can never be served here: it must not hold others back
        eligible.sort(key=lambda d: (not self.fits(d, w.mem_mb, w.max_jobs), -self.free(d),
                                     self.held.get(d.index, 0), d.index))
        return {d.index for d in eligible[:w.count]}


def _permitted(d: Device, allowed: list[str] | None) -> bool:
    return allowed is None or d.ident in allowed or d.uuid in allowed


_DEAD = -1


def _first(waiters: list[_Waiter], view: str) -> str | None:
    """The first waiter of an inventory: it watches the holders for everyone behind it."""
    mine = [w for w in waiters if w.view == view]
    return min(mine, key=lambda w: w.seq).id if mine else None


def _watch(holder: Lease) -> int | None:
    """A pidfd of the holder's process (readable once it exits), ``_DEAD`` when it is gone
    already, or None where pidfds are not supported."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd = opener(holder.pid)
    except ProcessLookupError:
        return _DEAD
    except OSError:
        return None  # no pidfd support (old kernel, seccomp): the caller checks on a timer
    try:
        exited = bool(select.select([fd], [], [], 0)[0])  # a zombie's pidfd is readable at once
    except OSError:
        exited = False
    if exited or not _alive(holder):  # _alive also catches a reused pid
        os.close(fd)
        return _DEAD
    return fd


class LeaseTable:
    """``leases.json`` in a directory shared by every process of the machine.

    The file holds the leases and the queue of waiters, and changes only under the lock
    and only when something changed. A release hands the freed devices to the waiters in
    queue order at once (the lease is written in the waiter's name) and wakes each through
    its FIFO in ``leases.waiters/``; a waiter sleeps on that FIFO and never polls. The first
    waiter also watches the holders' processes (pidfds), so a holder killed with SIGKILL,
    which never releases, is reclaimed as soon as it dies. Every waiter re-checks on its
    own after ``FALLBACK_S`` at the latest (a lost notification, a dead first waiter).

    Fairness: the first waiter that does not fit reserves the devices it will get first;
    waiters behind it (and new callers) may use only the other devices, so a multi-GPU
    request is never starved by a stream of single-GPU ones.

    The table describes live processes only, so writes are atomic (a rename) but not
    fsynced: after a crash of the machine no lease in it would be alive anyway.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = os.fspath(path) if path is not None else os.path.join(default_lease_dir(), "leases.json")
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        except FileExistsError as e:
            e.strerror = "a file, not a directory"
            raise _unusable(os.path.dirname(self.path), e) from None
        except OSError as e:
            raise _unusable(os.path.dirname(self.path), e) from None
        self.lock = _TableLock(self.path + ".lock")
        self.waiter_dir = os.path.splitext(self.path)[0] + ".waiters"

    # -- the file ---------------------------------------------------------------------
    def _read(self) -> _State:
        """The table as last written. Safe without the lock: writes are atomic renames."""
        try:
            with open(self.path, "rb") as f:
                raw = json.loads(f.read())
        except FileNotFoundError:
            return _State()
        except (OSError, ValueError):
            return _State()  # a table we cannot read protects nothing; devices are re-checked by NVML
        if isinstance(raw, list):  # the table of an earlier expflow: leases only
            return _State(_from_json(Lease, raw))
        if not isinstance(raw, dict):
            return _State()
        seq = raw.get("seq")
        return _State(_from_json(Lease, raw.get("leases")), _from_json(_Waiter, raw.get("waiters")),
                      seq if isinstance(seq, int) else 0)

    def _load(self) -> list[Lease]:
        return self._read().leases

    def _write(self, st: _State) -> None:
        data = json.dumps({"version": TABLE_VERSION, "seq": st.seq,
                           "leases": [le.to_json() for le in st.leases],
                           "waiters": [dict(w.__dict__) for w in st.waiters]}, separators=(",", ":")).encode()
        head, name = os.path.split(self.path)
        tmp = os.path.join(head, f".{name}.tmp")  # one writer at a time: the lock's holder
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:  # a full or read-only disk: the table as it was stays
            with suppress(OSError):
                os.unlink(tmp)
            raise _unusable(self.path, e) from None

    def _fifo(self, waiter_id: str) -> str:
        return os.path.join(self.waiter_dir, f"{waiter_id}.fifo")

    def _notify(self, waiter_ids: list[str]) -> None:
        for wid in dict.fromkeys(waiter_ids):
            try:
                fd = os.open(self._fifo(wid), os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue  # no FIFO, or nobody reads it: a dead waiter, dropped by the next pass
            try:
                os.write(fd, b"\0")
            except OSError:
                pass  # a full pipe wakes its reader all the same
            finally:
                os.close(fd)

    def _finish(self, st: _State, out: _Outcome) -> None:
        """Under the lock: write the table if the pass changed it, remove dead FIFOs."""
        if out.changed:
            self._write(st)
        for wid in out.dropped:
            with suppress(OSError):
                os.unlink(self._fifo(wid))

    # -- the pass ---------------------------------------------------------------------
    def _settle(self, st: _State, request: _Waiter | None = None, enqueue: bool = False,
                reclaim: bool = False) -> _Outcome:
        """Under the lock: serve the queue in order, then ``request`` (a caller not yet
        queued) if it fits, else queue it when ``enqueue``. ``reclaim`` first drops the
        leases of dead processes; passes that skip it leave that to the first waiter,
        which watches the holders and reclaims as soon as one dies."""
        out = _Outcome()
        before = {le.id for le in st.leases}
        view = _view()
        old_head = _first(st.waiters, view)
        if reclaim:
            live = [le for le in st.leases if _alive(le)]
            out.changed = len(live) != len(st.leases)
            st.leases = live
        devices = _inventory() if st.waiters or request is not None else []  # NVML only when someone asks
        tally = _Tally(st.leases)
        reserved: set[int] = set()
        reserver = False
        queue: list[_Waiter] = []
        foreign: list[str] = []
        for w in sorted(st.waiters, key=lambda w: w.seq):
            if w.view != view:  # made against another inventory: it judges for itself
                if _alive(w):
                    queue.append(w)
                    foreign.append(w.id)
                else:
                    out.dropped.append(w.id)
                    out.changed = True
                continue
            fit = [d for d in devices if d.index not in reserved and _permitted(d, w.allowed)
                   and tally.fits(d, w.mem_mb, w.max_jobs)]
            if (len(fit) >= w.count or not reserver) and not _alive(w):
                out.dropped.append(w.id)
                out.changed = True
                continue
            if len(fit) >= w.count:
                chosen = tally.choose(fit, w.count)
                st.leases.append(Lease(id=w.id, devices=chosen, mem_mb=w.mem_mb, owner=w.owner, host=w.host,
                                       pid=w.pid, pid_started=w.pid_started, time=time.time(),
                                       max_jobs=w.max_jobs))
                tally.take(chosen, w.mem_mb, w.max_jobs)
                out.wake.append(w.id)
                out.changed = True
                continue
            queue.append(w)
            if not reserver:
                held_back = tally.reservation(devices, w)
                if held_back is not None:
                    reserved, reserver = held_back, True
        st.waiters = queue
        if request is not None:
            fit = [d for d in devices if d.index not in reserved and _permitted(d, request.allowed)
                   and tally.fits(d, request.mem_mb, request.max_jobs)]
            if len(fit) >= request.count:
                out.lease = Lease(id=request.id, devices=tally.choose(fit, request.count), mem_mb=request.mem_mb,
                                  owner=request.owner, host=request.host, pid=request.pid,
                                  pid_started=request.pid_started, time=time.time(), max_jobs=request.max_jobs)
                st.leases.append(out.lease)
                out.changed = True
            elif enqueue:
                st.seq = max(st.seq, max((w.seq for w in st.waiters), default=0)) + 1
                request.seq = st.seq
                st.waiters.append(request)
                out.waiter = request
                out.changed = True
        head = _first(st.waiters, view)
        if out.changed and head is not None:
            if out.waiter is None or head != out.waiter.id:  # the caller, just queued, knows
                if head != old_head or {le.id for le in st.leases} != before:
                    out.wake.append(head)  # the first waiter watches the holders: they changed
        if out.changed:
            out.wake.extend(foreign)
        return out

    def _pass(self) -> bool:
        """Reclaim the leases of dead processes and serve the queue; True if anything changed."""
        with self.lock:
            st = self._read()
            out = self._settle(st, reclaim=True)
            self._finish(st, out)
        self._notify(out.wake)
        return out.changed

    # -- the public operations ------------------------------------------------------------
    def active(self) -> list[Lease]:
        with self.lock:
            return [le for le in self._read().leases if _alive(le)]

    def _request(self, count: int, mem_mb: int, max_jobs: int, owner: str, pid: int | None) -> _Waiter:
        ident = _identity(pid)
        granted = granted_devices()
        return _Waiter(
            id=os.urandom(16).hex(),  # (uuid would import platform: ~6 ms of a train job's start)
            seq=0, count=count, mem_mb=mem_mb, max_jobs=max_jobs, owner=owner,
            host=str(ident["host"]), pid=int(ident["pid"]),  # type: ignore[call-overload]
            pid_started=ident["pid_started"], time=time.time(),  # type: ignore[arg-type]
            view=_view(), allowed=sorted(granted) if granted is not None else None,
        )

    def try_acquire(self, count: int, mem_mb: int, max_jobs: int, owner: str, pid: int | None = None) -> Lease | None:
        """One attempt: lease ``count`` devices or return None (never blocks on devices).

        Queued waiters come first: a caller gets only what none of them can use."""
        lease, _, _ = self._attempt(self._request(count, mem_mb, max_jobs, owner, pid), enqueue=False)
        return lease

    def _attempt(self, req: _Waiter, enqueue: bool) -> tuple[Lease | None, _Waiter | None, int | None]:
        """Lease now, or (``enqueue``) join the queue with a FIFO open to be woken by.
        Returns (lease, queue entry, FIFO descriptor)."""
        fifo_fd = None
        with self.lock:
            st = self._read()
            # A caller that will not wait must see dead holders' devices free now; one that
            # queues finds them through its watch on the holders (see _await).
            out = self._settle(st, req, enqueue, reclaim=not enqueue)
            if out.waiter is not None:
                fifo_fd = self._open_fifo(out.waiter.id)  # before the entry is written: no wake-up is lost
            try:
                self._finish(st, out)
            except BaseException:
                if out.waiter is not None:
                    self._close_fifo(out.waiter.id, fifo_fd)
                raise
        try:
            self._notify(out.wake)
        except BaseException:
            if out.waiter is not None:  # an interrupt here must not leave a queued entry behind
                self._close_fifo(out.waiter.id, fifo_fd)
                self._withdraw(out.waiter.id, keep_grant=False)
            raise
        if out.lease is not None:
            out.lease.table = self.path
        return out.lease, out.waiter, fifo_fd

    def _open_fifo(self, waiter_id: str) -> int | None:
        path = self._fifo(waiter_id)
        try:
            os.makedirs(self.waiter_dir, exist_ok=True)
            os.mkfifo(path, 0o600)
            # Read and write: the FIFO then never reports end-of-file, only data.
            return os.open(path, os.O_RDWR | os.O_NONBLOCK)
        except OSError:
            with suppress(OSError):
                os.unlink(path)
            return None  # a file system without FIFOs: the waiter checks on a short timer

    def _close_fifo(self, waiter_id: str, fd: int | None) -> None:
        if fd is not None:
            os.close(fd)
        with suppress(OSError):
            os.unlink(self._fifo(waiter_id))

    def _withdraw(self, waiter_id: str, keep_grant: bool) -> Lease | None:
        """Leave the queue. A lease granted meanwhile is returned (``keep_grant``) or released."""
        with self.lock:
            st = self._read()
            granted = next((le for le in st.leases if le.id == waiter_id), None)
            n = len(st.waiters)
            st.waiters = [w for w in st.waiters if w.id != waiter_id]
            left = len(st.waiters) != n
            if granted is not None and not keep_grant:
                st.leases = [le for le in st.leases if le.id != waiter_id]
            out = self._settle(st)  # what it held back or held may serve others now
            out.changed = out.changed or left or (granted is not None and not keep_grant)
            self._finish(st, out)
        self._notify(out.wake)
        if granted is not None and keep_grant:
            granted.table = self.path
            return granted
        return None

    def _await(self, w: _Waiter, fifo_fd: int | None, deadline: float | None, fallback: float,
               on_wait: Any = None) -> Lease | None:
        """Sleep until the queue hands ``w`` its lease (None: the deadline passed first).
        Leaves the queue on every way out; a lease granted meanwhile is released when the
        way out is an exception."""
        watched: dict[int, int] = {}  # holder pid -> pidfd (only while first in the queue)
        unwatchable: set[int] = set()  # holders that look dead to a pidfd but not to a pass: checked on a timer
        recheck = woken = False
        try:
            if on_wait is not None:
                on_wait()
            while True:
                st = self._read()
                mine = next((le for le in st.leases if le.id == w.id), None)
                if mine is not None:
                    mine.table = self.path
                    return mine
                queue = sorted(st.waiters, key=lambda x: x.seq)
                if not any(x.id == w.id for x in queue):
                    # Dropped (the table was lost, or we were judged dead): queue again, at the end.
                    self._close_fifo(w.id, fifo_fd)
                    fifo_fd = None
                    lease, again, fifo_fd = self._attempt(
                        self._request(w.count, w.mem_mb, w.max_jobs, w.owner, None), enqueue=True)
                    if lease is not None or again is None:
                        return lease
                    w = again
                    continue
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return self._withdraw(w.id, keep_grant=True)  # a grant at the last moment still counts
                first = _first(queue, w.view) == w.id
                wait_on = [] if fifo_fd is None else [fifo_fd]
                interval = fallback if fifo_fd is not None else min(fallback, NO_PIDFD_CHECK_S)
                # The first waiter's own check also serves the rest (NVML memory that frees up
                # unannounced); the others check only that the first is still there. Waiters of
                # another inventory are skipped by our passes: when one is queued, we pass ourselves.
                must_pass = (recheck and first) or (woken and any(x.view != w.view for x in queue))
                if recheck and not must_pass:
                    must_pass = not _alive(next(x for x in queue if x.id == _first(queue, w.view)))
                recheck = woken = False
                if first:
                    holders = {le.pid: le for le in st.leases if le.host == HOST}
                    for pid in [p for p in watched if p not in holders]:
                        os.close(watched.pop(pid))
                    suspects = []
                    for pid, le in holders.items():
                        if pid in watched:
                            continue
                        fd = None if pid in unwatchable else _watch(le)
                        if fd == _DEAD:
                            suspects.append(pid)
                        elif fd is None:
                            interval = min(interval, NO_PIDFD_CHECK_S)
                        else:
                            watched[pid] = fd
                    wait_on += watched.values()
                    if suspects:
                        if not self._pass():  # the pass judged them alive (a process in the middle of exiting)
                            unwatchable.update(suspects)
                        continue
                elif watched:
                    for fd in watched.values():
                        os.close(fd)
                    watched.clear()
                if must_pass:
                    self._pass()
                    unwatchable.clear()
                    continue
                import random

                interval *= random.uniform(0.75, 1.0)  # waiters queued together do not all wake together
                timeout = interval if deadline is None else max(0.0, min(interval, deadline - now))
                ready = select.select(wait_on, [], [], timeout)[0]
                if not ready:
                    recheck = True
                    continue
                if fifo_fd in ready:
                    woken = True
                    with suppress(BlockingIOError):
                        while os.read(fifo_fd, 4096):  # type: ignore[arg-type]
                            pass
                for pid in [p for p, fd in watched.items() if fd in ready]:
                    os.close(watched.pop(pid))  # it exited: re-watching finds it dead if it still holds
        except BaseException:
            self._withdraw(w.id, keep_grant=False)
            raise
        finally:
            for fd in watched.values():
                os.close(fd)
            self._close_fifo(w.id, fifo_fd)

    def release(self, lease_id: str) -> None:
        """Give a lease back; the freed devices go to the queue at once."""
        with self.lock:
            st = self._read()
            n = len(st.leases)
            st.leases = [le for le in st.leases if le.id != lease_id]
            removed = len(st.leases) != n
            out = self._settle(st)
            out.changed = out.changed or removed
            self._finish(st, out)
        self._notify(out.wake)


def lease_gpus(
    count: int,
    mem_mb: int = 0,
    max_jobs_per_gpu: int = 1,
    *,
    owner: str = "",
    wait: bool = True,
    timeout: float | None = None,
    poll: float = FALLBACK_S,
    table: LeaseTable | None = None,
    on_wait: Any = None,
) -> Lease:
    """Lease ``count`` devices, waiting in the queue until a release hands them over.

    A waiter sleeps until it is woken (a release, a holder's death); ``poll`` only bounds
    how long it sleeps without being woken before it checks on its own.
    """
    table = table or LeaseTable()
    devices = discover()  # what the machine has, whoever holds it
    if len(devices) < count:
        have = f"{len(devices)} device(s)" if devices else "no GPU"
        raise LeaseError(f"gpu.count={count} but this machine has {have}")
    if all(d.total_mb < mem_mb for d in devices):
        raise LeaseError(f"gpu.mem_mb={mem_mb} exceeds every device's memory (largest {max(d.total_mb for d in devices)} MiB)")
    big = [d for d in devices if d.total_mb >= mem_mb]
    if len(big) < count:
        raise LeaseError(f"gpu.count={count} with gpu.mem_mb={mem_mb}: only {len(big)} device(s) have that much memory")
    failed = f"no {count} GPU(s) with {mem_mb} MiB free and under {max_jobs_per_gpu} job(s) each"
    deadline = None if timeout is None else time.monotonic() + timeout
    lease, waiter, fifo_fd = table._attempt(table._request(count, mem_mb, max_jobs_per_gpu, owner, None), enqueue=wait)
    if lease is None and waiter is not None:
        lease = table._await(waiter, fifo_fd, deadline, max(poll, 0.001), on_wait)
        if lease is None:
            raise LeaseError(f"{failed} (waited {timeout:g} s)")
    if lease is None:
        raise LeaseError(failed)
    return lease


class Placement:
    """Where a job runs: leased devices (released on exit) or the CPU; ``acquired``: when
    the job got its place."""

    def __init__(self, lease: Lease | None, env: dict[str, str], acquired: float | None = None):
        self.lease = lease
        self.env = env
        self.acquired = time.time() if acquired is None else acquired

    @property
    def gpus(self) -> list[int]:
        return list(self.lease.devices) if self.lease else []

    @property
    def simulated(self) -> bool:
        return bool(os.environ.get(SIMULATED_ENV))


@contextmanager
def place_job(count: int, mem_mb: int, max_jobs_per_gpu: int, allow_cpu: bool, *,
              owner: str = "", on_wait: Any = None, wait: bool = True) -> Iterator[Placement]:
    """Lease GPUs for a job (or choose the CPU) and release them on every exit path.

    The returned ``env`` is what the job's process needs: ``CUDA_VISIBLE_DEVICES`` set
    to the leased devices (empty for CPU), and the scheduler's grant remembered.
    """
    granted = os.environ.get(GRANTED_ENV, os.environ.get(VISIBLE_ENV))
    base = {GRANTED_ENV: granted} if granted is not None else {}
    if count == 0:
        yield Placement(None, {**base, VISIBLE_ENV: ""})
        return
    table = LeaseTable()
    if not discover():
        if not allow_cpu:
            raise LeaseError("no GPU is available and gpu.allow_cpu is false; set gpu.allow_cpu=true to run on CPU")
        yield Placement(None, {**base, VISIBLE_ENV: ""})
        return
    lease = lease_gpus(count, mem_mb, max_jobs_per_gpu, owner=owner, wait=wait, table=table, on_wait=on_wait)
    visible = lease.cuda_visible_devices
    if granted and any(g.strip().startswith(("GPU-", "MIG-")) for g in granted.split(",")):
        # The scheduler names devices by UUID: so must the job (indices may not match its view).
        uuids = {d.index: d.uuid for d in discover()}
        visible = ",".join(uuids[i] for i in lease.devices)
    try:
        yield Placement(lease, {**base, VISIBLE_ENV: visible})
    finally:
        lease.release()


def cpu_fallback(device: Any, gpus: Any, gpu_count: int, trainer_device: Any) -> bool:
    """Whether a run that asked for GPUs (gpu.count, trainer.device not cpu) trained on the CPU."""
    return bool(gpu_count) and str(device) == "cpu" and not gpus and str(trainer_device) != "cpu"


def cpu_fallback_line(device: Any, gpus: Any, gpu_count: int, trainer_device: Any) -> str | None:
    """One line when a run that asked for GPUs trained on the CPU (none was available)."""
    if cpu_fallback(device, gpus, gpu_count, trainer_device):
        return (f"ran on the CPU: it asked for {gpu_count} GPU(s) and none was available "
                "(gpu.allow_cpu=true let it fall back)")
    return None


def resolve_device(trainer_device: str, gpu_count: int, allow_cpu: bool, local_rank: int = 0) -> torch.device:
    """The torch device of one rank: CUDA when there is one (and the run wants GPUs)."""
    import torch

    if trainer_device == "cpu" or gpu_count == 0:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if trainer_device == "cuda" or not allow_cpu:
        raise ConfigError(
            "no CUDA device is available; set gpu.allow_cpu=true (or trainer.device=cpu) to run on CPU"
        )
    return torch.device("cpu")
