"""The metric hot path: ``RecordWriter.log`` queues and returns in microseconds; what it
acknowledged (``flush``) survives SIGKILL; records stay whole and in order."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from expflow.package import SavePackage, Status, effective_metrics
from expflow.package.records import RecordWriter, encode_record, scan_records

from .conftest import REPO, small_overrides

FIVE = {"train/loss": 0.25, "train/lr": 1e-3, "val/acc": 0.5, "val/loss": 0.75, "grad_norm": 1.5}


def test_log_queues_then_flush_acknowledges_every_record(tmp_path):
    p = tmp_path / "records.log"
    with RecordWriter(p) as w:
        seqs = [w.log({"loss": float(i)}, step=i) for i in range(1000)]
        assert seqs == list(range(1000))
        assert w.flush() == 999 == w.acknowledged_seq
        assert [r["seq"] for r in scan_records(p).records] == seqs  # on disk, in order, before close
        w.log({"loss": 1.0}, step=1000)
    assert scan_records(p).records[-1]["seq"] == 1000  # close flushes
    with pytest.raises(ValueError, match="closed"):
        w.log({"loss": 1.0}, step=1001)  # never a record silently lost


def test_fast_encoding_is_byte_identical_to_json(tmp_path):
    p = tmp_path / "records.log"
    values = {"a": 0.1, "b/c": 3, "é": float("nan"), "d": float("inf"), "e": -float("inf"), "f": 1e-300}
    with RecordWriter(p) as w:
        w.log(values, step=7, epoch=2)
    line = p.read_bytes()
    record = scan_records(p).records[0]
    assert line == encode_record(record)  # what json.dumps writes, checksum included
    assert record["values"]["b/c"] == 3.0 and record["epoch"] == 2


def test_rollback_is_acknowledged_when_it_returns(tmp_path):
    p = tmp_path / "records.log"
    w = RecordWriter(p)
    w.log({"a": 1.0}, step=1)
    w.rollback(0)
    assert [r["kind"] for r in scan_records(p).records] == ["metrics", "rollback"]
    w.close()


def test_a_failing_writer_surfaces_its_error(tmp_path):
    w = RecordWriter(tmp_path / "records.log")
    os.close(w._fd)  # the descriptor goes bad under the writer thread
    w.log({"a": 1.0}, step=1)
    with pytest.raises(OSError, match="record writer failed"):
        w.flush(timeout=10)
    with pytest.raises(OSError):
        w.log({"a": 1.0}, step=2)
    w._fd = os.open(os.devnull, os.O_WRONLY)  # let close() finish cleanly
    with pytest.raises(OSError):
        w.close()


def test_log_never_writes_in_the_callers_thread(tmp_path, monkeypatch):
    """``log`` only encodes and queues: with the writer thread held inside its first write,
    every ``log`` call still returns, and every write comes from the writer thread. (How fast
    that is, against ``swanlab.log``, is a figure: ``benchmarks/log_overhead.py``.)"""
    from expflow.package import records

    real_write = os.write
    held, logged = threading.Event(), threading.Event()
    writers: set[str] = set()
    timed_out: list[bool] = []

    def write(fd, data):
        writers.add(threading.current_thread().name)
        if not held.is_set():
            held.set()
            timed_out.append(not logged.wait(timeout=120))  # the caller logs everything meanwhile
        return real_write(fd, data)

    monkeypatch.setattr(records.os, "write", write)
    n = 5_000
    with RecordWriter(tmp_path / "records.log") as w:
        w.log(FIVE, step=0)
        assert held.wait(timeout=60)  # the writer is now stuck in its first write
        for i in range(1, n):
            w.log(FIVE, step=i)
        logged.set()
    assert timed_out == [False]
    assert writers == {"expflow-records"}
    assert [r["step"] for r in scan_records(tmp_path / "records.log").records] == list(range(n))


def test_wake_choice_decides_whether_log_wakes_the_writer(tmp_path, monkeypatch):
    """``wake=False`` (expflow's own loop, which flushes before each checkpoint): ``log``
    never wakes the writer; ``wake=True`` (a command run's supervisor): an idle writer is
    woken by ``log`` and writes the record without a flush. (The writer's own poll is made
    an hour here, so only a wake-up can move it.)"""
    monkeypatch.setattr(RecordWriter, "_IDLE_WAIT_S", 3600.0)
    for wake in (False, True):
        p = tmp_path / f"records-{wake}.log"
        with RecordWriter(p, wake=wake) as w:
            deadline = time.monotonic() + 60
            while not w._idle:  # the writer thread is waiting for lines, for an hour
                assert time.monotonic() < deadline
                time.sleep(0.001)
            for i in range(100):
                w.log(FIVE, step=i)
            if wake:
                while len(scan_records(p).records) < 100:  # written with no flush
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
            else:
                assert scan_records(p).records == []  # nothing woke the writer
            assert w.flush() == 99
        assert [r["step"] for r in scan_records(p).records] == list(range(100))


def _read_acks(proc: subprocess.Popen, acks: list[int]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        acks.append(int(line))


@pytest.mark.parametrize("trial", range(6))
def test_every_acknowledged_record_survives_sigkill(tmp_path, trial):
    rng = random.Random(1000 + trial)
    p = tmp_path / "records.log"
    proc = subprocess.Popen([sys.executable, "-m", "tests.record_logger", str(p), str(rng.choice([1, 3, 10]))],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    acks: list[int] = []
    reader = threading.Thread(target=_read_acks, args=(proc, acks))
    reader.start()
    deadline = time.monotonic() + 60
    while not acks:  # logging has begun
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    scan = scan_records(p)
    seqs = [r["seq"] for r in scan.records]
    assert acks and seqs[-1] >= acks[-1], "an acknowledged record is missing"
    assert seqs == list(range(len(seqs))), "records are a gapless prefix, in order"
    # At most one torn line, the very last one (a write cut by the kill); nothing else is invalid.
    assert len(scan.problems) <= 1 and all(pr.offset >= scan.offsets[-1] for pr in scan.problems)
    for r in scan.records:
        assert r["values"]["step_x2"] == 2.0 * r["step"] and r["values"]["b"] == -r["step"]


@pytest.mark.slow
def test_checkpointed_records_survive_sigkill_during_log_heavy_training(tmp_path):
    """Real training, a record every step: SIGKILL at random moments. Every record up to the
    newest checkpoint (acknowledged by the flush before it is written) is on disk, equal to
    an uninterrupted run's."""
    runs = tmp_path / "runs"
    overrides = small_overrides(runs, "trainer.max_epochs=6", "trainer.log_every_n_steps=1", "lifecycle.hold_best=null")

    def start(run_id: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "expflow.train", *overrides, f"run_id={run_id}"], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    assert start("reference").wait(timeout=300) == 0
    reference = [(r["step"], r["values"]) for r in effective_metrics(SavePackage.open(runs / "reference").scan_records().records)]
    rng = random.Random(7)
    for trial in range(2):
        proc = start(f"kill{trial}")
        pkg_dir = runs / f"kill{trial}"
        deadline = time.monotonic() + 120
        while not (pkg_dir / "checkpoints" / "index.json").exists():  # at least one checkpoint
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        pkg = SavePackage.open(pkg_dir)
        newest = max(c.step for c in pkg.checkpoints().list())
        scan = pkg.scan_records()
        assert len(scan.problems) <= 1  # at most a torn last line
        got = [(r["step"], r["values"]) for r in effective_metrics(scan.records)]
        covered = [p for p in reference if p[0] <= newest]
        assert len(covered) > newest  # a record every step
        assert got[:len(covered)] == covered, f"a record up to the checkpoint at step {newest} was lost or changed"
        assert pkg.status() in (Status.CRASHED, Status.COMPLETED)
