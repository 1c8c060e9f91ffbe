"""`expflow status` and `expflow show`: every state as it is now, including a killed
process (CRASHED) and a run waiting for a GPU lease (QUEUED)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from expflow.package import SavePackage, Status
from expflow.status_board import Board, parse_statuses, select

from .conftest import (
    REPO,
    assert_one_line_error,
    hold_one_gpu,
    read_terminal,
    run_cli,
    small_overrides,
)


def fake_package(runs: Path, name: str, *, overrides: tuple[str, ...] = (), config: dict | None = None,
                 points: list[tuple[int, dict[str, float]]] = ()) -> SavePackage:
    """A package without training: a tiny code snapshot, a config, and metric records."""
    proj = runs.parent / "proj"
    (proj / "src").mkdir(parents=True, exist_ok=True)
    (proj / "src" / "m.py").write_text("x = 1\n")
    cfg = {"seed": 0, "run_id": name, "paths": {"runs": str(runs)}, "trainer": {"max_epochs": 3},
           "lifecycle": {"hold_best": "val/acc"}, "optim": {"lr": 0.001}, **(config or {})}
    pkg = SavePackage.create(runs / name, config=cfg, overrides=list(overrides), store=runs / ".store",
                             code_root=proj)
    with pkg.record_writer() as w:
        for step, values in points:
            w.log(values, step=step, epoch=step // 10)
    return pkg


def curve(final_acc: float, steps: int = 3) -> list[tuple[int, dict[str, float]]]:
    """Records of a short run whose val/acc ends at ``final_acc``."""
    out = []
    for e in range(1, steps + 1):
        out.append((e * 10 - 5, {"train/loss": (2.0 - final_acc) / e}))
        out.append((e * 10, {"val/acc": final_acc * e / steps, "val/loss": (1.5 - final_acc) / e}))
    return out


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def mark(pkg: SavePackage, status: Status, **fields) -> None:
    pkg.update_manifest(lambda m: m.setdefault("attempts", []).append({"kind": "train", "time": m["created"]}))
    pkg.set_status(status, **fields)


def test_board_shows_each_state_as_it_is_now(tmp_path):
    runs = tmp_path / "runs"
    fake_package(runs, "queued")
    waiting = fake_package(runs, "waiting")
    waiting.set_status(Status.QUEUED, note="waiting for 1 GPU(s)")
    mark(fake_package(runs, "preparing"), Status.PREPARING)
    running = fake_package(runs, "running", points=curve(0.5, 2))
    mark(running, Status.RUNNING, device="cpu", gpus=[1], progress={"epoch": 2, "step": 20, "max_epochs": 3,
                                                                    "steps_per_epoch": 10})
    running.beat(step=20, epoch=2)
    done = fake_package(runs, "completed", points=curve(0.9))
    mark(done, Status.RUNNING)
    done.set_status(Status.COMPLETED, progress={"epoch": 3, "step": 30, "max_epochs": 3, "steps_per_epoch": 10})
    failed = fake_package(runs, "failed", points=curve(0.3, 1))
    mark(failed, Status.CRASHED, error={"type": "ValueError", "message": "Invalid learning rate: -1.0", "log": ""})
    killed = fake_package(runs, "killed", points=curve(0.4, 1))
    mark(killed, Status.RUNNING)
    pid = dead_pid()
    killed.update_manifest(lambda m: m["status_history"][-1].update(pid=pid))
    killed.beat()
    (killed.heartbeat_path).write_text(json.dumps({**killed.heartbeat(), "pid": pid}))

    rows = {r.run_id: r for r in Board(runs).rows()}
    assert {k: r.status for k, r in rows.items()} == {
        "queued": "QUEUED", "waiting": "QUEUED", "preparing": "PREPARING", "running": "RUNNING",
        "completed": "COMPLETED", "failed": "CRASHED", "killed": "CRASHED"}
    assert rows["waiting"].note == "waiting for 1 GPU(s)" and rows["queued"].note == "not started"
    assert rows["killed"].recorded_status == "RUNNING" and "died" in rows["killed"].note
    assert rows["killed"].finished_estimated and rows["killed"].finished
    assert rows["failed"].note.startswith("ValueError: Invalid learning rate")
    r = rows["running"]
    assert (r.step, r.total_steps, r.epoch, r.max_epochs) == (20, 30, 2, 3)
    assert r.devices == "gpu 1 · cpu" and r.finished is None and r.duration_s is not None
    assert rows["completed"].metric == "val/acc" and rows["completed"].value == pytest.approx(0.9)
    assert rows["completed"].duration_s is not None and rows["completed"].finished

    by_metric = [r.run_id for r in select(list(rows.values()), sort="metric")]
    assert by_metric[:4] == ["completed", "running", "killed", "failed"]  # best val/acc first, no value last
    crashed = select(list(rows.values()), parse_statuses(["crashed"]), sort="run")
    assert [r.run_id for r in crashed] == ["failed", "killed"]
    assert parse_statuses(["queuing,Running"]) == {"QUEUED", "RUNNING"}


def test_status_cli_table_json_filter_and_errors(tmp_path):
    runs = tmp_path / "runs"
    fake_package(runs, "a1", points=curve(0.8))
    mark(fake_package(runs, "b2", points=curve(0.6)), Status.CRASHED, error={"type": "OSError", "message": "disk"})
    (runs / "not-a-package").mkdir()
    table = run_cli("status", "--runs", str(runs))
    assert table.returncode == 0, table.stderr
    for needle in ("a1", "b2", "QUEUED", "CRASHED", "val/acc", "0.8", "OSError: disk", "1 QUEUED", "1 CRASHED"):
        assert needle in table.stdout, needle
    only = run_cli("status", "--runs", str(runs), "--json", "--status", "crashed")
    assert [r["run_id"] for r in json.loads(only.stdout)] == ["b2"]
    assert_one_line_error(run_cli("status", "--runs", str(runs), "--status", "done"), "unknown status", "COMPLETED")
    assert_one_line_error(run_cli("status", "--runs", str(tmp_path / "nope")), "no such runs directory")
    (tmp_path / "a-file").write_text("x")
    assert_one_line_error(run_cli("status", "--runs", str(tmp_path / "a-file")), "a-file: not a directory")


def test_status_watch_refreshes_until_interrupted(tmp_path):
    """On a terminal the board redraws itself: a package that appears is shown by a later
    refresh (waited for, not timed), and Ctrl-C ends it cleanly."""
    runs = tmp_path / "runs"
    fake_package(runs, "w1", points=curve(0.7))
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="120", LINES="40")
    proc = subprocess.Popen([sys.executable, "-m", "expflow.cli", "status", "--runs", str(runs), "--watch",
                             "--interval", "0.2"], stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    screen = bytearray()
    reader = threading.Thread(target=read_terminal, args=(master, screen), daemon=True)
    reader.start()
    try:
        wait_for(lambda: b"w1" in screen, 120, "the first refresh")
        fake_package(runs, "w2", points=curve(0.2))  # appears in a later refresh
        wait_for(lambda: b"w2" in screen, 120, "a refresh showing the new package")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        reader.join(timeout=60)
        os.close(master)
    assert code == 0, screen.decode(errors="replace")[-2000:]
    assert b"every 0.2s" in screen


def test_show_renders_history_analyses_and_a_killed_run(tmp_path):
    runs = tmp_path / "runs"
    pkg = fake_package(runs, "killed", points=curve(0.4, 1))
    mark(pkg, Status.RUNNING)
    pid = dead_pid()
    pkg.update_manifest(lambda m: m["status_history"][-1].update(pid=pid))
    pkg.logs_dir.mkdir(exist_ok=True)
    pkg.log_path(0, "err").write_text("".join(f"line {i}\n" for i in range(50)))
    done = pkg.analysis_dir / "learning_curves"
    done.mkdir(parents=True)
    (done / "results.json").write_text(json.dumps({"val/acc": {"last": 0.4}, "points": 3}))
    (done / "analysis.json").write_text(json.dumps({"script": "learning_curves", "results": "results.json",
                                                    "files": ["results.json"], "checkpoint": None,
                                                    "time": "2026-01-01T00:00:00+00:00"}))
    shown = run_cli("show", str(pkg.path))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "CRASHED" in out and f"process {pid}" in out and "died while RUNNING" in out
    assert "history" in out and "QUEUED" in out and "attempt: train" in out
    assert "learning_curves" in out and "points=3" in out
    assert "line 49" in out and "line 20" in out and "line 19" not in out  # the last 30 lines
    info = json.loads(run_cli("show", str(pkg.path), "--json").stdout)
    assert info["analysis_records"]["learning_curves"]["script"] == "learning_curves"


# -- end to end: real processes -------------------------------------------------------------
def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def statuses(runs: Path, env: dict) -> dict[str, dict]:
    proc = run_cli("status", "--runs", str(runs), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return {r["run_id"]: r for r in json.loads(proc.stdout)}


@pytest.mark.slow
def test_live_states_waiting_for_a_lease_running_killed_and_crashed(tmp_path):
    runs = tmp_path / "runs"
    env = {"EXPFLOW_SIMULATED_GPUS": "1x1000", "EXPFLOW_LEASE_DIR": str(tmp_path / "leases")}
    full_env = dict(os.environ, **env)
    # A run that crashes in its training code, and one that completes.
    # A negative momentum passes the config schema and fails inside torch: a crash of "user code".
    crashed = run_cli(*small_overrides(runs, "optim=sgd", "optim.optimizer.momentum=-1", "run_id=crashed"),
                      module="expflow.train")
    assert crashed.returncode != 0
    # The only (simulated) GPU is held by another process ...
    holder = hold_one_gpu(full_env)
    procs = [holder]
    try:
        # ... so a package that needs one waits for its lease: QUEUED.
        made = run_cli("materialize", "--runs", str(runs), "--config-dir", str(REPO / "conf"),
                       "--", "trainer=debug", f"code.root={REPO}", "gpu.count=1", env=env)
        assert made.returncode == 0, made.stderr
        (waiting_dir,) = [p for p in runs.iterdir() if p.name != "crashed" and not p.name.startswith(".")]
        waiter = subprocess.Popen([sys.executable, "-m", "expflow.cli", "run", str(waiting_dir)], env=full_env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(waiter)
        # A long CPU run, RUNNING until it is killed.
        trainer = subprocess.Popen([sys.executable, "-m", "expflow.train",
                                    *small_overrides(runs, "trainer.max_epochs=1000", "run_id=victim")],
                                   cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(trainer)
        wait_for(lambda: (runs / "victim" / "manifest.json").exists()
                 and SavePackage(runs / "victim").status() is Status.RUNNING
                 and SavePackage(waiting_dir).manifest()["status_history"][-1].get("note"), 120, "RUNNING and QUEUED")
        wait_for(lambda: statuses(runs, env)["victim"]["step"] > 0, 60, "progress")
        rows = statuses(runs, env)
        assert rows[waiting_dir.name]["status"] == "QUEUED"
        assert rows[waiting_dir.name]["note"] == "waiting for 1 GPU(s)"
        assert rows["victim"]["status"] == "RUNNING" and rows["victim"]["max_epochs"] == 1000
        assert rows["crashed"]["status"] == "CRASHED" and "ValueError" in rows["crashed"]["note"]
        table = run_cli("status", "--runs", str(runs), env=env).stdout
        assert "RUNNING" in table and "QUEUED" in table and "waiting for 1 GPU(s)" in table

        trainer.send_signal(signal.SIGKILL)  # no chance to record anything
        trainer.wait()
        rows = statuses(runs, env)
        assert rows["victim"]["status"] == "CRASHED" and rows["victim"]["recorded_status"] == "RUNNING"
        assert rows["victim"]["finished_estimated"] and "died" in rows["victim"]["note"]
        shown = run_cli("show", str(runs / "victim"))
        assert "CRASHED" in shown.stdout and "died while RUNNING" in shown.stdout

        shown = run_cli("show", str(runs / "crashed"))
        assert "CRASHED" in shown.stdout and "ValueError" in shown.stdout
        assert "Traceback" in shown.stdout  # the error log's tail

        holder.kill()  # the lease frees: the waiting run trains and completes
        holder.wait()
        assert waiter.wait(timeout=120) == 0
        rows = statuses(runs, env)
        assert rows[waiting_dir.name]["status"] == "COMPLETED" and rows[waiting_dir.name]["devices"].startswith("gpu 0")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def history(pkg: SavePackage, spans: list[tuple[str, float]], start: str = "2026-01-01T10:00:00+00:00") -> None:
    """Give a package a status history: (status, seconds after ``start``) entries, its attempts
    (one per PREPARING) and started/finished as set_status would have written them."""
    from datetime import datetime, timedelta

    t0 = datetime.fromisoformat(start)

    def at(seconds: float) -> str:
        return (t0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")

    def change(m: dict) -> None:
        entries = [{"status": s, "time": at(t), "host": "h", "pid": 1} for s, t in spans]
        m["status_history"] = [m["status_history"][0], *entries]
        m["attempts"] = [{"kind": "train" if i == 0 else "continue", "time": e["time"]}
                         for i, e in enumerate(x for x in entries if x["status"] == "PREPARING")]
        m["status"] = spans[-1][0]
        m["started"] = next(e["time"] for e in entries if e["status"] == "RUNNING")
        m["finished"] = entries[-1]["time"] if spans[-1][0] in ("COMPLETED", "CRASHED") else None

    pkg.update_manifest(change)


def test_durations_are_time_spent_training(tmp_path):
    """A run that trained for seconds shows seconds, not 0:00; one continued an hour later
    shows the sum of its attempts (with the wall time beside it), not first start to last finish."""
    from expflow.status_board import duration_text, time_text

    runs = tmp_path / "runs"
    short = fake_package(runs, "short", points=curve(0.5))
    history(short, [("PREPARING", 0), ("RUNNING", 2), ("COMPLETED", 4.4)])
    later = fake_package(runs, "later", points=curve(0.6))
    history(later, [("PREPARING", 0), ("RUNNING", 1), ("CRASHED", 31),
                    ("PREPARING", 3600), ("RUNNING", 3605), ("COMPLETED", 3650)])
    rows = {r.run_id: r for r in Board(runs).rows()}
    assert rows["short"].duration_s == pytest.approx(2.4) and duration_text(rows["short"].duration_s) == "2.4 s"
    r = rows["later"]
    assert r.duration_s == pytest.approx(75) and r.attempts == 2
    assert r.wall_s == pytest.approx(3649)
    assert time_text(r) == "1:15 (1:00:49 since first start)" and time_text(rows["short"]) == "2.4 s"
    assert [x.run_id for x in select(list(rows.values()), sort="duration")] == ["short", "later"]
    table = run_cli("status", "--runs", str(runs), env={"COLUMNS": "200"})
    assert "2.4 s" in table.stdout and "1:15 (1:00:49 since first start)" in table.stdout, table.stdout
    shown = run_cli("show", str(runs / "later"), env={"COLUMNS": "200"})
    assert "time training       1:15 over 2 attempts" in shown.stdout, shown.stdout
    assert [duration_text(s) for s in (0.04, 9.96, 42.4, 59.6, 185, 3723)] == \
        ["0.0 s", "10 s", "42 s", "1:00", "3:05", "1:02:03"]


def test_a_cpu_fallback_says_so_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    fell_back = fake_package(runs, "fell", config={"gpu": {"count": 1}, "trainer": {"max_epochs": 3, "device": "auto"}},
                             points=curve(0.5))
    mark(fell_back, Status.COMPLETED, device="cpu", gpus=[])
    chose_cpu = fake_package(runs, "chose", config={"gpu": {"count": 1}, "trainer": {"max_epochs": 3, "device": "cpu"}},
                             points=curve(0.5))
    mark(chose_cpu, Status.COMPLETED, device="cpu", gpus=[])
    rows = {r.run_id: r for r in Board(runs).rows()}
    assert rows["fell"].cpu_fallback and not rows["chose"].cpu_fallback
    table = run_cli("status", "--runs", str(runs), env={"COLUMNS": "200"})
    lines = [line for line in table.stdout.splitlines() if "trained on the CPU" in line]
    assert len(lines) == 1 and "1 run(s) asked for GPUs" in lines[0], table.stdout
    assert "CPU fallback" in next(line for line in table.stdout.splitlines() if line.startswith("fell"))
    shown = run_cli("show", str(fell_back.path), env={"COLUMNS": "200"})
    fallback = [line for line in shown.stdout.splitlines() if "ran on the CPU" in line]
    assert fallback == ["ran on the CPU: it asked for 1 GPU(s) and none was available "
                        "(gpu.allow_cpu=true let it fall back)"], shown.stdout
    assert "ran on the CPU" not in run_cli("show", str(chose_cpu.path)).stdout


@pytest.mark.slow
def test_a_run_that_falls_back_to_the_cpu_says_so(tmp_path):
    runs = tmp_path / "runs"
    env = {"CUDA_VISIBLE_DEVICES": "", "EXPFLOW_SIMULATED_GPUS": ""}
    overrides = [o for o in small_overrides(runs, "trainer.max_epochs=1", "trainer.device=auto") if o != "gpu=cpu"]
    made = run_cli("materialize", "--runs", str(runs), "--", *overrides, env=env)
    assert made.returncode == 0, made.stderr
    [pkg] = [p for p in runs.iterdir() if (p / "manifest.json").exists()]
    proc = run_cli("run", str(pkg), env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "ran on the CPU" in line]
    assert lines == [f"{pkg.name}: ran on the CPU: it asked for 1 GPU(s) and none was available "
                     "(gpu.allow_cpu=true let it fall back)"], proc.stderr


def test_reruns_live_apart_and_are_listed_as_reruns_of_their_run(tmp_path):
    """`expflow rerun` writes into <runs>/.reruns/<run id>-<n>/ (the first free n, claimed by its
    mkdir); status lists each as a rerun of its run; align's package listing
    (package_dirs without reruns) and the runs directory itself hold the runs alone."""
    from expflow.package.manifest import RERUNS, package_dirs
    from expflow.rerun import _rerun_dir

    runs = tmp_path / "runs"
    run = fake_package(runs, "abc", points=[(1, {"val/acc": 0.5})])
    mark(run, Status.COMPLETED)
    first, second = _rerun_dir(run), _rerun_dir(run)
    assert (first, second) == (runs / RERUNS / "abc-1", runs / RERUNS / "abc-2")
    first.rmdir()
    rerun = fake_package(runs / RERUNS, "abc-2", points=[(1, {"val/acc": 0.5})])
    rerun.update_manifest(lambda m: m.update(origin={"rerun_of": "abc", "path": str(run.path)}))
    mark(rerun, Status.COMPLETED)
    assert _rerun_dir(rerun) == runs / RERUNS / "abc-2-1"  # a rerun of a rerun: beside it
    assert package_dirs(runs) == [run.path] and package_dirs(runs, reruns=True) == [run.path, rerun.path]
    rows = {r.run_id: r for r in Board(runs).rows()}
    assert set(rows) == {"abc", "abc-2"} and rows["abc-2"].rerun_of == "abc"
    out = run_cli("status", "--runs", str(runs), "--json")
    assert out.returncode == 0, out.stderr
    listed = {r["run_id"]: r for r in json.loads(out.stdout)}
    assert listed["abc-2"]["rerun_of"] == "abc"


def test_status_shows_runs_stopped_on_a_signal_and_how_often_they_were_requeued(tmp_path):
    """A run stopped on TIMEOUT (checkpointed) says so and that a retry continues it; once it
    runs again, or has completed, status counts its stops by reason."""
    runs = tmp_path / "runs"
    pkg = fake_package(runs, "r1", points=[(1, {"val/acc": 0.5})])
    stops = [{"reason": "TIMEOUT", "signal": "SIGUSR1", "step": 30}, {"reason": "PREEMPTED", "signal": "SIGTERM", "step": 80}]
    pkg.update_manifest(lambda m: m.update(attempts=[{"kind": "train", "stopped": stops[0]}]))
    pkg.set_status(Status.CRASHED, error={"type": "TIMEOUT", "message": "TIMEOUT (SIGUSR1): stopped at step 30"})
    (row,) = Board(runs).rows()
    assert row.stops == {"TIMEOUT": 1}
    assert row.note == "stopped on TIMEOUT at step 30, checkpointed (a retry continues)"
    pkg.update_manifest(lambda m: m.update(attempts=[{"kind": "train", "stopped": stops[0]},
                                                     {"kind": "continue", "stopped": stops[1]}, {"kind": "continue"}]))
    pkg.set_status(Status.COMPLETED)
    (row,) = Board(runs).rows()
    assert row.stops == {"TIMEOUT": 1, "PREEMPTED": 1} and row.note == "requeued 2x (TIMEOUT 1, PREEMPTED 1)"
    out = run_cli("status", "--runs", str(runs))
    assert out.returncode == 0 and "requeued 2x" in out.stdout.replace("\n", " "), out.stdout


# -- what is left of a recorded process's group --------------------------------------
def test_the_group_a_dead_program_left_is_found_by_its_recorded_identity(tmp_path):
    """group_left_over: a recorded leader alive; its child alone once the leader has exited
    (the group lives on); nothing once all are gone; never another host's or a reused pid's."""
    from expflow.package.status import HOST, group_left_over, process_identity

    ready = tmp_path / "child.pid"
    # The leader starts a child in its own group, tells its pid, and waits to be told to exit.
    leader = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         "child = subprocess.Popen(['sleep', '300'])\n"
         f"open({str(ready)!r}, 'w').write(str(child.pid))\n"
         "sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, start_new_session=True, text=True)
    try:
        for _ in range(600):
            if ready.exists() and ready.read_text():
                break
            time.sleep(0.05)
        child = int(ready.read_text())
        ident = process_identity(leader.pid)
        assert sorted(group_left_over(ident)) == sorted([leader.pid, child])
        assert group_left_over({**ident, "host": HOST + "-elsewhere"}) == []
        assert group_left_over({**ident, "pid_started": float(ident["pid_started"]) - 3600}) == []  # a reused pid
        assert group_left_over({k: v for k, v in ident.items() if k != "pid_started"}) == []  # an older record
        leader.communicate("\n", timeout=60)  # the leader exits (reaped here): its child stays in the group
        assert group_left_over(ident) == [child]
        os.kill(child, signal.SIGKILL)
        for _ in range(600):  # the child's parent is gone: whoever reaps it, it is no member once dead
            if not group_left_over(ident):
                break
            time.sleep(0.05)
        assert group_left_over(ident) == []
    finally:
        if leader.poll() is None:
            leader.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
