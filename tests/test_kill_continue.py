"""SIGKILL at random moments, then `expflow continue`: the package completes with every
acknowledged metric record intact, and the checkpoint tracks hold exactly what an
uninterrupted run holds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from expflow.package import SavePackage, Status, effective_metrics

from .conftest import REPO, hold_one_gpu, run_cli, small_overrides

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 23  # 1,438 training digits in batches of 64
TRACK_OVERRIDES = [
    "trainer.max_epochs=10", "trainer.log_every_n_steps=1",
    "checkpoint.fast_keep=2", "checkpoint.slow_every=3", "checkpoint.slow_keep=2",
    "checkpoint.persistent_keep=1", "lifecycle.hold_every=4", "lifecycle.hold_best=null",
]
# fast: epochs 9, 10; slow (every 3rd: 3, 6, 9) keeps 6, 9; persistent (every 4th, keep 1): 8
EXPECTED_FILES = sorted(f"step-{e * STEPS_PER_EPOCH:08d}.pt" for e in (6, 8, 9, 10))


def points(pkg: SavePackage) -> list[tuple[int, dict]]:
    return [(r["step"], r["values"]) for r in effective_metrics(pkg.scan_records().records)]


def start_train(runs, run_id):
    cmd = [sys.executable, "-m", "expflow.train", *small_overrides(runs, *TRACK_OVERRIDES), f"run_id={run_id}"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def last_step(pkg_dir) -> int:
    """The step of the last whole record line in the package's record file (0: none yet)."""
    import re

    try:
        data = (pkg_dir / "metrics" / "records.log").read_bytes()
    except OSError:
        return 0
    whole = data[: data.rfind(b"\n") + 1]
    found = re.findall(rb'"step":(\d+)', whole[-4096:])
    return int(found[-1]) if found else 0


def kill_at(proc, pkg_dir, step):
    """SIGKILL once the run has recorded ``step`` (0: as soon as its package exists, i.e.
    during start-up). By progress, not by time: the kill interrupts the run whatever the
    machine's load (the run logs every step, so it is at most a few steps further)."""
    deadline = time.monotonic() + 120
    while not (pkg_dir / "manifest.json").exists() or last_step(pkg_dir) < step:
        assert proc.poll() is None, f"training ended before step {step}"
        assert time.monotonic() < deadline, f"step {step} not reached"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_then_continue_completes_without_losing_records(tmp_path):
    from datetime import datetime

    runs = tmp_path / "runs"
    ref_proc = start_train(runs, "reference")
    assert ref_proc.wait(timeout=300) == 0
    reference = SavePackage.open(runs / "reference")
    m = reference.manifest()
    # From the package's creation to its completion: the window the kills land in.
    duration = (datetime.fromisoformat(m["finished"]) - datetime.fromisoformat(m["created"])).total_seconds()
    assert reference.checkpoints().files_on_disk() == EXPECTED_FILES
    ref_points = points(reference)
    assert len(ref_points) > 10 * STEPS_PER_EPOCH

    rng = random.Random(int(os.environ.get("EXPFLOW_TEST_SEED", "1234")))
    total = 10 * STEPS_PER_EPOCH
    # Trial 0 dies during start-up, the others at a random step of training (mid-epoch, at an
    # epoch's end while its checkpoint is written, ...), at most 70% through.
    kill_steps = [0] + [rng.randint(1, int(0.7 * total)) for _ in range(3)]
    crashed_seen = 0
    for trial in range(4):
        run_id = f"trial{trial}"
        pkg_dir = runs / run_id
        kill_at(start_train(runs, run_id), pkg_dir, kill_steps[trial])
        pkg = SavePackage.open(pkg_dir)
        assert pkg.status() is Status.CRASHED, (kill_steps[trial], pkg.status())
        crashed_seen += 1
        # Acknowledged records are intact: no torn or corrupt line, and every one is
        # a record the reference also wrote (up to the rollback a continue will do).
        scan = pkg.scan_records()
        # At most a torn last line: a write the kill cut short (never acknowledged).
        assert [p.reason.split()[0] for p in scan.problems] in ([], ["torn"])
        for step, values in points(pkg):
            assert (step, values) in ref_points
        # A second kill, during the continue, in half of the trials.
        if trial % 2:
            cont = subprocess.Popen([sys.executable, "-m", "expflow.cli", "continue", str(pkg_dir)], cwd=REPO,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3, 0.9 * duration))
            cont.send_signal(signal.SIGKILL)
            cont.wait()
            # The worker it launched dies with it (and says so), never trains on alone.
            deadline = time.monotonic() + 20
            while pkg.status().active:
                assert time.monotonic() < deadline, pkg.manifest()["status_history"][-1]
                time.sleep(0.05)
            assert pkg.status() in (Status.CRASHED, Status.COMPLETED)
        proc = run_cli("continue", str(pkg_dir), "--force")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert pkg.status() is Status.COMPLETED
        assert pkg.scan_records().problems == []
        assert points(pkg) == ref_points  # bit-identical to the uninterrupted run
        assert pkg.checkpoints().files_on_disk() == EXPECTED_FILES
    assert crashed_seen == 4  # the kills really interrupted training


