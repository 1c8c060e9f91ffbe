"""GPU leases against a simulated inventory (EXPFLOW_SIMULATED_GPUS)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expflow.errors import ConfigError
from expflow.gpu import LeaseError, LeaseTable, discover, lease_gpus, parse_simulated, place_job

from .conftest import REPO


@pytest.fixture
def sim(monkeypatch, tmp_path):
    def _sim(spec: str) -> LeaseTable:
        monkeypatch.setenv("EXPFLOW_SIMULATED_GPUS", spec)
        monkeypatch.setenv("EXPFLOW_LEASE_DIR", str(tmp_path / "leases"))
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.delenv("EXPFLOW_GRANTED_DEVICES", raising=False)
        return LeaseTable()
    return _sim


def test_parse_simulated():
    assert parse_simulated("4x81920") == [(4, 81920)]
    assert parse_simulated("2x81920,40960") == [(2, 81920), (1, 40960)]
    with pytest.raises(ConfigError, match="EXPFLOW_SIMULATED_GPUS"):
        parse_simulated("four")


def test_leases_are_exclusive_and_released(sim):
    table = sim("4x81920")
    leases = [lease_gpus(1, 0, 1, table=table, wait=False) for _ in range(4)]
    assert sorted(d for le in leases for d in le.devices) == [0, 1, 2, 3]
    with pytest.raises(LeaseError, match="no 1 GPU"):
        lease_gpus(1, 0, 1, table=table, wait=False)
    leases[2].release()
    again = lease_gpus(1, 0, 1, table=table, wait=False)
    assert again.devices == leases[2].devices


def test_max_jobs_per_gpu_and_memory(sim):
    table = sim("2x10000")
    a = lease_gpus(1, 6000, 2, table=table, wait=False)
    b = lease_gpus(1, 6000, 2, table=table, wait=False)
    assert a.devices != b.devices  # 6000 + 6000 MiB does not fit one 10000 MiB device
    c = lease_gpus(1, 4000, 2, table=table, wait=False)  # fits beside either
    d = lease_gpus(1, 4000, 2, table=table, wait=False)  # ... and beside the other
    assert sorted(c.devices + d.devices) == [0, 1]
    with pytest.raises(LeaseError):
        lease_gpus(1, 1, 2, table=table, wait=False)  # every device holds 2 jobs
    with pytest.raises(LeaseError, match="exceeds every device"):
        lease_gpus(1, 20000, 2, table=table, wait=False)


def test_multi_gpu_takes_most_free(sim):
    table = sim("10000,40000,20000,30000")
    lease = lease_gpus(2, 1000, 1, table=table, wait=False)
    assert lease.devices == [1, 3]
    assert lease.cuda_visible_devices == "1,3"


def test_scheduler_grant_is_respected(sim, monkeypatch):
    table = sim("4x81920")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [d.index for d in discover()] == [2, 3]
    a = lease_gpus(1, 0, 1, table=table, wait=False)
    b = lease_gpus(1, 0, 1, table=table, wait=False)
    assert sorted(a.devices + b.devices) == [2, 3]
    with pytest.raises(LeaseError):
        lease_gpus(1, 0, 1, table=table, wait=False)
    with place_job(0, 0, 1, True) as placement:
        assert placement.env["EXPFLOW_GRANTED_DEVICES"] == "2,3"


def test_no_gpu_cpu_when_allowed_else_error(monkeypatch, tmp_path):
    monkeypatch.delenv("EXPFLOW_SIMULATED_GPUS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a scheduler that granted none
    monkeypatch.setenv("EXPFLOW_LEASE_DIR", str(tmp_path))
    with place_job(1, 0, 1, allow_cpu=True) as placement:
        assert placement.lease is None and placement.env["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(LeaseError, match="gpu.allow_cpu"):
        with place_job(1, 0, 1, allow_cpu=False):
            pass


def test_lease_released_on_exception(sim):
    table = sim("1x1000")
    with pytest.raises(RuntimeError):
        with place_job(1, 0, 1, False):
            assert len(table.active()) == 1
            raise RuntimeError("boom")
    assert table.active() == []


@pytest.mark.slow
def test_hundred_processes_never_share_a_device(sim, tmp_path):
    sim("4x81920")
    out = tmp_path / "intervals.jsonl"
    procs = [
        subprocess.Popen([sys.executable, str(REPO / "tests" / "gpu_leaser.py"), str(out), "3", "0.02"],
                         env=dict(os.environ))
        for _ in range(100)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 300
    by_device: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        (d,) = r["devices"]
        by_device.setdefault(d, []).append((r["start"], r["end"]))
    assert set(by_device) <= {0, 1, 2, 3}
    for d, spans in by_device.items():
        spans.sort()
        for (s1, e1), (s2, e2) in zip(spans, spans[1:], strict=False):
            assert s2 >= e1, f"device {d} assigned twice: {s1}-{e1} and {s2}-{e2}"
    assert LeaseTable().active() == []


@pytest.mark.slow
def test_lease_of_a_killed_process_is_reclaimed(sim, tmp_path):
    table = sim("1x81920")
    code = ("import time; from expflow.gpu import lease_gpus; "
            "l = lease_gpus(1, 0, 1); print('leased', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert holder.stdout.readline().strip() == "leased"
    with pytest.raises(LeaseError):
        lease_gpus(1, 0, 1, table=table, wait=False)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    t0 = time.monotonic()
    lease = lease_gpus(1, 0, 1, table=table, timeout=10)
    assert lease.devices == [0] and time.monotonic() - t0 < 5
    assert [le.pid for le in table.active()] == [os.getpid()]
    assert Path(table.path).exists()


class FakeNVML:
    """Stands in for nvidia-ml-py's pynvml (no GPU on CI): two devices, one whose name
    query fails, as on a driver that lacks a field."""

    class NVMLError(Exception):
        pass

    def __init__(self, fail_init: bool = False):
        self.fail_init = fail_init
        self.shutdowns = 0

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, h):
        from types import SimpleNamespace

        return SimpleNamespace(total=(80 << 30) if h == 0 else (40 << 30), free=(70 << 30) if h == 0 else (10 << 30))

    def nvmlDeviceGetName(self, h):
        if h == 1:
            raise self.NVMLError("Not Supported")
        return b"NVIDIA H100"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}-uuid"


def test_nvml_discovery_survives_a_failing_field(monkeypatch, tmp_path):
    fake = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("EXPFLOW_SIMULATED_GPUS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("EXPFLOW_GRANTED_DEVICES", raising=False)
    monkeypatch.setenv("EXPFLOW_LEASE_DIR", str(tmp_path))
    devices = discover()
    assert [(d.index, d.name, d.uuid, d.total_mb, d.free_mb) for d in devices] == [
        (0, "NVIDIA H100", "GPU-0-uuid", 81920, 71680),
        (1, "GPU", "GPU-1-uuid", 40960, 10240),  # the failing name query lost only the name
    ]
    assert fake.shutdowns == 1
    # The lease path uses NVML's free memory: 20 GiB fits device 0 only.
    lease = lease_gpus(1, 20000, 1, table=LeaseTable(), wait=False)
    assert lease.devices == [0]
    lease.release()
    # A scheduler's grant by UUID is respected, and the job sees its device by UUID too.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1-uuid")
    assert [d.index for d in discover()] == [1]
    with place_job(1, 0, 1, allow_cpu=False) as placement:
        assert placement.gpus == [1] and placement.env["CUDA_VISIBLE_DEVICES"] == "GPU-1-uuid"


def test_nvml_without_a_driver_means_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(fail_init=True))
    monkeypatch.delenv("EXPFLOW_SIMULATED_GPUS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("EXPFLOW_GRANTED_DEVICES", raising=False)
    monkeypatch.setenv("EXPFLOW_LEASE_DIR", str(tmp_path))
    assert discover() == []
    with place_job(1, 0, 1, allow_cpu=True) as placement:
        assert placement.lease is None and placement.env["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(LeaseError, match="gpu.allow_cpu"):
        with place_job(1, 0, 1, allow_cpu=False):
            pass
