"""Damaged packages, dead QUEUED runs and COMPLETED packages, through `expflow show` and
`expflow continue`: a damaged file is one line naming the file and the key, a non-zero
exit, and a package left exactly as it was; a run whose process died shows CRASHED in
every live state, QUEUED included, and `continue` takes it; a COMPLETED package is
continued only with --force (or an explicit --checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from expflow.cli import main
from expflow.errors import PackageError
from expflow.package import SavePackage, Status, effective_metrics
from expflow.package.status import HOST, process_identity
from expflow.status_board import Board

from .conftest import (
    CONF,
    REPO,
    assert_one_line_error,
    hold_one_gpu,
    run_cli,
    small_overrides,
    tree_digest,
)


# -- helpers ----------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, out: str, err: str, *needles: str) -> None:
    assert code != 0, out + err
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def crashed_package(tmp_path: Path, name: str = "r1") -> SavePackage:
    """A package without training: code, config, records, a checkpoint, logs, a heartbeat,
    and a RUNNING status whose process is dead (CRASHED: `continue` would take it)."""
    import torch

    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True, exist_ok=True)
    (proj / "src" / "m.py").write_text("x = 1\n")
    runs = tmp_path / "runs"
    cfg = {"seed": 0, "run_id": name, "paths": {"runs": str(runs)}, "trainer": {"max_epochs": 3}}
    pkg = SavePackage.create(runs / name, config=cfg, store=runs / ".store", code_root=proj)
    with pkg.record_writer() as w:
        for step in (5, 10):
            w.log({"train/loss": 1.0 / step}, step=step, epoch=step // 10)
    pkg.checkpoints().save({"format": 1, "model": {"w": torch.zeros(1)}}, step=10, epoch=1)
    pkg.update_manifest(lambda m: m.setdefault("attempts", []).append({"kind": "train", "time": m["created"]}))
    pkg.set_status(Status.RUNNING, device="cpu", progress={"epoch": 1, "step": 10, "max_epochs": 3})
    pid = dead_pid()
    pkg.update_manifest(lambda m: m["status_history"][-1].update(pid=pid))
    pkg.beat(step=10, epoch=1)
    pkg.heartbeat_path.write_text(json.dumps({**pkg.heartbeat(), "pid": pid}))
    pkg.logs_dir.mkdir()
    pkg.log_path(0, "err").write_text("boom\n")
    assert pkg.status() is Status.CRASHED
    return pkg


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    new = change(data)
    path.write_text(json.dumps(data if new is None else new))


def edit_yaml(path: Path, change: Callable[[Any], Any]) -> None:
    import yaml

    data = yaml.safe_load(path.read_text())
    new = change(data)
    path.write_text(yaml.safe_dump(data if new is None else new))


def manifest_edit(change: Callable[[dict], Any]) -> Callable[[SavePackage], None]:
    return lambda pkg: edit_json(pkg.manifest_path, change)


def index_edit(change: Callable[[dict], Any]) -> Callable[[SavePackage], None]:
    return lambda pkg: edit_json(pkg.checkpoints_dir / "index.json", change)


def replace_with_dir(rel: str) -> Callable[[SavePackage], None]:
    def damage(pkg: SavePackage) -> None:
        path = pkg.path / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        path.mkdir()
        (path / "x").write_text("x")

    return damage


def replace_with_file(rel: str) -> Callable[[SavePackage], None]:
    def damage(pkg: SavePackage) -> None:
        shutil.rmtree(pkg.path / rel)
        (pkg.path / rel).write_text("not a directory\n")

    return damage


def write(rel: str, text: str) -> Callable[[SavePackage], None]:
    return lambda pkg: (pkg.path / rel).write_text(text)


def _set(d: dict, key: str, value: Any) -> None:
    d[key] = value


# (id, damage, needles in the one line, whether `show` fails too)
FAULTS = [
    ("history-entry-not-object", manifest_edit(lambda m: m["status_history"].insert(1, "RUNNING")),
     ["manifest.json", "status_history[1]", "expected an object"], True),
    ("history-last-entry-not-object", manifest_edit(lambda m: m["status_history"].append(["RUNNING"])),
     ["manifest.json", "status_history[2]"], True),
    ("history-time-not-a-time", manifest_edit(lambda m: m["status_history"][0].update(time=1234)),
     ["manifest.json", "status_history[0].time", "ISO"], True),
    ("history-pid-a-string", manifest_edit(lambda m: m["status_history"][-1].update(pid="123")),
     ["manifest.json", "status_history[1].pid", "integer"], True),
    ("history-not-a-list", manifest_edit(lambda m: _set(m, "status_history", {"0": "QUEUED"})),
     ["manifest.json", "status_history", "expected a list"], True),
    ("unknown-status", manifest_edit(lambda m: _set(m, "status", "DONE")),
     ["manifest.json", "'status'", "DONE"], True),
    ("attempts-entry-not-object", manifest_edit(lambda m: _set(m, "attempts", ["train"])),
     ["manifest.json", "attempts[0]"], True),
    ("progress-step-a-string", manifest_edit(lambda m: m["progress"].update(step="10")),
     ["manifest.json", "progress.step"], True),
    ("started-not-a-time", manifest_edit(lambda m: _set(m, "started", "yesterday")),
     ["manifest.json", "'started'"], True),
    ("error-not-object", manifest_edit(lambda m: _set(m, "error", "it broke")),
     ["manifest.json", "'error'"], True),
    ("overrides-not-strings", manifest_edit(lambda m: _set(m, "overrides", [1, 2])),
     ["manifest.json", "overrides[0]"], True),
    ("manifest-a-list", manifest_edit(lambda m: [m]),
     ["manifest.json", "expected an object, got a list"], True),
    ("manifest-not-json", write("manifest.json", '{"format": "expflow.package/1", '),
     ["manifest.json", "not valid JSON"], True),
    ("index-step-a-string", index_edit(lambda ix: ix["checkpoints"]["1"].update(step="10")),
     ["index.json", "checkpoints.1.step", "integer"], True),
    ("index-entry-not-object", index_edit(lambda ix: ix["checkpoints"].update({"1": [10, 1]})),
     ["index.json", "checkpoints.1", "expected an object"], True),
    ("index-tracks-a-list", index_edit(lambda ix: _set(ix, "tracks", [1])),
     ["index.json", "'tracks'"], True),
    ("index-track-of-strings", index_edit(lambda ix: ix["tracks"].update(fast=["1"])),
     ["index.json", "tracks.fast[0]"], True),
    ("index-file-outside", index_edit(lambda ix: ix["checkpoints"]["1"].update(file="../../manifest.json")),
     ["index.json", "checkpoints.1.file"], True),
    ("index-key-not-a-number", index_edit(lambda ix: _set(ix, "checkpoints", {"one": ix["checkpoints"]["1"]})),
     ["index.json", "checkpoints.one"], True),
    ("index-next-number-missing", index_edit(lambda ix: ix.pop("next_number") and None),
     ["index.json", "next_number", "missing"], True),
    ("index-next-number-behind", index_edit(lambda ix: _set(ix, "next_number", 1)),
     ["index.json", "next_number"], True),
    ("index-a-list", index_edit(lambda ix: [ix]),
     ["index.json", "expected an object, got a list"], True),
    ("index-not-json", write("checkpoints/index.json", "{"),
     ["index.json", "not valid JSON"], True),
    ("index-a-directory", replace_with_dir("checkpoints/index.json"),
     ["index.json", "a directory"], True),
    ("records-a-directory", replace_with_dir("metrics/records.log"),
     ["records.log", "a directory"], True),
    ("metrics-a-file", replace_with_file("metrics"),
     ["metrics", "not a directory"], True),
    ("code-listing-entry-not-object", lambda pkg: edit_json(pkg.code_listing_path, lambda c: c + ["src/m.py"]),
     ["code.json", "[1]", "expected an object"], False),
    ("code-listing-absolute-path", lambda pkg: edit_json(pkg.code_listing_path, lambda c: c[0].update(path="/etc/x")),
     ["code.json", "[0].path"], False),
    ("code-listing-an-object", lambda pkg: edit_json(pkg.code_listing_path, lambda c: {"files": c}),
     ["code.json", "expected a list"], False),
    ("config-a-list", write("config.yaml", "- 1\n- 2\n"),
     ["config.yaml", "expected a mapping"], True),
    ("config-retention-a-string", lambda pkg: pkg.config_path.write_text(
        pkg.config_path.read_text() + "checkpoint:\n  fast_keep: two\n"),
     ["config.yaml", "checkpoint.fast_keep"], True),
    ("config-trainer-an-integer", lambda pkg: edit_yaml(pkg.config_path, lambda c: c.update(trainer=5)),
     ["config.yaml", "key 'trainer'", "expected an object"], True),
    ("config-gpu-count-a-string", lambda pkg: edit_yaml(pkg.config_path, lambda c: c.update(gpu={"count": "one"})),
     ["config.yaml", "gpu.count", "expected an integer"], True),
    ("config-tracker-a-list", lambda pkg: edit_yaml(pkg.config_path, lambda c: c.update(tracker=[1])),
     ["config.yaml", "key 'tracker'"], True),
    ("config-seed-a-string", lambda pkg: edit_yaml(pkg.config_path, lambda c: c.update(seed="zero")),
     ["config.yaml", "key 'seed'"], True),
    ("logs-a-file", replace_with_file("logs"),
     ["logs", "not a directory"], False),
]


@pytest.mark.parametrize("damage, needles, show_fails", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_damaged_file_is_one_line_and_the_package_is_unchanged(tmp_path, capsys, damage, needles, show_fails):
    pkg = crashed_package(tmp_path)
    damage(pkg)
    before = tree_digest(pkg.path, modes=True)

    code, out, err = cli(capsys, "continue", str(pkg.path))
    assert_one_line(code, out, err, *needles)
    assert tree_digest(pkg.path, modes=True) == before

    code, out, err = cli(capsys, "show", str(pkg.path))
    if show_fails:
        assert_one_line(code, out, err, *needles)
    else:
        assert code == 0 and err == "", err
    code, out2, err = cli(capsys, "show", str(pkg.path), "--json")
    assert "Traceback" not in out2 + err
    assert code == (2 if show_fails else 0)
    assert tree_digest(pkg.path, modes=True) == before


def test_show_renders_the_rest_of_a_package_with_a_damaged_index(tmp_path, capsys):
    pkg = crashed_package(tmp_path)
    index_edit(lambda ix: ix["checkpoints"]["1"].update(epoch=None))(pkg)
    code, out, err = cli(capsys, "show", str(pkg.path))
    assert_one_line(code, out, err, "index.json", "checkpoints.1.epoch")
    assert "CRASHED" in out and "train/loss" in out  # the readable parts are still shown
    code, out, err = cli(capsys, "show", str(pkg.path), "--json")
    info = json.loads(out)
    assert info["status"] == "CRASHED" and "checkpoints.1.epoch" in info["checkpoints"][0]["error"]
    assert info["damaged"] and info["metrics_last"]


@pytest.mark.parametrize("heartbeat", ["[1, 2]", '{"time": "now", "pid": 1}', "{", '"beat"', "",
                                       '{"format": 2, "time": 1.0}'])
def test_damaged_heartbeat_is_no_heartbeat_and_is_reported(tmp_path, capsys, heartbeat):
    pkg = crashed_package(tmp_path)
    pkg.heartbeat_path.write_text(heartbeat)
    before = tree_digest(pkg.path, modes=True)
    assert pkg.heartbeat() is None
    assert pkg.status() is Status.CRASHED  # the recorded process is dead either way
    code, out, err = cli(capsys, "show", str(pkg.path))
    assert code == 0 and err == "", err
    assert "heartbeat.json" in out and "ignored" in out and "CRASHED" in out
    info = json.loads(cli(capsys, "show", str(pkg.path), "--json")[1])
    assert info["heartbeat"] is None and "heartbeat.json" in info["warnings"][0]
    assert [r.status for r in Board(pkg.path.parent).rows()] == ["CRASHED"]
    assert tree_digest(pkg.path, modes=True) == before


def test_a_heartbeat_names_its_format(tmp_path):
    from expflow.package import shapes

    pkg = crashed_package(tmp_path)
    pkg.beat(step=3)
    assert json.loads(pkg.heartbeat_path.read_text())["format"] == shapes.HEARTBEAT_FORMAT
    assert pkg.heartbeat()["step"] == 3
    pkg.heartbeat_path.write_text('{"format": 2, "time": 1.0}')  # another expflow's: ignored, said why
    assert pkg.read_heartbeat()[0] is None and "format 2" in pkg.read_heartbeat()[1]


def test_damaged_heartbeat_of_a_live_remote_run_leaves_it_running(tmp_path):
    pkg = crashed_package(tmp_path)
    pkg.set_status(Status.RUNNING)
    pkg.update_manifest(lambda m: m["status_history"][-1].update(host="elsewhere"))
    pkg.heartbeat_path.write_text("[]")
    assert pkg.status() is Status.RUNNING  # unknowable here: never declared dead on a damaged file


@pytest.mark.parametrize("damage, needles", [
    (manifest_edit(lambda m: m["status_history"].insert(1, "RUNNING")), ["manifest.json", "status_history[1]"]),
    (index_edit(lambda ix: ix["checkpoints"]["1"].update(step="10", sha256=7)), ["index.json", "checkpoints.1"]),
    (replace_with_dir("metrics/records.log"), ["records.log"]),
], ids=["history-entry", "index-types", "records-dir"])
@pytest.mark.parametrize("command", ["show", "continue"])
def test_damaged_package_through_the_real_cli(tmp_path, command, damage, needles):
    pkg = crashed_package(tmp_path)
    damage(pkg)
    before = tree_digest(pkg.path, modes=True)
    assert_one_line_error(run_cli(command, str(pkg.path)), *needles)
    assert tree_digest(pkg.path, modes=True) == before


def test_the_board_skips_a_damaged_package_with_its_reason(tmp_path):
    pkg = crashed_package(tmp_path)
    edit_json(pkg.manifest_path, lambda m: m["status_history"].insert(1, "RUNNING"))
    board = Board(pkg.path.parent)
    assert board.rows() == []
    assert len(board.skipped) == 1 and "status_history[1]" in board.skipped[0]


def test_a_record_of_the_wrong_shape_is_a_problem_not_a_crash(tmp_path, capsys):
    from expflow.package.records import encode_record

    pkg = crashed_package(tmp_path)
    with open(pkg.records_path, "ab") as f:
        f.write(encode_record({"seq": 9, "kind": "metrics", "step": "12", "epoch": 1, "time": 0.0, "values": {}}))
        f.write(encode_record({"seq": 10, "kind": "metrics", "step": 12, "epoch": 1, "time": 0.0,
                               "values": {"a": "x"}}))
        f.write(encode_record({"seq": 11, "kind": "rollback", "to_step": None, "time": 0.0}))
    scan = pkg.scan_records()
    assert [r["step"] for r in scan.records] == [5, 10]
    assert [p.reason for p in scan.problems] == ["invalid metrics record: key 'step'",
                                                 "invalid metrics record: key 'values.a'",
                                                 "invalid rollback record: key 'to_step'"]
    code, out, err = cli(capsys, "show", str(pkg.path))
    assert code == 0 and "3 invalid line(s)" in out


# -- QUEUED and dead (fast: no training) ------------------------------------------------------
def queued_package(tmp_path: Path, *, claim: bool) -> SavePackage:
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True, exist_ok=True)
    (proj / "src" / "m.py").write_text("x = 1\n")
    runs = tmp_path / "runs"
    cfg = {"seed": 0, "run_id": "q1", "paths": {"runs": str(runs)}, "trainer": {"max_epochs": 1}}
    return SavePackage.create(runs / "q1", config=cfg, store=runs / ".store", code_root=proj, claim=claim)


def as_dead(pkg: SavePackage) -> int:
    pid = dead_pid()
    pkg.update_manifest(lambda m: m["status_history"][-1].update(pid=pid))
    return pid


def test_materialized_package_stays_pending_even_when_its_creator_is_gone(tmp_path, capsys):
    pkg = queued_package(tmp_path, claim=False)
    as_dead(pkg)  # `expflow materialize` exits right after creating it
    assert pkg.pending() and pkg.status() is Status.QUEUED
    [row] = Board(pkg.path.parent).rows()
    assert (row.status, row.note) == ("QUEUED", "not started")
    before = tree_digest(pkg.path, modes=True)
    code, out, err = cli(capsys, "continue", str(pkg.path))
    assert_one_line(code, out, err, "never started", "expflow run")
    assert tree_digest(pkg.path, modes=True) == before
    code, out, err = cli(capsys, "show", str(pkg.path))
    assert code == 0 and "QUEUED (not started)" in out


def test_claimed_queued_package_of_a_dead_process_is_crashed(tmp_path, capsys):
    pkg = queued_package(tmp_path, claim=True)  # `python -m expflow.train` creates and runs it
    assert not pkg.pending() and pkg.status() is Status.QUEUED  # this process: alive
    code, out, err = cli(capsys, "continue", str(pkg.path))
    assert_one_line(code, out, err, "QUEUED in a live process")
    pid = as_dead(pkg)  # ... killed before PREPARING
    assert pkg.status() is Status.CRASHED
    [row] = Board(pkg.path.parent).rows()
    assert row.status == "CRASHED" and row.recorded_status == "QUEUED" and f"process {pid}" in row.note
    code, out, err = cli(capsys, "show", str(pkg.path))
    assert code == 0 and "CRASHED" in out and "died while QUEUED" in out


def test_queued_waiting_for_gpus_of_a_dead_process_is_crashed(tmp_path):
    pkg = queued_package(tmp_path, claim=False)
    pkg.set_status(Status.QUEUED, note="waiting for 1 GPU(s)", claim=True)
    assert pkg.status() is Status.QUEUED
    as_dead(pkg)
    assert pkg.status() is Status.CRASHED


def test_queued_of_a_dead_process_on_another_host_uses_the_heartbeat(tmp_path):
    pkg = queued_package(tmp_path, claim=True)
    pkg.update_manifest(lambda m: m["status_history"][-1].update(host="elsewhere"))
    assert pkg.status() is Status.QUEUED  # unknowable here, no heartbeat: as recorded
    pkg.heartbeat_path.write_text(json.dumps({"time": time.time() - 3600, "host": "elsewhere", "pid": 1}))
    assert pkg.status(heartbeat_timeout=60) is Status.CRASHED


def test_claim_is_idempotent_and_withdrawn_when_the_run_never_starts(tmp_path):
    pkg = queued_package(tmp_path, claim=False)
    with pkg.claim():
        assert not pkg.pending() and pkg.status() is Status.QUEUED
        with pkg.claim():  # launch() inside run_package(): the same claim
            pass
    history = pkg.manifest()["status_history"]
    assert [h.get("claim", False) for h in history] == [False, True]
    assert history[-1]["host"] == HOST and history[-1]["pid"] == process_identity()["pid"]
    with pytest.raises(PackageError), pkg.claim():
        raise PackageError("gpu.count=1 but this machine has no GPU")
    last = pkg.manifest()["status_history"][-1]
    assert last["note"] == "not started: gpu.count=1 but this machine has no GPU" and "claim" not in last
    assert pkg.pending() and pkg.status() is Status.QUEUED
    [row] = Board(pkg.path.parent).rows()
    assert row.note.startswith("not started: gpu.count=1")


def test_claim_leaves_a_package_that_is_not_queued_alone(tmp_path):
    pkg = crashed_package(tmp_path)
    before = pkg.manifest()
    with pytest.raises(KeyboardInterrupt), pkg.claim():
        raise KeyboardInterrupt
    assert pkg.manifest() == before


def test_completed_package_without_checkpoints_refuses_with_and_without_force(tmp_path, capsys):
    pkg = queued_package(tmp_path, claim=True)
    pkg.update_manifest(lambda m: m.setdefault("attempts", []).append({"kind": "train", "time": m["created"]}))
    pkg.set_status(Status.RUNNING)
    pkg.set_status(Status.COMPLETED)
    before = tree_digest(pkg.path, modes=True)
    code, out, err = cli(capsys, "continue", str(pkg.path))
    assert_one_line(code, out, err, "already COMPLETED", "--force")
    code, out, err = cli(capsys, "continue", str(pkg.path), "--force")
    assert_one_line(code, out, err, "COMPLETED", "no checkpoint")
    assert tree_digest(pkg.path, modes=True) == before


# -- real runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One short CPU run, trained once; tests continue copies of it."""
    runs = tmp_path_factory.mktemp("trained") / "runs"
    proc = run_cli(*small_overrides(runs, "run_id=done"), module="expflow.train")
    assert proc.returncode == 0, proc.stderr
    return runs / "done"


