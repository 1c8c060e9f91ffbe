"""Trackers: validation messages (one clear line each), rank 0 only, lazy imports, the
SwanLab offline tracker's files, and a failing tracker never stopping training."""

from __future__ import annotations

import subprocess
import sys

import pytest

from expflow.config import validate_config
from expflow.errors import ConfigError
from expflow.tracking import GuardedTracker, MultiTracker, NullTracker, build_tracker

from .conftest import REPO, assert_one_line_error, run_cli, small_overrides
from .sync_helpers import fake_key


@pytest.fixture(autouse=True)
def no_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab-root"))
    monkeypatch.setenv("EXPFLOW_SECRETS_DIR", str(tmp_path / "secrets"))
    import expflow.tracking.validate as v

    v._printed.clear()


@pytest.mark.parametrize(("overrides", "message"), [
    (["tracker=swanlab", "tracker.project=null"],
     "tracker.project: SwanLab is enabled (mode offline) but no project is set; set tracker.project=<name>"),
    (["tracker=swanlab", "tracker.project="],
     "tracker.project: cannot be an empty string"),
    (["tracker=swanlab", "tracker.mode=online"],
     "tracker.mode: 'online' is not a valid SwanLab mode; valid: cloud, local, offline, disabled"),
    (["tracker=swanlab", "tracker.project=my project"],
     "tracker.project: 'my project' is not a valid SwanLab project name"),
    (["tracker=mlflow", "tracker.mode=offline"],
     "tracker.mode: 'offline' is not a valid MLflow mode; valid: online, disabled"),
    (["tracker=mlflow", "tracker.project=null"],
     "tracker.project: MLflow is enabled (mode online) but no project is set"),
    (["tracker=multi", "tracker.trackers.swanlab.project=null"],
     "tracker.trackers.swanlab.project: SwanLab is enabled"),
])
def test_invalid_tracker_settings_are_one_clear_error(compose, overrides, message):
    with pytest.raises(ConfigError) as info:  # a typed mode is refused as Hydra composes
        validate_config(compose(overrides))
    assert message in info.value.one_line() and "\n" not in str(info.value)


def test_disabled_tracker_needs_no_project(compose, capsys):
    validate_config(compose(["tracker=swanlab", "tracker.mode=disabled", "tracker.project=null"]))
    assert capsys.readouterr().err == ""


def warnings_of(compose, capsys, overrides) -> list[str]:
    validate_config(compose(overrides))
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_cloud_mode_without_an_api_key_warns_with_the_fixes(compose, capsys, tmp_path, monkeypatch):
    [line] = warnings_of(compose, capsys, ["tracker=swanlab", "tracker.mode=cloud"])
    assert line.startswith("expflow: warning: tracker.mode=cloud but no SwanLab API key was found; fixes:")
    for fix in ("export SWANLAB_API_KEY", "secrets/swanlab_api_key", "swanlab login", "tracker.mode=offline"):
        assert fix in line
    import expflow.tracking.validate as v

    v._printed.clear()
    monkeypatch.setenv("SWANLAB_API_KEY", fake_key())
    assert warnings_of(compose, capsys, ["tracker=swanlab", "tracker.mode=cloud"]) == []
    monkeypatch.delenv("SWANLAB_API_KEY")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "swanlab_api_key").write_text(fake_key())
    assert warnings_of(compose, capsys, ["tracker=swanlab", "tracker.mode=cloud"]) == []


def test_local_mode_without_the_dashboard_warns(compose, capsys):
    import importlib.util

    if importlib.util.find_spec("swanboard") is not None:
        pytest.skip("swanlab[dashboard] is installed")
    [line] = warnings_of(compose, capsys, ["tracker=swanlab", "tracker.mode=local"])
    assert "swanlab[dashboard]" in line and "swanlab watch" in line


def test_several_trackers_warn_with_the_overhead(compose, capsys):
    [line] = warnings_of(compose, capsys, ["tracker=multi"])
    assert "2 trackers enabled at once (SwanLab, MLflow)" in line and "step time per tracker" in line
    capsys.readouterr()
    import expflow.tracking.validate as v

    v._printed.clear()
    assert warnings_of(compose, capsys, ["tracker=multi", "tracker.trackers.mlflow.mode=disabled"]) == []


