"""`expflow sync --target mlflow` end to end against a real `mlflow server` (SQLite store,
loopback, one worker, started once for this module): the server holds exactly the package's
metrics after a sync, a repeated sync, an interrupted-then-rerun sync, and a continue that
rolled steps back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from expflow.cli import main as cli_main
from expflow.package import Status
from expflow.sync import sync_packages
from expflow.sync.mlflow import MlflowTarget
from expflow.sync.state import SyncState
from expflow.tracking.mlflow import RUN_ID_TAG

from .conftest import CONF, REPO
from .sync_helpers import (
    KEYS,
    expected_points,
    finish,
    fuzz_package,
    log_steps,
    make_package,
    rollback,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """A real MLflow tracking server for the whole module."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "mlflow server did not start"
        time.sleep(0.3)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME"):
        monkeypatch.delenv(var, raising=False)


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def package_runs(uri: str, run_id: str, project: str = "expflow") -> list:
    c = client(uri)
    exp = c.get_experiment_by_name(project)
    return c.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'") if exp else []


def server_points(uri: str, run_id: str, project: str = "expflow") -> dict[tuple[str, int], list[float]]:
    """(key, step) -> every value the package's one active run holds (duplicates would show)."""
    [run] = package_runs(uri, run_id, project)
    held: dict[tuple[str, int], list[float]] = {}
    for key in run.data.metrics:
        for m in client(uri).get_metric_history(run.info.run_id, key):
            held.setdefault((key, m.step), []).append(m.value)
    return held


def assert_exact(uri: str, pkg, project: str = "expflow") -> None:
    held = server_points(uri, pkg.run_id, project)
    assert all(len(v) == 1 for v in held.values()), "a point is duplicated"
    assert {k: v[0] for k, v in held.items()} == expected_points(pkg)


class CountingBatches:
    """Counts the metric values a sync sends (MlflowClient.log_batch), optionally failing."""

    def __init__(self, monkeypatch, fail_after: int | None = None):
        from mlflow import MlflowClient

        self.values = self.calls = 0
        original = MlflowClient.log_batch

        def log_batch(client_self, run_id, metrics=(), params=(), tags=(), **kw):
            if metrics and fail_after is not None and self.calls >= fail_after:
                raise ConnectionError("network down (test)")
            if metrics:
                self.calls += 1
                self.values += len(metrics)
            return original(client_self, run_id, metrics=metrics, params=params, tags=tags, **kw)

        monkeypatch.setattr(MlflowClient, "log_batch", log_batch)


def test_sync_is_exact_then_a_repeat_uploads_nothing(tmp_path, mlflow_uri, monkeypatch):
    pkg = make_package(tmp_path / "runs", "m1")
    log_steps(pkg, range(1, 401))
    finish(pkg)
    sent = CountingBatches(monkeypatch)
    [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri, artifacts=["code.json"])
    assert r.outcome == "synced" and r.records == 400 and r.points == 400 * len(KEYS), r.line()
    assert sent.values == 400 * len(KEYS) and sent.calls == 2  # batched, 1,000 values a request
    assert_exact(mlflow_uri, pkg)
    [run] = package_runs(mlflow_uri, "m1")
    assert run.info.status == "FINISHED" and run.data.params["optim.lr"] == "0.001"
    artifacts = {a.path for a in client(mlflow_uri).list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "manifest.json", "code.json"}

    [again] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri, artifacts=["code.json"])
    assert again.outcome == "up to date" and sent.values == 400 * len(KEYS), again.line()
    assert_exact(mlflow_uri, pkg)