def copy_of(trained: Path, tmp_path: Path) -> SavePackage:
    target = tmp_path / "runs" / trained.name
    shutil.copytree(trained, target)
    return SavePackage.open(target)


def points(pkg: SavePackage) -> list[tuple[int, dict]]:
    return [(r["step"], r["values"]) for r in effective_metrics(pkg.scan_records().records)]


@pytest.mark.slow
def test_completed_package_is_continued_only_with_force(trained, tmp_path):
    pkg = copy_of(trained, tmp_path)
    assert pkg.status() is Status.COMPLETED and pkg.checkpoints().list()
    before = tree_digest(pkg.path, modes=True)
    proc = run_cli("continue", str(pkg.path))
    assert_one_line_error(proc, str(pkg.path), "already COMPLETED", "--force")
    assert proc.returncode == 2 and proc.stdout == ""
    assert tree_digest(pkg.path, modes=True) == before

    ref = points(pkg)
    latest = pkg.checkpoints().latest()
    proc = run_cli("continue", str(pkg.path), "--force")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pkg.status() is Status.COMPLETED
    m = pkg.manifest()
    assert m["attempts"][-1]["kind"] == "continue" and m["attempts"][-1]["from_step"] == latest.step
    assert points(pkg) == ref


@pytest.mark.slow
def test_run_killed_between_creation_and_preparing_is_crashed_and_continued(tmp_path):
    runs = tmp_path / "runs"
    target = runs / "early"
    overrides = small_overrides(runs, "run_id=early")
    # What `python -m expflow.train` does up to the moment it is killed: the package is
    # created (claimed by this process), the run has not reached PREPARING.
    script = textwrap.dedent(f"""
        import os, signal
        from expflow.config import compose_config
        from expflow.launch import create_package
        cfg = compose_config({overrides!r}, config_dir={str(CONF)!r})
        create_package(cfg, overrides={overrides!r}, package_dir={str(target)!r}, claim=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pkg = SavePackage.open(target)
    assert pkg.manifest()["status"] == "QUEUED"
    assert pkg.status() is Status.CRASHED
    shown = run_cli("show", str(pkg.path))
    assert shown.returncode == 0 and "died while QUEUED" in shown.stdout
    pkg.heartbeat_path.write_text("[]")  # a damaged heartbeat does not stand in the way either
    proc = run_cli("continue", str(pkg.path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pkg.status() is Status.COMPLETED
    assert [a["kind"] for a in pkg.manifest()["attempts"]] == ["continue"]
    assert pkg.heartbeat() is not None and points(pkg)


@pytest.mark.slow
def test_run_killed_while_waiting_for_a_gpu_lease_is_crashed_and_continued(tmp_path):
    runs = tmp_path / "runs"
    env = {"EXPFLOW_SIMULATED_GPUS": "1x1000", "EXPFLOW_LEASE_DIR": str(tmp_path / "leases")}
    full_env = dict(os.environ, **env)
    holder = hold_one_gpu(full_env)
    waiter = None
    try:
        made = run_cli("materialize", "--runs", str(runs), "--config-dir", str(CONF), "--",
                       "trainer=debug", f"code.root={REPO}", "gpu.count=1", "trainer.threads=1", env=env)
        assert made.returncode == 0, made.stderr
        (pkg_dir,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
        pkg = SavePackage.open(pkg_dir)
        assert pkg.pending()
        waiter = subprocess.Popen([sys.executable, "-m", "expflow.cli", "run", str(pkg_dir)], env=full_env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not str(pkg.manifest()["status_history"][-1].get("note") or "").startswith("waiting"):
            assert time.monotonic() < deadline and waiter.poll() is None
            time.sleep(0.05)
        assert pkg.status() is Status.QUEUED
        waiter.send_signal(signal.SIGKILL)
        waiter.wait()
        assert pkg.status() is Status.CRASHED
        [row] = Board(runs).rows()
        assert row.status == "CRASHED" and "died (QUEUED)" in row.note
    finally:
        for p in (holder, waiter):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    proc = run_cli("continue", str(pkg_dir), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pkg.status() is Status.COMPLETED


def test_status_board_lists_a_package_with_a_mistyped_config_as_unreadable(tmp_path):
    crashed_package(tmp_path, "good")
    bad = crashed_package(tmp_path, "bad")
    edit_yaml(bad.config_path, lambda c: c.update(trainer=5))
    board = run_cli("status", "--runs", str(tmp_path / "runs"), "--json")
    assert board.returncode == 0 and "Traceback" not in board.stderr, board.stderr
    assert [r["run_id"] for r in json.loads(board.stdout)] == ["good"]
    table = run_cli("status", "--runs", str(tmp_path / "runs"), env={"COLUMNS": "200"})
    assert table.returncode == 0 and "1 unreadable" in table.stdout, table.stdout + table.stderr


def test_process_identity_from_proc_is_psutils_and_tells_dead_zombie_and_reused_pids():
    import socket

    import psutil

    from expflow.package.status import process_alive

    assert HOST == socket.gethostname()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        for pid in (os.getpid(), child.pid):
            ident = process_identity(pid)
            assert ident == {"host": HOST, "pid": pid, "pid_started": round(psutil.Process(pid).create_time(), 3)}
        ident = process_identity(child.pid)
        assert process_alive(ident) is True
        assert process_alive({**ident, "pid_started": ident["pid_started"] - 5}) is False  # the pid, reused
        assert process_alive({**ident, "pid_started": None}) is True
        assert process_alive({**ident, "host": "elsewhere"}) is None
        child.stdin.close()
        deadline = time.monotonic() + 30
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_alive(ident) is False  # exited, not yet reaped
    finally:
        child.wait()
    assert process_alive(ident) is False  # gone