def test_an_api_key_is_never_a_config_value(tmp_path):
    secret = fake_key("cfg")
    proc = run_cli(*small_overrides(tmp_path / "runs", "tracker=swanlab", f"+tracker.api_key={secret}"),
                   module="expflow.train")
    assert_one_line_error(proc, "tracker.api_key: credentials are never config values")
    assert secret not in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before Hydra wrote anything


def test_a_bad_mode_on_the_command_line_is_one_line(tmp_path):
    proc = run_cli(*small_overrides(tmp_path / "runs", "tracker=swanlab", "tracker.mode=wrong"), module="expflow.train")
    assert_one_line_error(proc, "tracker.mode: 'wrong' is not a valid SwanLab mode; valid: cloud, local, offline, disabled")


def test_trackers_run_on_rank_0_only_and_never_break_training(tmp_path, capsys):
    node = {"_target_": "expflow.tracking.swanlab.SwanLabTracker", "project": "p"}
    assert isinstance(build_tracker(node, is_main=False, run_dir=tmp_path), NullTracker)
    assert isinstance(build_tracker({"_target_": "expflow.tracking.NullTracker"}, is_main=True), NullTracker)
    tracker = build_tracker(node, is_main=True, run_dir=tmp_path, run_id="r")
    assert isinstance(tracker, GuardedTracker)

    class Broken:
        calls = 0

        def log(self, metrics, step):
            Broken.calls += 1
            raise RuntimeError("server went away")

    guarded = GuardedTracker(Broken(), "Broken")
    for step in range(3):
        guarded.log({"a": 1.0}, step)
    guarded.finish()
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert Broken.calls == 1 and len(err) == 1
    assert "tracker Broken failed in log (RuntimeError: server went away)" in err[0]


def test_multi_tracker_builds_each_with_the_package(tmp_path):
    multi = build_tracker({"_target_": "expflow.tracking.MultiTracker", "_recursive_": False, "trackers": {
        "a": {"_target_": "expflow.tracking.swanlab.SwanLabTracker", "project": "p", "mode": "disabled"},
        "b": {"_target_": "expflow.tracking.NullTracker"},
    }}, is_main=True, run_dir=tmp_path, run_id="r")
    assert isinstance(multi, MultiTracker) and list(multi.trackers) == ["a"]
    assert multi.trackers["a"].tracker.log_dir == tmp_path / "swanlab"


def test_backends_are_imported_lazily():
    code = (
        "import sys\n"
        "from expflow.tracking import build_tracker\n"
        "from expflow.rank import execute\n"
        "t = build_tracker({'_target_': 'expflow.tracking.swanlab.SwanLabTracker', 'project': 'p'}, is_main=True)\n"
        "m = build_tracker({'_target_': 'expflow.tracking.mlflow.MlflowTracker'}, is_main=True)\n"
        "import expflow.sync.cli, expflow.cli\n"
        "print('swanlab' in sys.modules, 'mlflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_swanlab_offline_tracker_keeps_one_experiment_id_across_attempts(tmp_path):
    from expflow.sync.swanlab_sdk import read_offline_runs
    from expflow.tracking.swanlab import SwanLabTracker, recorded_experiment_id

    ids = []
    for attempt in range(2):  # train, then a continue: each a new SwanLab run directory
        t = SwanLabTracker(project="p", run_dir=tmp_path, run_id="pkg1")
        t.log_config({"seed": 0})
        t.log({"loss": 1.0 / (attempt + 1)}, step=attempt + 1)
        t.finish("COMPLETED")
        ids.append(recorded_experiment_id(tmp_path / "swanlab"))
    runs = read_offline_runs(tmp_path / "swanlab")
    assert len(runs) == 2 and ids[0] == ids[1] and {r.start["id"] for r in runs} == {ids[0]}
    assert runs[0].start["name"] == "pkg1" and runs[0].start["project"] == "p"


@pytest.mark.slow
def test_ddp_run_has_one_swanlab_run_from_rank_0(tmp_path):
    from expflow.package import SavePackage
    from expflow.sync.swanlab_sdk import read_offline_runs

    runs = tmp_path / "runs"
    proc = run_cli(*small_overrides(runs, "trainer.processes=2", "tracker=swanlab", "run_id=ddp"), module="expflow.train")
    assert proc.returncode == 0, proc.stderr
    pkg = SavePackage.open(runs / "ddp")
    assert len(read_offline_runs(pkg.tracker_dir / "swanlab")) == 1
