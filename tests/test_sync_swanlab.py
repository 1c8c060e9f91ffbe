"""`expflow sync --target swanlab` through swanlab's own sync machinery, against a stand-in
SwanLab server on loopback that keeps every request: exactly the package's records arrive
for --id new, auto and <id>; nothing on a second sync; only new records on the next."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from expflow.cli import main as cli_main
from expflow.package import Status
from expflow.sync import sync_packages
from expflow.sync.state import SyncState

from .swanlab_standin import StandinSwanLab
from .sync_helpers import (
    KEYS,
    expected_points,
    fake_key,
    finish,
    fuzz_package,
    log_steps,
    make_package,
    rollback,
    value,
)


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    """No stored login, key, secrets dir or .env of the machine leaks into a test."""
    for var in ("SWANLAB_API_KEY", "SWANLAB_API_HOST", "SWANLAB_WEB_HOST", "SWANLAB_PROJECT", "SWANLAB_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab-root"))
    monkeypatch.setenv("EXPFLOW_SECRETS_DIR", str(tmp_path / "secrets"))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def server(monkeypatch):
    key = fake_key()
    monkeypatch.setenv("SWANLAB_API_KEY", key)
    with StandinSwanLab(key) as srv:
        yield srv


def package_with_offline_logs(root: Path, run_id: str, steps: range):
    """A package whose (offline) SwanLab tracker logged while it trained."""
    from expflow.tracking.swanlab import SwanLabTracker, recorded_experiment_id

    pkg = make_package(root, run_id, tracker={"_target_": "expflow.tracking.swanlab.SwanLabTracker",
                                              "project": "proj", "mode": "offline"})
    tracker = SwanLabTracker(project="proj", description="a test run", run_dir=pkg.tracker_dir, run_id=run_id)
    tracker.log_config({"seed": 0})
    for s in steps:
        tracker.log({k: value(k, s) for k in KEYS}, s)
    tracker.finish("COMPLETED")
    log_steps(pkg, steps)
    finish(pkg)
    return pkg, recorded_experiment_id(pkg.tracker_dir / "swanlab")


def received(server: StandinSwanLab) -> dict[str, list[tuple[str, int, float]]]:
    return {cuid: exp.points for cuid, exp in server.experiments.items() if exp.points}


def tree_digest(root: Path) -> dict[str, str]:
    """Every file of a package except the sync state: what a sync must never change."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "sync" not in p.relative_to(root).parts}


@pytest.mark.parametrize("mode", ["new", "auto", "id"])
def test_exactly_the_packages_records_arrive_then_nothing_then_only_new_ones(tmp_path, server, mode):
    pkg, logged_id = package_with_offline_logs(tmp_path / "runs", "r1", range(1, 41))
    before = tree_digest(pkg.path)
    experiment = {"new": "new", "auto": "auto", "id": "existing42"}[mode]
    if mode == "id":
        server.create_experiment("proj", "existing42")

    [result] = sync_packages([pkg.path], "swanlab", experiment=experiment, uri=server.url)
    assert result.outcome == "synced", result.line()
    [(cuid, points)] = received(server).items()
    assert cuid == {"new": cuid, "auto": logged_id, "id": "existing42"}[mode]
    if mode == "new":
        assert cuid != logged_id
    want = expected_points(pkg)
    assert len(points) == len(want) == 40 * len(KEYS)  # each exactly once
    assert server.experiments[cuid].scalars() == want
    assert set(server.experiments[cuid].profile) >= {"config", "metadata", "requirements"}
    assert server.experiments[cuid].states[-1] == "FINISHED"
    assert not server.unknown
    assert tree_digest(pkg.path) == before  # the package's records and logs are only read

    server.clear_requests()
    [again] = sync_packages([pkg.path], "swanlab", experiment=experiment, uri=server.url)
    assert again.outcome == "up to date", again.line()
    assert server.requests == []  # not even a login

    log_steps(pkg, range(41, 46))  # the run went on (continued): only those go up
    [more] = sync_packages([pkg.path], "swanlab", experiment=experiment, uri=server.url)
    assert more.outcome == "synced" and more.records == 5, more.line()
    assert received(server) == {cuid: points} and len(points) == 45 * len(KEYS)
    assert server.experiments[cuid].scalars() == expected_points(pkg)


def test_an_id_that_does_not_exist_fails_and_the_next_package_still_syncs(tmp_path, server):
    a = make_package(tmp_path / "runs", "a")
    log_steps(a, range(1, 5))
    results = sync_packages([a.path, tmp_path / "missing", a.path], "swanlab", experiment="nope123", uri=server.url)
    assert [r.outcome for r in results] == ["failed", "failed", "failed"]
    assert "no such experiment" in results[0].message and "no such directory" in results[1].message
    b = make_package(tmp_path / "runs", "b")
    log_steps(b, range(1, 5))
    results = sync_packages([tmp_path / "missing", b.path], "swanlab", experiment="auto", uri=server.url)
    assert [r.outcome for r in results] == ["failed", "synced"]
    assert server.experiments["expflow-b"].scalars() == expected_points(b)  # no offline logs: a derived id