def test_continue_leases_its_gpus_like_a_train_job(tmp_path):
    """`expflow continue` takes the run's GPUs through a lease: with the only (simulated)
    device held by another process it waits, QUEUED, and trains once the device is free."""
    runs = tmp_path / "runs"
    env = {"EXPFLOW_SIMULATED_GPUS": "1x1000", "EXPFLOW_LEASE_DIR": str(tmp_path / "leases")}
    full_env = dict(os.environ, **env)
    first = run_cli(*small_overrides(runs, "gpu.count=1", "trainer.max_epochs=2", "run_id=g1"),
                    module="expflow.train", env=env)
    assert first.returncode == 0, first.stderr
    pkg = SavePackage.open(runs / "g1")
    holder = hold_one_gpu(full_env)
    cont = None
    try:
        cont = subprocess.Popen([sys.executable, "-m", "expflow.cli", "continue", str(pkg.path), "--force"],
                                env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while pkg.manifest()["status_history"][-1].get("note") != "waiting for 1 GPU(s)":
            assert cont.poll() is None, cont.communicate()
            assert time.monotonic() < deadline, pkg.manifest()["status_history"][-1]
            time.sleep(0.05)
        assert pkg.status() is Status.QUEUED
        holder.kill()
        holder.wait()
        out, err = cont.communicate(timeout=300)
        assert cont.returncode == 0, err
    finally:
        for p in (holder, cont):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    m = SavePackage.open(runs / "g1").manifest()
    assert m["status"] == "COMPLETED" and [a["kind"] for a in m["attempts"]][-1] == "continue"
    assert len(m["leases"]) == 2 and m["leases"][-1]["gpus"] == [0]


SIGNAL_AT = ["lifecycle._target_=tests.signal_lifecycle.SignalAt", "+lifecycle.steps=[30,80]",
             "code.include=[src/**/*.py,conf/**/*.yaml,tests/*.py]"]


@pytest.mark.parametrize("signame, reason", [("SIGUSR1", "TIMEOUT"), ("SIGTERM", "CANCELLED")])
def test_a_stop_signal_checkpoints_at_its_step_and_continues_bit_identically(tmp_path, signame, reason):
    """SIGUSR1 (a time limit's warning) or SIGTERM (a cancel), mid-epoch: the run finishes the
    step, checkpoints at it (interim: the tracks stay an uninterrupted run's), records why
    and exits non-zero; `expflow continue` resumes at that step, inside the epoch (a second
    stop there, sent to the continue's launcher, which forwards it to the rank), and the run
    completes with every metric bit-identical to one never stopped."""
    runs = tmp_path / "runs"
    ref = start_train(runs, "reference")
    assert ref.wait(timeout=300) == 0
    reference = SavePackage.open(runs / "reference")
    proc = run_cli(*small_overrides(runs, *TRACK_OVERRIDES, *SIGNAL_AT, f"+lifecycle.signame={signame}",
                                    "run_id=stopped"), module="expflow.train", timeout=300)
    assert proc.returncode == 1 and f"interrupted: {reason} ({signame}): stopped at step 30" in proc.stderr, proc.stderr
    pkg = SavePackage.open(runs / "stopped")
    for stop in (30, 80):
        m = pkg.manifest()
        assert pkg.status() is Status.CRASHED and m["error"]["type"] == reason
        assert {k: m["attempts"][-1]["stopped"][k] for k in ("reason", "signal", "step")} == {
            "reason": reason, "signal": signame, "step": stop}
        latest = pkg.checkpoints().latest()
        assert latest.step == stop and stop % STEPS_PER_EPOCH  # mid-epoch
        assert all(p in points(reference) for p in points(pkg))
        assert max(s for s, _ in points(pkg)) == stop  # at most the step in progress is redone
        proc = run_cli("continue", str(pkg.path), timeout=300)
        if stop == 30:
            assert proc.returncode == 1 and "stopped at step 80" in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert pkg.status() is Status.COMPLETED
    assert points(pkg) == points(reference)
    assert pkg.checkpoints().files_on_disk() == EXPECTED_FILES
    kinds = [(a["kind"], (a.get("stopped") or {}).get("step")) for a in pkg.manifest()["attempts"]]
    assert kinds == [("train", 30), ("continue", 80), ("continue", None)]
    from expflow.status_board import Board

    (row,) = [r for r in Board(runs).rows() if r.run_id == "stopped"]
    assert row.stops == {reason: 2} and row.note == f"requeued 2x ({reason} 2)"
