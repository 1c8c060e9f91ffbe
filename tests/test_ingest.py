"""Tracker ingest (expflow.runner.ingest): files written by the real trackers (SwanLab and W&B
offline in a subprocess, torch's SummaryWriter, csv) end up in the package's records, exactly,
once, incrementally, across a supervisor restart."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from expflow.errors import ConfigError, PackageError
from expflow.package import effective_metrics
from expflow.package.records import RecordWriter
from expflow.runner import ingest as ingest_mod
from expflow.runner.ingest import (
    DEFAULT_SOURCES,
    IngestSource,
    TrackerIngest,
    parse_sources,
    tracker_env,
)

from .sync_helpers import make_package


@pytest.fixture
def pkg(tmp_path: Path):
    return make_package(tmp_path / "runs", "cmd1")


def records(pkg) -> list[tuple[int, dict[str, float]]]:
    return [(r["step"], r["values"]) for r in effective_metrics(pkg.scan_records(strict=True).records)]


def points(pkg) -> list[tuple[str, int, float]]:
    return [(name, step, value) for step, values in records(pkg) for name, value in values.items()]


def run_program(code: str, pkg, tmp_path: Path) -> None:
    """Run ``code`` as a program with the supervisor's tracker environment."""
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, **tracker_env(pkg), WANDB_SILENT="true", WANDB_CONSOLE="off", WANDB_DISABLE_GIT="true",
               WANDB_CACHE_DIR=str(tmp_path / ".wandb-cache"), WANDB_CONFIG_DIR=str(tmp_path / ".wandb-config"))
    for k in ("SWANLAB_API_KEY", "WANDB_API_KEY"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def tb_write(logdir: Path, series: list[tuple[int, dict[str, float]]], writer=None):
    from torch.utils.tensorboard import SummaryWriter

    w = writer or SummaryWriter(log_dir=str(logdir))
    for step, values in series:
        for tag, v in values.items():
            w.add_scalar(tag, v, step)
    w.flush()
    return w


def f32(v: float) -> float:
    return float(np.float32(v))


# -- real trackers, default sources --------------------------------------------------------
def test_swanlab_offline_via_tracker_env(pkg, tmp_path):
    run_program("""
        import swanlab
        swanlab.init(project="ingest", experiment_name="e")
        for s in range(1, 8):
            swanlab.log({"train/loss": 1 / s, "train/acc": s / 3}, step=s)
            if s % 3 == 0:
                swanlab.log({"val/score": s * 0.1}, step=s)
        swanlab.finish()
    """, pkg, tmp_path)
    files = sorted(pkg.tracker_dir.glob("swanlog/run-*/*.swanlab"))
    assert len(files) == 1, list(pkg.tracker_dir.rglob("*"))
    with RecordWriter(pkg.records_path) as w:
        ing = TrackerIngest(pkg, w)
        n = ing.poll()
        assert ing.final() == []
    assert n == 7 * 2 + 2
    got = records(pkg)
    # one swanlab.log call = one record; a later call at the same step is consecutive: merged
    expected = []
    for s in range(1, 8):
        values = {"train/loss": 1 / s, "train/acc": s / 3}
        if s % 3 == 0:
            values["val/score"] = s * 0.1
        expected.append((s, values))
    assert got == expected  # exact values, as logged


def test_wandb_offline_via_tracker_env(pkg, tmp_path):
    pytest.importorskip("wandb")
    run_program("""
        import wandb
        run = wandb.init(project="ingest", settings=wandb.Settings(x_disable_stats=True))
        for s in range(6):
            run.log({"loss": 1 / (s + 1), "lr": 3e-4 * 0.9 ** s}, step=s)
        run.finish()
    """, pkg, tmp_path)
    assert list(pkg.tracker_dir.glob("wandb/*run-*/*.wandb"))
    with RecordWriter(pkg.records_path) as w:
        ing = TrackerIngest(pkg, w)
        assert ing.poll() == 12
        assert ing.final() == []
    assert records(pkg) == [(s, {"loss": 1 / (s + 1), "lr": 3e-4 * 0.9 ** s}) for s in range(6)]


def test_tensorboard_float32_exact_bare_tags_and_incremental(pkg):
    logdir = pkg.tracker_dir / "tensorboard"
    vals = lambda s: {"train/loss": 0.1 + s / 7, "train/lr": 1e-3 / (s + 1)}  # noqa: E731
    with RecordWriter(pkg.records_path) as w:
        ing = TrackerIngest(pkg, w)
        assert ing.poll() == 0  # nothing there yet
        tb = tb_write(logdir, [(s, vals(s)) for s in range(5)])
        assert ing.poll() == 10
        assert ing.poll() == 0
        tb_write(logdir, [(s, vals(s)) for s in range(5, 9)], tb)
        assert ing.poll() == 8
        tb.close()
        assert ing.final() == []
    got = records(pkg)
    assert [s for s, _ in got] == list(range(9))  # one record per step, no duplicate
    for s, values in got:
        assert values == {k: f32(v) for k, v in vals(s).items()}  # float32 as stored, not rounded
    assert any(f32(v) != v for s in range(9) for v in vals(s).values())  # the check means something


def test_default_sources_find_summarywriter_default_dir_and_add_scalars(pkg, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    pkg.code_dir.mkdir(exist_ok=True)
    monkeypatch.chdir(pkg.code_dir)  # a command run's cwd: SummaryWriter() writes runs/<date>_<host>/
    w = SummaryWriter()
    w.add_scalar("loss", 0.5, 1)
    w.add_scalars("cmp", {"train": 1.5, "val": 2.5}, 1)
    w.close()
    with RecordWriter(pkg.records_path) as rw:
        ing = TrackerIngest(pkg, rw)
        assert ing.poll() == 3
    assert sorted(points(pkg)) == [("cmp_train/cmp", 1, 1.5), ("cmp_val/cmp", 1, 2.5), ("loss", 1, 0.5)]


# -- restart, torn files, cheap polls ------------------------------------------------------
def test_restart_appends_nothing_old(pkg):
    logdir = pkg.tracker_dir / "tb"
    with RecordWriter(pkg.records_path) as w:
        TrackerIngest(pkg, w).poll()  # nothing yet
        tb = tb_write(logdir, [(s, {"x": float(s)}) for s in range(4)])
        assert TrackerIngest(pkg, w).poll() == 4
    state = json.loads((pkg.records_path.parent / "ingest.json").read_text())
    assert list(state["files"]) == [next(logdir.glob("*tfevents*")).relative_to(pkg.path).as_posix()]
    # the supervisor restarts (expflow continue): a new writer, a new ingest
    with RecordWriter(pkg.records_path) as w:
        ing = TrackerIngest(pkg, w)
        assert ing.poll() == 0
        tb_write(logdir, [(s, {"x": float(s)}) for s in range(4, 6)], tb)
        tb.close()
        assert ing.poll() == 2
        assert ing.final() == []
    assert records(pkg) == [(s, {"x": float(s)}) for s in range(6)]


def test_killed_mid_batch_recovers_exactly(pkg, monkeypatch):
    """A supervisor killed after writing the state (with the batch pending) and part of the
    batch: the next start ingests the rest, once."""
    logdir = pkg.tracker_dir / "tb"
    tb_write(logdir, [(s, {"a": float(s), "b": -float(s)}) for s in range(10)]).close()

    class Killed(BaseException):
        pass

    w = RecordWriter(pkg.records_path)
    real_log = w.log
    logged = []

    def dying_log(values, step, epoch=None):
        if len(logged) == 4:
            raise Killed
        logged.append(step)
        return real_log(values, step=step, epoch=epoch)

    monkeypatch.setattr(w, "log", dying_log)
    with pytest.raises(Killed):
        TrackerIngest(pkg, w).poll()
    w.close()  # what the writer had queued reached the file (the prefix property)
    assert [s for s, _ in records(pkg)] == [0, 1, 2, 3]
    state = json.loads((pkg.records_path.parent / "ingest.json").read_text())
    assert len(state["pending"]) == 10
    with RecordWriter(pkg.records_path) as w2:
        w2.log({"other": 1.0}, step=0)  # the program's own channel logs meanwhile: not one of ours
        ing = TrackerIngest(pkg, w2)
        assert ing.poll() == 12
        assert ing.final() == []
    got = [(s, v) for s, v in records(pkg) if "other" not in v]
    assert got == [(s, {"a": float(s), "b": -float(s)}) for s in range(10)]


def test_torn_file_skipped_by_poll_reported_by_final(pkg, tmp_path):
    whole = tb_write(tmp_path / "whole", [(s, {"y": s * 0.5}) for s in range(20)])
    whole.close()
    src = next((tmp_path / "whole").glob("*tfevents*"))
    torn_dir = pkg.tracker_dir / "torn"
    torn_dir.mkdir(parents=True)
    torn = torn_dir / src.name
    data = src.read_bytes()
    torn.write_bytes(data[:-5])  # the last record cut short, as a writer caught mid-write leaves it
    good = tb_write(pkg.tracker_dir / "good", [(1, {"z": 2.0})])
    good.close()
    with RecordWriter(pkg.records_path) as w:
        ing = TrackerIngest(pkg, w)
        assert ing.poll() == 1  # the good file; the torn one silently skipped
        assert ing.poll() == 0
        warnings = ing.final()
    key = torn.relative_to(pkg.path).as_posix()
    assert len(warnings) == 1 and warnings[0].startswith(f"{key}: tensorboard file not ingested"), warnings
    assert "truncated" in warnings[0] or "corrupt" in warnings[0]
    # completed later (the writer caught up): read at the next poll of a new ingest
    torn.write_bytes(data)
    with RecordWriter(pkg.records_path) as w:
        assert TrackerIngest(pkg, w).poll() == 20
    assert sorted(points(pkg)) == sorted([("z", 1, 2.0)] + [("y", s, s * 0.5) for s in range(20)])


def test_torn_swanlab_file_skipped(pkg, tmp_path):
    run_program("""
        import swanlab
        swanlab.init(project="ingest", experiment_name="e")
        for s in range(300):
            swanlab.log({"m": s * 0.25}, step=s)
        swanlab.finish()
    """, pkg, tmp_path)
    f = next(pkg.tracker_dir.glob("swanlog/run-*/*.swanlab"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # torn in the middle of the scalars
    with RecordWriter(pkg.records_path) as w:
        ing = TrackerIngest(pkg, w)
        first = ing.poll()  # while "running": the records before the torn one
        assert 0 < first < 300
        warnings = ing.final()  # at the end a torn file is a warning naming it
        assert len(warnings) == 1 and f.relative_to(pkg.path).as_posix() in warnings[0], warnings
        f.write_bytes(data)
        assert ing.poll() == 300 - first
    assert records(pkg) == [(s, {"m": s * 0.25}) for s in range(300)]


def test_swanlab_points_arrive_while_the_program_runs(pkg, tmp_path):
    """swanlab buffers its writes: what it has flushed is ingested before the program ends."""
    go = tmp_path / "go"
    script = tmp_path / "live.py"
    script.write_text(textwrap.dedent(f"""
        import pathlib, time
        import swanlab
        swanlab.init(project="ingest", experiment_name="live")
        for s in range(3000):
            swanlab.log({{"m": s * 0.5}}, step=s)
        pathlib.Path({str(tmp_path / "logged")!r}).write_text("1")
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.05)
        swanlab.finish()
    """))
    env = dict(os.environ, **tracker_env(pkg))
    env.pop("SWANLAB_API_KEY", None)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "logged").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        with RecordWriter(pkg.records_path) as w:
            ing = TrackerIngest(pkg, w)
            live = ing.poll()
            assert live > 0  # the program is still running (it waits for `go`)
            go.write_text("1")
            assert proc.wait(timeout=120) == 0
            ing.final()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert records(pkg) == [(s, {"m": s * 0.5}) for s in range(3000)]


def test_unchanged_tree_is_not_read_again(pkg, monkeypatch):
    reads = []
    real = ingest_mod.read_event_files
    monkeypatch.setattr(ingest_mod, "read_event_files", lambda files, root: reads.append(files) or real(files, root))
    tb_write(pkg.tracker_dir / "a", [(0, {"p": 1.0})]).close()
    tb = tb_write(pkg.tracker_dir / "b", [(0, {"q": 1.0})])
    with RecordWriter(pkg.records_path) as w:
        ing = TrackerIngest(pkg, w)
        assert ing.poll() == 2
        assert len(reads) == 2
        for _ in range(3):
            assert ing.poll() == 0
        assert len(reads) == 2  # nothing changed: no file read
        tb_write(pkg.tracker_dir / "b", [(1, {"q": 2.0})], tb)
        assert ing.poll() == 1
        assert len(reads) == 3  # only the changed file
        tb.close()
        ing.final()
    # a restarted ingest knows the files' stat from its state: no read either
    reads.clear()
    with RecordWriter(pkg.records_path) as w:
        assert TrackerIngest(pkg, w).poll() == 0
    assert reads == []


# -- csv -------------------------------------------------------------------------------------
def test_csv_partial_line_and_rewrite(pkg):
    path = pkg.code_dir / "logs" / "metrics.csv"
    path.parent.mkdir(parents=True)
    sources = parse_sources([{"kind": "csv", "path": "code/logs/*.csv", "step": "iter"}])
    with open(path, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["iter", "loss", "acc"])
        wr.writerow([0, 0.123456789012345, 0.5])
        fh.write("1,0.25")  # a row still being written: '0.25' could become '0.2512'
        fh.flush()
        with RecordWriter(pkg.records_path) as w:
            ing = TrackerIngest(pkg, w, sources)
            assert ing.poll() == 2
            fh.write("12,0.75\n2,,0.875\n")
            fh.flush()
            assert ing.poll() == 3
            assert ing.final() == []
    assert records(pkg) == [(0, {"loss": 0.123456789012345, "acc": 0.5}), (1, {"loss": 0.2512, "acc": 0.75}),
                            (2, {"acc": 0.875})]
    # the program starts over and rewrites its csv: a new series from its first row
    path.write_text("iter,loss\n0,9.0\n")
    with RecordWriter(pkg.records_path) as w:
        w.rollback(-1)
        ing = TrackerIngest(pkg, w, sources)
        assert ing.poll() == 1
    assert records(pkg) == [(0, {"loss": 9.0})]


# -- state damage ----------------------------------------------------------------------------
def test_damaged_state(pkg):
    state = pkg.records_path.parent / "ingest.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text('{"format": "expflow.ingest/1", "files": ')
    with RecordWriter(pkg.records_path) as w:
        ing = TrackerIngest(pkg, w)  # no metric records yet: start over, and say so
        tb_write(pkg.tracker_dir / "tb", [(0, {"x": 1.0})]).close()
        assert ing.poll() == 1
        notes = ing.final()
    assert len(notes) == 1 and str(state) in notes[0] and "damaged" in notes[0]
    assert json.loads(state.read_text())["format"] == "expflow.ingest/1"
    state.write_text("[]")
    with RecordWriter(pkg.records_path) as w, pytest.raises(PackageError) as e:
        TrackerIngest(pkg, w)
    assert str(state) in str(e.value) and "Delete it" in str(e.value)


# -- config ------------------------------------------------------------------------------------
def test_parse_sources():
    assert parse_sources(None) == DEFAULT_SOURCES
    assert parse_sources([]) == ()
    assert parse_sources(["swanlab", "tensorboard"]) == (
        IngestSource("swanlab", "tracker/swanlog"), IngestSource("tensorboard", "tracker/**"),
        IngestSource("tensorboard", "code/runs/**"))
    assert parse_sources([{"kind": "csv", "path": "/abs/m.csv", "step": "it"}, {"kind": "wandb"}]) == (
        IngestSource("csv", "/abs/m.csv", "it"), IngestSource("wandb", "tracker/wandb"))
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"ingest": ["wandb", {"kind": "tensorboard", "path": "code/tb"}]})
    assert parse_sources(cfg.ingest) == (IngestSource("wandb", "tracker/wandb"), IngestSource("tensorboard", "code/tb"))
    for bad, needle in [
        (["mlflow"], "runner.ingest[0]: unknown kind 'mlflow'"),
        (["wandb", "csv"], "runner.ingest[1]: unknown kind 'csv' (csv has no default path"),
        ([{"kind": "csv"}], "runner.ingest[0].path"),
        ([{"kind": "tensorboard", "path": "x", "step": "s"}], "runner.ingest[0].step: only a csv"),
        ([{"kind": "csv", "path": "x", "colour": 1}], "runner.ingest[0]: unknown key 'colour'"),
        ([{"kind": "nope", "path": "x"}], "runner.ingest[0].kind: 'nope' is not one of swanlab, wandb"),
        ([3], "runner.ingest[0]: expected a kind"),
        ("swanlab", "runner.ingest: expected a list"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_sources(bad)
        assert needle in str(e.value), str(e.value)


def test_tracker_env(pkg):
    env = tracker_env(pkg)
    t = pkg.tracker_dir.resolve()
    assert env["SWANLAB_MODE"] == "offline" and env["SWANLAB_LOG_DIR"] == str(t / "swanlog")
    assert env["WANDB_MODE"] == "offline" and env["WANDB_DIR"] == str(t)
    assert all(isinstance(v, str) for v in env.values())


def test_outside_absolute_source_and_duplicate_matches(pkg, tmp_path):
    outside = tmp_path / "elsewhere"
    tb_write(outside, [(3, {"k": 0.3})]).close()
    sources = (IngestSource("tensorboard", str(outside)), IngestSource("tensorboard", str(outside) + "/**"))
    with RecordWriter(pkg.records_path) as w:
        ing = TrackerIngest(pkg, w, sources)
        assert ing.poll() == 1  # one file, matched twice: ingested once
    state = json.loads((pkg.records_path.parent / "ingest.json").read_text())
    assert [Path(k).is_absolute() for k in state["files"]] == [True]
    assert points(pkg) == [("k", 3, f32(0.3))]
    shutil.rmtree(outside)


def test_package_path_with_glob_characters(tmp_path):
    pkg = make_package(tmp_path / "runs[a]*", "cmd[1]")
    tb_write(pkg.tracker_dir / "tb", [(2, {"t": 0.5})]).close()
    with RecordWriter(pkg.records_path) as w:
        assert TrackerIngest(pkg, w).poll() == 1
    assert points(pkg) == [("t", 2, 0.5)]


def test_tracker_machine_monitor_is_left_out(pkg, monkeypatch):
    """SwanLab's hardware monitor (__swanlab__.cpu.pct, ...) is the machine's, not the program's:
    it would differ between a run and its rerun."""
    from expflow.align.sources import RawRun, points_frame

    f = pkg.tracker_dir / "swanlog" / "run-x" / "run-x.swanlab"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    run = RawRun(points_frame(["loss", "__swanlab__.cpu.pct", "loss"], [0, 0, 1], [0.5, 99.0, 0.25]))
    monkeypatch.setattr(ingest_mod, "read_record_file", lambda path, partial=False: run)
    with RecordWriter(pkg.records_path) as w:
        ing = TrackerIngest(pkg, w)
        assert ing.poll() == 2
        assert ing.final() == []
    assert records(pkg) == [(0, {"loss": 0.5}), (1, {"loss": 0.25})]
