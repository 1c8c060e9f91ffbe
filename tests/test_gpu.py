"""GPU leases against a simulated inventory (EXPFLOW_SIMULATED_GPUS)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from expflow.errors import ConfigError
from expflow.gpu import (
    Lease,
    LeaseError,
    LeaseTable,
    discover,
    lease_gpus,
    parse_simulated,
    place_job,
)
from expflow.package.status import HOST

from .conftest import REPO, hold_one_gpu


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


def wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    """Wait for a state of the table (not for time to pass); fail clearly if it never comes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def queued(table: LeaseTable) -> int:
    return len(table._read().waiters)


class Waiter:
    """lease_gpus in a thread of this process; the lease (or the error) arrives in ``result``."""

    def __init__(self, table: LeaseTable, count: int = 1, *, owner: str, **kw):
        self.result: queue.Queue = queue.Queue()
        kw["owner"] = owner

        def run():
            try:
                self.result.put(lease_gpus(count, kw.pop("mem_mb", 0), kw.pop("max_jobs", 1), table=table, **kw))
            except Exception as e:
                self.result.put(e)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        wait_until(lambda: owner in [w.owner for w in table._read().waiters] or not self.result.empty(),
                   f"{owner} to queue")

    def get(self, timeout: float = 60.0):
        value = self.result.get(timeout=timeout)
        if isinstance(value, Exception):
            raise value
        return value

    @property
    def done(self) -> bool:
        return not self.result.empty()


def granted_to_waiters(table: LeaseTable) -> list[list[int]]:
    """Devices of the leases a release handed to a queued thread (owner "w...")."""
    return [le.devices for le in table._read().leases if le.owner.startswith("w")]


def test_a_failed_try_does_not_rewrite_the_table(sim):
    table = sim("1x1000")
    held = lease_gpus(1, 0, 1, table=table, wait=False)
    before = os.stat(table.path)
    for _ in range(3):
        with pytest.raises(LeaseError):
            lease_gpus(1, 0, 1, table=table, wait=False)
    after = os.stat(table.path)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    held.release()


def test_a_waiter_sleeps_until_a_release_hands_it_the_device(sim, monkeypatch):
    import expflow.gpu as gpu

    table = sim("2x1000")
    a = lease_gpus(1, 0, 1, table=table, wait=False, owner="main")
    b = lease_gpus(1, 0, 1, table=table, wait=False, owner="main")
    sleeps = []  # each time a waiter thread blocks until woken (or its fallback check is due)
    real_select = gpu.select.select

    class CountingSelect:
        @staticmethod
        def select(r, w, x, timeout=None):
            if timeout and threading.current_thread() is not threading.main_thread():
                sleeps.append(timeout)
            return real_select(r, w, x, timeout)

    monkeypatch.setattr(gpu, "select", CountingSelect)
    w = Waiter(table, owner="w1")
    wait_until(lambda: sleeps, "the waiter to block")
    time.sleep(0.5)  # a polling waiter would wake here; this one sleeps until the release
    assert len(sleeps) == 1 and sleeps[0] >= 1.0, sleeps
    assert not w.done
    b.release()
    assert granted_to_waiters(table) == [b.devices]  # handed over by the release itself
    lease = w.get()
    assert lease.devices == b.devices and lease.pid == os.getpid() and lease.owner == "w1"
    assert len(sleeps) == 1  # woken once, by the release
    assert table._read().waiters == []
    assert os.listdir(table.waiter_dir) == []  # its FIFO is gone
    lease.release()
    a.release()
    assert table.active() == []


def test_waiters_are_served_in_queue_order(sim):
    table = sim("1x1000")
    held = lease_gpus(1, 0, 1, table=table, wait=False, owner="main")
    waiters = [Waiter(table, owner=f"w{i}") for i in range(3)]
    with pytest.raises(LeaseError):  # a newcomer does not jump the queue
        lease_gpus(1, 0, 1, table=table, wait=False)
    order = []
    held.release()
    for _ in waiters:
        wait_until(lambda: any(w.done for w in waiters if w not in order), "a grant")
        (w,) = [w for w in waiters if w.done and w not in order]
        order.append(w)
        w.get().release()
    assert order == waiters


def test_a_multi_gpu_waiter_is_not_starved_by_single_gpu_ones(sim):
    table = sim("2x1000")
    a = lease_gpus(1, 0, 1, table=table, wait=False, owner="main")
    b = lease_gpus(1, 0, 1, table=table, wait=False, owner="main")
    big = Waiter(table, 2, owner="w-big")
    small = Waiter(table, 1, owner="w-small")
    a.release()
    # The freed device is held back for the 2-GPU waiter, first in the queue: neither the
    # single-GPU waiter behind it nor a newcomer may take it.
    assert granted_to_waiters(table) == []
    with pytest.raises(LeaseError):
        lease_gpus(1, 0, 1, table=table, wait=False)
    b.release()
    assert granted_to_waiters(table) == [[0, 1]]
    lease = big.get()
    assert lease.devices == [0, 1] and not small.done
    lease.release()
    assert small.get().devices in ([0], [1])