def test_rollback_after_a_sync_replays_the_replaced_steps(tmp_path, server):
    pkg = make_package(tmp_path / "runs", "rb")
    log_steps(pkg, range(1, 21))
    sync_packages([pkg.path], "swanlab", uri=server.url)
    rollback(pkg, 10)  # `expflow continue` from the checkpoint at step 10
    log_steps(pkg, range(11, 21), attempt=1)
    finish(pkg)
    [result] = sync_packages([pkg.path], "swanlab", uri=server.url)
    assert result.outcome == "synced" and "rolled back" in result.message, result.line()
    exp = server.experiments["expflow-rb"]
    assert exp.scalars() == expected_points(pkg)  # the steps after 10 hold the continued run's values
    resent = [(k, s) for k, s, _ in exp.points[20 * len(KEYS):]]
    assert sorted(resent) == sorted((k, s) for k in KEYS for s in range(11, 21))  # steps <= 10 not resent


def test_first_sync_into_an_experiment_holding_replaced_values_corrects_them(tmp_path, server):
    """A live cloud tracker sent steps 11-20 before a kill; the continue's values for them
    never made it (SwanLab refuses older steps): the first sync overwrites them."""
    pkg = make_package(tmp_path / "runs", "live")
    log_steps(pkg, range(1, 21))
    rollback(pkg, 10)
    log_steps(pkg, range(11, 21), attempt=1)
    exp = server.create_experiment("expflow", "livetracked")
    exp.points.extend((k, s, value(k, s)) for s in range(1, 21) for k in KEYS)  # the killed run's values
    [r] = sync_packages([pkg.path], "swanlab", experiment="livetracked", uri=server.url)
    assert r.outcome == "synced", r.line()
    assert exp.scalars() == expected_points(pkg)


def test_corrupt_records_are_reported_skipped_or_fail_strict(tmp_path, server):
    pkg = make_package(tmp_path / "runs", "bad")
    log_steps(pkg, range(1, 11))
    data = bytearray(pkg.records_path.read_bytes())
    third = data.split(b"\n")[2]
    start = data.index(third)
    data[start + 20] ^= 0x01  # flip one bit in the third record
    pkg.records_path.write_bytes(bytes(data) + b"0123abcd {\"torn")  # and a torn tail
    before = tree_digest(pkg.path)

    [strict] = sync_packages([pkg.path], "swanlab", strict=True, uri=server.url)
    assert strict.outcome == "failed" and f"line 3 (byte {start})" in strict.message, strict.line()
    assert not received(server)

    [lenient] = sync_packages([pkg.path], "swanlab", uri=server.url)
    assert lenient.outcome == "synced" and lenient.skipped == 2, lenient.line()
    assert f"line 3 (byte {start}): checksum mismatch" in lenient.message and "torn" in lenient.message
    assert server.experiments["expflow-bad"].scalars() == expected_points(pkg)
    assert {s for _, s in expected_points(pkg)} == set(range(1, 11)) - {3}
    assert tree_digest(pkg.path) == before