def test_a_live_run_synced_repeatedly_sends_only_new_records(tmp_path, mlflow_uri, monkeypatch):
    pkg = make_package(tmp_path / "runs", "live")
    sent = CountingBatches(monkeypatch)
    for chunk in (range(1, 11), range(11, 31), range(31, 36)):
        log_steps(pkg, chunk)
        before = sent.values
        [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
        assert r.outcome == "synced" and sent.values - before == len(chunk) * len(KEYS), r.line()
        assert_exact(mlflow_uri, pkg)
    [run] = package_runs(mlflow_uri, "live")
    assert run.info.status == "RUNNING"  # the package is not finished
    finish(pkg)
    sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
    [run] = package_runs(mlflow_uri, "live")
    assert run.info.status == "FINISHED"


def test_an_interrupted_sync_rerun_has_every_record_exactly_once(tmp_path, mlflow_uri, monkeypatch):
    pkg = make_package(tmp_path / "runs", "cut")
    log_steps(pkg, range(1, 301))
    monkeypatch.setattr(MlflowTarget, "BATCH", 60)
    CountingBatches(monkeypatch, fail_after=3)
    [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
    assert r.outcome == "deferred" and "next sync catches up" in r.message, r.line()
    held = server_points(mlflow_uri, "cut")
    assert 0 < len(held) < 300 * len(KEYS)  # a part went up
    monkeypatch.undo()
    monkeypatch.setattr(MlflowTarget, "BATCH", 60)
    [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
    assert r.outcome == "synced", r.line()
    assert_exact(mlflow_uri, pkg)


def test_lost_state_is_reconciled_with_the_server_without_duplicates(tmp_path, mlflow_uri, monkeypatch):
    pkg = make_package(tmp_path / "runs", "lost")
    log_steps(pkg, range(1, 21))
    sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
    for f in (pkg.tracker_dir / "sync").glob("*.json"):
        f.unlink()
    log_steps(pkg, range(21, 26))
    sent = CountingBatches(monkeypatch)
    [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
    assert r.outcome == "synced" and sent.values == 5 * len(KEYS), r.line()
    assert_exact(mlflow_uri, pkg)


def test_continue_with_rollback_corrects_the_replaced_steps(tmp_path, mlflow_uri):
    pkg = make_package(tmp_path / "runs", "rb")
    log_steps(pkg, range(1, 31))
    sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
    [old] = package_runs(mlflow_uri, "rb")
    rollback(pkg, 20)  # killed after step 30, continued from the checkpoint at step 20
    log_steps(pkg, range(21, 41), attempt=1)
    finish(pkg)
    [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
    assert r.outcome == "synced" and f"replaced run {old.info.run_id}" in r.message, r.line()
    assert_exact(mlflow_uri, pkg)  # one active run: steps 21-30 corrected, not duplicated
    assert client(mlflow_uri).get_run(old.info.run_id).info.lifecycle_stage == "deleted"
    [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
    assert r.outcome == "up to date", r.line()


def test_a_rollback_below_nothing_synced_needs_no_new_run(tmp_path, mlflow_uri):
    pkg = make_package(tmp_path / "runs", "rb2")
    log_steps(pkg, range(1, 11))
    sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
    log_steps(pkg, range(11, 16))
    rollback(pkg, 10)  # the records after the last sync are rolled back before they were uploaded
    log_steps(pkg, range(11, 21), attempt=1)
    [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
    assert r.outcome == "synced" and "replaced" not in r.message and r.records == 10, r.line()
    assert_exact(mlflow_uri, pkg)


def test_ids_new_and_explicit(tmp_path, mlflow_uri):
    pkg = make_package(tmp_path / "runs", "ids")
    log_steps(pkg, range(1, 6))
    [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri, experiment="no-such-run")
    assert r.outcome == "failed" and "no such MLflow run" in r.message
    [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri, experiment="new")
    first = SyncState.load(pkg.tracker_dir, "mlflow", f"{mlflow_uri}#expflow").experiment
    [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri, experiment="new")
    assert r.outcome == "up to date"  # new once: later syncs continue that run, never a duplicate
    c = client(mlflow_uri)
    target = c.create_run(c.get_experiment_by_name("expflow").experiment_id, run_name="by hand")
    [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri, experiment=target.info.run_id)
    assert r.outcome == "synced", r.line()
    history = c.get_metric_history(target.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    assert first != target.info.run_id


def test_unreachable_server_defers_with_exit_0(tmp_path, capsys):
    pkg = make_package(tmp_path / "runs", "far")
    log_steps(pkg, range(1, 3))
    code = cli_main(["sync", str(pkg.path), "--target", "mlflow", "--uri", "http://127.0.0.1:9"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0].startswith(f"{pkg.path}: deferred: cannot reach http://127.0.0.1:9"), lines
    code = cli_main(["sync", str(pkg.path), "--target", "mlflow"])  # no URI anywhere
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and "deferred: no MLflow tracking server" in lines[0], lines



def test_damaged_records_never_crash_a_sync_nor_upload_a_bad_record(tmp_path, mlflow_uri):
    from collections import Counter

    from expflow.package import effective_metrics

    for seed in range(10):
        pkg, written = fuzz_package(tmp_path / "runs", f"z{seed}", seed)
        [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
        assert r.outcome in ("synced", "up to date"), r.line()
        runs = package_runs(mlflow_uri, pkg.run_id)
        held = server_points(mlflow_uri, pkg.run_id) if runs else {}
        got = Counter((k, s, v) for (k, s), vs in held.items() for v in vs)
        assert set(got) <= written, "a point that was never written"
        want = Counter((k, r["step"], v) for r in effective_metrics(pkg.scan_records().records)
                       for k, v in r["values"].items())
        assert got == want  # exactly the valid records that count, each once


@pytest.mark.slow
def test_a_sync_killed_midway_then_rerun_has_every_record_once(tmp_path, mlflow_uri):
    pkg = make_package(tmp_path / "runs", "kill")
    log_steps(pkg, range(1, 6001))
    state_file = SyncState.file_for(pkg.tracker_dir, "mlflow", f"{mlflow_uri}#expflow")
    cmd = [sys.executable, "-m", "expflow.cli", "sync", str(pkg.path), "--target", "mlflow", "--uri", mlflow_uri]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (state_file.exists() and SyncState.load(pkg.tracker_dir, "mlflow", f"{mlflow_uri}#expflow").records):
        assert proc.poll() is None, "the sync ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = sum(len(v) for v in server_points(mlflow_uri, "kill").values())
    assert 0 < partial < 6000 * len(KEYS)
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300).returncode == 0
    assert_exact(mlflow_uri, pkg)


@pytest.mark.slow
def test_trained_continued_package_with_live_mlflow_tracker(tmp_path, mlflow_uri):
    """Real training with tracker=mlflow logging live, then continued from an earlier
    checkpoint (a rollback: the tracker logs those steps again); a sync then finds the
    duplicated points and writes the package's metrics into a corrected run."""
    from expflow.package import SavePackage

    from .conftest import run_cli, small_overrides

    runs = tmp_path / "runs"
    args = small_overrides(runs, "tracker=mlflow", f"tracker.tracking_uri={mlflow_uri}", "trainer.max_epochs=3",
                           "lifecycle.hold_best=null", "run_id=tr")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {"EXPFLOW_CONFIG_DIR": str(CONF)}
    trained = run_cli(*args, module="expflow.train", cwd=cwd, env=env)
    assert trained.returncode == 0, trained.stderr
    pkg = SavePackage.open(runs / "tr")
    first = min(c.step for c in pkg.checkpoints().list())
    done = run_cli("continue", str(pkg.path), "--checkpoint", str(first), cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    assert list(cwd.iterdir()) == []  # no stray ./mlflow.db or ./mlruns
    assert pkg.status() is Status.COMPLETED
    held = server_points(mlflow_uri, "tr")
    assert any(len(v) > 1 for v in held.values())  # the live tracker logged the replayed steps twice
    [r] = sync_packages([pkg.path], "mlflow", uri=mlflow_uri)
    assert r.outcome == "synced" and "replaced run" in r.message, r.line()
    assert_exact(mlflow_uri, pkg)