def test_a_single_gpu_waiter_may_use_devices_a_blocked_waiter_does_not_need(sim):
    table = sim("3x1000")
    held = [lease_gpus(1, 0, 1, table=table, wait=False, owner="main") for _ in range(3)]
    big = Waiter(table, 2, owner="w-big")
    small = Waiter(table, 1, owner="w-small")
    held[0].release()  # held back for the 2-GPU waiter
    assert granted_to_waiters(table) == []
    held[1].release()  # the 2-GPU waiter's second device
    assert granted_to_waiters(table) == [sorted(held[0].devices + held[1].devices)]
    held[2].release()  # no one ahead needs it: the single-GPU waiter gets it
    assert small.get().devices == held[2].devices
    big.get().release()


def test_multi_job_per_gpu_waiters_share_devices_within_memory(sim):
    table = sim("2x10000")
    a = lease_gpus(1, 6000, 2, table=table, wait=False, owner="main")
    b = lease_gpus(1, 6000, 2, table=table, wait=False, owner="main")
    assert (a.devices, b.devices) == ([0], [1])
    w = Waiter(table, 1, mem_mb=5000, max_jobs=2, owner="w1")  # 6000 + 5000 > 10000 on both: waits
    # It holds back device 0 (its first pick), not device 1, where a smaller job still fits.
    c = lease_gpus(1, 3000, 2, table=table, wait=False, owner="main")
    assert c.devices == [1] and not w.done
    a.release()
    assert w.get().devices == [0]
    d = lease_gpus(1, 4000, 2, table=table, wait=False, owner="main")  # 5000 + 4000 fits beside the waiter
    assert d.devices == [0]
    with pytest.raises(LeaseError):
        lease_gpus(1, 0, 2, table=table, wait=False)  # two jobs on each device
    assert sorted(len(le.devices) for le in table.active()) == [1, 1, 1, 1]


def test_a_job_that_asked_for_a_device_to_itself_keeps_it(sim):
    table = sim("2x81920")
    alone = lease_gpus(1, 1000, 1, table=table, wait=False)  # max_jobs_per_gpu=1: exclusive
    shared = [lease_gpus(1, 1000, 4, table=table, wait=False) for _ in range(4)]
    assert {d for le in shared for d in le.devices} == {1} != set(alone.devices)
    with pytest.raises(LeaseError):
        lease_gpus(1, 1000, 4, table=table, wait=False)  # device 0 is not shared, device 1 is full
    alone.release()
    assert lease_gpus(1, 1000, 4, table=table, wait=False).devices == [0]


def test_a_waiter_that_times_out_leaves_the_queue(sim):
    table = sim("1x1000")
    held = lease_gpus(1, 0, 1, table=table, wait=False)
    with pytest.raises(LeaseError, match=r"no 1 GPU\(s\) .* \(waited 0.2 s\)") as info:
        lease_gpus(1, 0, 1, table=table, timeout=0.2)
    assert "\n" not in str(info.value)
    assert table._read().waiters == [] and os.listdir(table.waiter_dir) == []
    held.release()
    assert lease_gpus(1, 0, 1, table=table, wait=False).devices == [0]


def test_a_table_of_an_earlier_version_is_read(sim):
    table = sim("2x1000")
    old = Lease(id="old", devices=[0], mem_mb=0, owner="old", host=HOST, pid=os.getpid(),
                pid_started=None, time=time.time())
    Path(table.path).write_text(json.dumps([old.to_json()]))  # a bare list of leases
    assert [le.id for le in table.active()] == ["old"]
    assert lease_gpus(1, 0, 1, table=table, wait=False).devices == [1]