def test_no_credentials_or_no_network_defers_with_one_line_and_exit_0(tmp_path, capsys, monkeypatch):
    pkg = make_package(tmp_path / "runs", "d")
    log_steps(pkg, range(1, 4))
    assert cli_main(["sync", str(pkg.path), "--target", "swanlab", "--uri", "http://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{pkg.path}: deferred: no SwanLab API key") and len(out) == 2, out

    monkeypatch.setenv("SWANLAB_API_KEY", fake_key())
    assert cli_main(["sync", str(pkg.path), "--target", "swanlab", "--uri", "http://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{pkg.path}: deferred: cannot reach http://127.0.0.1:9"), out
    assert "next sync catches up" in out[0]

    with StandinSwanLab(fake_key()) as srv:  # the network is back: the next sync catches up
        assert cli_main(["sync", str(pkg.path), "--target", "swanlab", "--uri", srv.url]) == 0
        assert srv.experiments["expflow-d"].scalars() == expected_points(pkg)


def test_a_wrong_key_fails_and_the_key_never_lands_in_the_package(tmp_path, server, monkeypatch):
    pkg = make_package(tmp_path / "runs", "k")
    log_steps(pkg, range(1, 4))
    monkeypatch.setenv("SWANLAB_API_KEY", fake_key("wrong"))
    [r] = sync_packages([pkg.path], "swanlab", uri=server.url)
    assert r.outcome == "failed" and "rejected the API key" in r.message
    monkeypatch.delenv("SWANLAB_API_KEY")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "swanlab_api_key").write_text(server.api_key + "\n")  # the secrets file works too
    [r] = sync_packages([pkg.path], "swanlab", uri=server.url)
    assert r.outcome == "synced", r.line()
    from .sync_helpers import files_containing

    assert files_containing(pkg.path, server.api_key) == []


def test_state_is_per_destination_and_atomic_json(tmp_path, server):
    pkg = make_package(tmp_path / "runs", "st")
    log_steps(pkg, range(1, 4))
    sync_packages([pkg.path], "swanlab", uri=server.url, project="p1")
    sync_packages([pkg.path], "swanlab", uri=server.url, project="p2")
    states = sorted((pkg.tracker_dir / "sync").glob("*.json"))
    assert len(states) == 2
    loaded = [SyncState.load(pkg.tracker_dir, "swanlab", f"{server.url}/~/{p}") for p in ("p1", "p2")]
    assert [s.records for s in loaded] == [3, 3] and all(s.experiment == "expflow-st" for s in loaded)
    assert not [p for p in (pkg.tracker_dir / "sync").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_training_offline_then_sync_auto_and_cloud_mode_live(tmp_path, server):
    """Real runs: an offline SwanLab tracker, then `expflow sync --id auto`; and a cloud-mode
    tracker logging live to the (stand-in) server. The key is in no file of either package."""
    from expflow.package import SavePackage

    from .conftest import run_cli, small_overrides

    runs = tmp_path / "runs"
    env = {"SWANLAB_ROOT": os.environ["SWANLAB_ROOT"], "EXPFLOW_SECRETS_DIR": os.environ["EXPFLOW_SECRETS_DIR"]}
    proc = run_cli(*small_overrides(runs, "tracker=swanlab", "tracker.project=proj", "run_id=off"),
                   module="expflow.train", env=env)
    assert proc.returncode == 0, proc.stderr
    pkg = SavePackage.open(runs / "off")
    assert pkg.status() is Status.COMPLETED
    proc = run_cli("sync", str(pkg.path), "--target", "swanlab", "--uri", server.url, env=env)
    assert proc.returncode == 0 and ": synced: " in proc.stdout, proc.stdout + proc.stderr
    from expflow.tracking.swanlab import recorded_experiment_id

    exp = server.experiments[recorded_experiment_id(pkg.tracker_dir / "swanlab")]
    assert exp.scalars() == expected_points(pkg)

    proc = run_cli(*small_overrides(runs, "tracker=swanlab", "tracker.project=live", "tracker.mode=cloud",
                                    f"tracker.api_host={server.url}", f"tracker.web_host={server.url}", "run_id=live"),
                   module="expflow.train", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr  # the key is in the environment: no cloud-mode warning
    live = SavePackage.open(runs / "live")
    [cloud] = [e for e in server.experiments.values() if e.project == "live"]
    assert cloud.scalars() == expected_points(live)
    from .sync_helpers import files_containing

    assert files_containing(pkg.path, server.api_key) == [] and files_containing(live.path, server.api_key) == []


def test_damaged_records_never_crash_a_sync_nor_upload_a_bad_record(tmp_path, server):
    for seed in range(12):
        pkg, written = fuzz_package(tmp_path / "runs", f"z{seed}", seed)
        [r] = sync_packages([pkg.path], "swanlab", uri=server.url)
        assert r.outcome in ("synced", "up to date"), r.line()
        points = server.experiments[f"expflow-z{seed}"].points if f"expflow-z{seed}" in server.experiments else []
        assert set(points) <= written, "a point that was never written"
        assert len({(k, s) for k, s, _ in points}) == len(points)  # each (key, step) once
        assert {(k, s) for k, s, _ in points} == set(expected_points(pkg))


@pytest.mark.slow
def test_workflow_sync_rule_defers_without_credentials_then_catches_up(tmp_path):
    """sync.target in conf/workflow.yaml adds a terminal sync job per run. Without a key it
    is deferred: the workflow succeeds, and the next workflow run syncs (train is not rerun)."""
    from .test_workflow import make_project, packages, snakemake

    key = fake_key()
    with StandinSwanLab(key) as srv:
        workflow = {
            "sweep": ["seed=0"],
            "common": ["trainer=debug", "trainer.max_epochs=1", "trainer.threads=1", "gpu=cpu"],
            "train": {"threads": 1, "retries": 0},
            "sync": {"target": "swanlab", "uri": srv.url, "project": "wf"},
        }
        proj = make_project(tmp_path, workflow)
        env = {"SWANLAB_ROOT": os.environ["SWANLAB_ROOT"], "EXPFLOW_SECRETS_DIR": os.environ["EXPFLOW_SECRETS_DIR"]}
        proc = snakemake(proj, "--cores", "2", env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        [pkg] = packages(proj)
        marker = pkg.tracker_dir / "sync" / "swanlab.done"
        assert marker.read_text().startswith("deferred\n") and "deferred: no SwanLab API key" in marker.read_text()
        assert not srv.experiments

        proc = snakemake(proj, "--cores", "2", env={**env, "SWANLAB_API_KEY": key})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "rule train" not in proc.stdout + proc.stderr  # only the sync ran again
        assert marker.read_text().startswith("done\n") and ": synced: " in marker.read_text()
        [exp] = srv.experiments.values()
        assert exp.project == "wf" and exp.scalars() == expected_points(pkg)
        proc = snakemake(proj, "--cores", "2", env={**env, "SWANLAB_API_KEY": key})
        assert "Nothing to be done" in proc.stdout + proc.stderr
