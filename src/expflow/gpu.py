"""GPU leases: which devices a job may use, under a cross-process lock.

Snakemake's ``--resources gpu=N`` only counts; this module gives each job its own
devices. A device qualifies for a lease when its free memory covers the job's estimate
(``gpu.mem_mb``) and it holds fewer than ``gpu.max_jobs_per_gpu`` leases; a multi-GPU
job takes the qualifying devices with the most free memory (DLNest). The lease table
is a JSON file guarded by a file lock; leases of dead processes are reclaimed by the
next caller. ``CUDA_VISIBLE_DEVICES`` already set by a scheduler (Slurm) limits the
devices to those it granted.

Devices come from NVML (``nvidia-ml-py``), or from a simulated inventory:
``EXPFLOW_SIMULATED_GPUS=4x81920`` (four devices of 80 GiB; terms may be mixed,
``2x81920,1x40960``), whose free memory is its total minus the leased estimates.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from expflow.atomic import atomic_write_json
from expflow.errors import ConfigError, ExpflowError
from expflow.package.status import HOST, process_alive, process_identity

if TYPE_CHECKING:
    import torch

SIMULATED_ENV = "EXPFLOW_SIMULATED_GPUS"
LEASE_DIR_ENV = "EXPFLOW_LEASE_DIR"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
GRANTED_ENV = "EXPFLOW_GRANTED_DEVICES"  # what the scheduler granted, kept across our own setting


class LeaseError(ExpflowError):
    """No lease can be had (and waiting was not allowed or timed out)."""


@dataclass(frozen=True)
class Device:
    index: int  # NVML index (physical order)
    name: str
    uuid: str
    total_mb: int
    free_mb: int
    simulated: bool = False

    @property
    def ident(self) -> str:
        """What CUDA_VISIBLE_DEVICES names this device by."""
        return str(self.index)


@dataclass
class Lease:
    id: str
    devices: list[int]
    mem_mb: int
    owner: str
    host: str
    pid: int
    pid_started: float | None
    time: float
    table: Path | None = field(default=None, repr=False, compare=False)

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
        d = asdict(self)
        d.pop("table")
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


def discover(leases: list[Lease] | None = None) -> list[Device]:
    """The devices of this machine (NVML or simulated), limited to a scheduler's grant."""
    spec = os.environ.get(SIMULATED_ENV)
    if spec:
        devices = []
        reserved: dict[int, int] = {}
        for lease in leases or []:
            for d in lease.devices:
                reserved[d] = reserved.get(d, 0) + lease.mem_mb
        for count, total in parse_simulated(spec):
            for _ in range(count):
                i = len(devices)
                devices.append(Device(i, "simulated", f"SIM-{i}", total, max(total - reserved.get(i, 0), 0), True))
    else:
        devices = _nvml_devices()
    granted = granted_devices()
    if granted is not None:
        devices = [d for d in devices if d.ident in granted or d.uuid in granted]
    return devices


def granted_devices() -> set[str] | None:
    """Devices a scheduler granted through CUDA_VISIBLE_DEVICES, or None when it set none."""
    value = os.environ.get(GRANTED_ENV, os.environ.get(VISIBLE_ENV))
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip() and v.strip() != "-1"}


# -- the lease table -------------------------------------------------------------------
def default_lease_dir() -> Path:
    explicit = os.environ.get(LEASE_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return Path(base) / f"expflow-{os.getuid()}" / "gpu-leases"


class LeaseTable:
    """``leases.json`` in a directory shared by every process of the machine."""

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = Path(path) if path is not None else default_lease_dir() / "leases.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.path) + ".lock")

    def _load(self) -> list[Lease]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            return []  # a table we cannot read protects nothing; devices are re-checked by NVML
        return [Lease(**{k: v for k, v in item.items() if k in Lease.__dataclass_fields__}) for item in raw]

    def _save(self, leases: list[Lease]) -> None:
        atomic_write_json(self.path, [lease.to_json() for lease in leases])

    @staticmethod
    def _alive(lease: Lease) -> bool:
        if lease.host != HOST:
            return True  # another machine's lease (shared file system): not ours to judge
        return process_alive({"host": lease.host, "pid": lease.pid, "pid_started": lease.pid_started}) is not False

    def active(self) -> list[Lease]:
        with self.lock:
            return [le for le in self._load() if self._alive(le)]

    def try_acquire(self, count: int, mem_mb: int, max_jobs: int, owner: str, pid: int | None = None) -> Lease | None:
        """One attempt: lease ``count`` devices or return None (never blocks on devices)."""
        with self.lock:
            leases = [le for le in self._load() if self._alive(le)]  # reclaim the dead
            devices = discover(leases)
            held: dict[int, int] = {}
            reserved: dict[int, int] = {}
            for le in leases:
                for d in le.devices:
                    held[d] = held.get(d, 0) + 1
                    reserved[d] = reserved.get(d, 0) + le.mem_mb

            def free(d: Device) -> int:
                # NVML's free memory misses leases whose job has not allocated yet.
                return d.free_mb if d.simulated else min(d.free_mb, d.total_mb - reserved.get(d.index, 0))

            ok = [d for d in devices if held.get(d.index, 0) < max_jobs and free(d) >= mem_mb]
            if len(ok) < count:
                self._save(leases)
                return None
            ok.sort(key=lambda d: (-free(d), held.get(d.index, 0), d.index))
            chosen = sorted(d.index for d in ok[:count])
            ident = process_identity(pid)
            lease = Lease(
                id=uuid.uuid4().hex, devices=chosen, mem_mb=mem_mb, owner=owner,
                host=str(ident["host"]), pid=int(ident["pid"]),  # type: ignore[arg-type]
                pid_started=ident["pid_started"], time=time.time(),  # type: ignore[arg-type]
            )
            self._save(leases + [lease])
            lease.table = self.path
            return lease

    def release(self, lease_id: str) -> None:
        with self.lock:
            leases = self._load()
            kept = [le for le in leases if le.id != lease_id]
            if len(kept) != len(leases):
                self._save(kept)


def lease_gpus(
    count: int,
    mem_mb: int = 0,
    max_jobs_per_gpu: int = 1,
    *,
    owner: str = "",
    wait: bool = True,
    timeout: float | None = None,
    poll: float = 0.05,
    table: LeaseTable | None = None,
    on_wait: Any = None,
) -> Lease:
    """Lease ``count`` devices, waiting (polling every ``poll`` s) until they qualify."""
    table = table or LeaseTable()
    devices = discover(table.active())
    if len(devices) < count:
        have = f"{len(devices)} device(s)" if devices else "no GPU"
        raise LeaseError(f"gpu.count={count} but this machine has {have}")
    if all(d.total_mb < mem_mb for d in devices):
        raise LeaseError(f"gpu.mem_mb={mem_mb} exceeds every device's memory (largest {max(d.total_mb for d in devices)} MiB)")
    deadline = None if timeout is None else time.monotonic() + timeout
    notified = False
    while True:
        lease = table.try_acquire(count, mem_mb, max_jobs_per_gpu, owner)
        if lease is not None:
            return lease
        if not wait or (deadline is not None and time.monotonic() > deadline):
            raise LeaseError(f"no {count} GPU(s) with {mem_mb} MiB free and under {max_jobs_per_gpu} job(s) each")
        if on_wait is not None and not notified:
            on_wait()
            notified = True
        time.sleep(poll)


@dataclass
class Placement:
    """Where a job runs: leased devices (released on exit) or the CPU."""

    lease: Lease | None
    env: dict[str, str]

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
    if not discover(table.active()):
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