def test_entries_of_another_shape_in_the_table_are_not_read_and_the_rest_is(sim):
    """A table damaged or edited by hand: an entry with a field of another type or out of
    range is skipped (it protects nothing), a well-formed one still counts, nothing raises."""
    table = sim("3x1000")
    good = {"id": "good", "devices": [1], "mem_mb": 0, "owner": "o", "host": "another-host", "pid": 1,
            "pid_started": None, "time": 0.0, "max_jobs": 1, "from_a_later_version": True}
    bad = [{**good, "id": 1}, {**good, "devices": "0"}, {**good, "devices": [0, None]}, {**good, "mem_mb": "a"},
           {**good, "mem_mb": -10}, {**good, "pid": "p"}, {**good, "time": "t"}, {**good, "max_jobs": 0},
           {**good, "devices": [True]}, {k: v for k, v in good.items() if k != "owner"}, [0], "lease"]
    waiters = [{"id": "w", "seq": 1, "count": -3, "mem_mb": 0, "max_jobs": 1, "owner": "", "host": "another-host",
                "pid": 1, "pid_started": None, "time": 0, "view": "3x1000"}, {"id": "v"}, None]
    Path(table.path).write_text(json.dumps({"version": 2, "seq": "x", "leases": [*bad, good], "waiters": waiters}))
    assert [le.id for le in table.active()] == ["good"] and table._read().waiters == []
    assert lease_gpus(2, 0, 1, table=table, wait=False).devices == [0, 2]  # around the one real holder


def test_count_beyond_the_devices_with_enough_memory_fails_at_once(sim):
    table = sim("1x81920,1x40960")
    with pytest.raises(LeaseError, match="only 1 device"):
        lease_gpus(2, 50000, 1, table=table)


@pytest.mark.slow
def test_grants_follow_each_waiters_cuda_visible_devices(sim):
    table = sim("4x81920")
    held = [lease_gpus(1, 0, 1, table=table, wait=False, owner="main") for _ in range(4)]
    by_device = {le.devices[0]: le for le in held}
    code = ("from expflow.gpu import lease_gpus; l = lease_gpus(1, 0, 1, owner='w-sub'); "
            "print(l.cuda_visible_devices, flush=True); l.release()")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="3")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: queued(table) == 1, "the subprocess to queue")
        by_device[0].release()  # not the waiter's to have, though this process could
        assert granted_to_waiters(table) == []
        by_device[3].release()
        assert proc.stdout.readline().strip() == "3"
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert [d for le in table.active() for d in le.devices] == [1, 2]


@pytest.mark.slow
def test_a_killed_waiter_does_not_hold_the_queue(sim):
    table = sim("2x81920")
    held = [lease_gpus(1, 0, 1, table=table, wait=False, owner="main") for _ in range(2)]
    code = "from expflow.gpu import lease_gpus; lease_gpus(2, 0, 1, owner='w-dead')"
    dead = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
    wait_until(lambda: queued(table) == 1, "the 2-GPU subprocess to queue")
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    small = Waiter(table, 1, owner="w-small")
    held[0].release()  # the dead waiter first in the queue would hold this back; it is dropped instead
    assert small.get().devices == held[0].devices
    assert [w.owner for w in table._read().waiters] == []
    assert not any(os.listdir(table.waiter_dir))
    held[1].release()


@pytest.mark.slow
def test_a_queued_waiter_reclaims_the_lease_of_a_holder_killed_meanwhile(sim):
    table = sim("1x81920")
    holder = hold_one_gpu(dict(os.environ))
    # poll=600: the waiter's own periodic check would come far too late; only its watch on
    # the holder's process can hand it the device within the timeout.
    w = Waiter(table, owner="w1", poll=600, timeout=120)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lease = w.get(timeout=120)
    assert lease.devices == [0] and [le.pid for le in table.active()] == [os.getpid()]
    lease.release()


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
def test_mixed_leasers_keep_job_and_memory_limits(sim, tmp_path):
    """1- and 2-GPU leasers with memory estimates and 3 jobs per device, all at once: at no
    instant (of the intervals logged inside the leases) does a device hold more than 3
    jobs or more memory than it has; the 2-GPU leasers are served too."""
    sim("3x81920")
    out = tmp_path / "intervals.jsonl"
    kinds = [("1", "40000")] * 16 + [("2", "30000")] * 8
    procs = [
        subprocess.Popen([sys.executable, str(REPO / "tests" / "gpu_leaser.py"), str(out), "2", "0.05", count, mem, "3"],
                         env=dict(os.environ))
        for count, mem in kinds
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 48 and sum(len(r["devices"]) == 2 for r in rows) == 16
    for device in range(3):
        events = sorted([(r["start"], 1, r["mem_mb"]) for r in rows if device in r["devices"]]
                        + [(r["end"], -1, -r["mem_mb"]) for r in rows if device in r["devices"]])
        jobs = mem = 0
        for _, dj, dm in events:  # an end sorts before a start at the same instant
            jobs, mem = jobs + dj, mem + dm
            assert jobs <= 3 and mem <= 81920, f"device {device}: {jobs} jobs, {mem} MiB at once"
    assert LeaseTable().active() == [] and LeaseTable()._read().waiters == []


@pytest.mark.slow
def test_lease_of_a_killed_process_is_reclaimed(sim, tmp_path):
    table = sim("1x81920")
    holder = hold_one_gpu(dict(os.environ))
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
