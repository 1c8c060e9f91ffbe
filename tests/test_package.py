"""Package creation, opening and status derivation."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from expflow.errors import PackageError
from expflow.package import SavePackage, Status
from expflow.package.status import HOST


def make(tmp_path, name="run1"):
    (tmp_path / "proj" / "src").mkdir(parents=True, exist_ok=True)
    (tmp_path / "proj" / "src" / "m.py").write_text("x = 1\n")
    config = {"seed": 3, "run_id": name, "paths": {"runs": "x"}, "trainer": {"max_epochs": 2}}
    return SavePackage.create(tmp_path / "runs" / name, config=config, overrides=["seed=3"],
                              store=tmp_path / "runs" / ".store", code_root=tmp_path / "proj")


def test_create_writes_manifest_last_and_refuses_to_overwrite(tmp_path):
    pkg = make(tmp_path)
    m = pkg.manifest()
    assert m["run_id"] == "run1" and m["seed"] == 3 and m["overrides"] == ["seed=3"]
    assert m["status"] == "QUEUED" and m["code"]["files"] == 1
    assert (pkg.code_dir / "src" / "m.py").read_text() == "x = 1\n"
    with pytest.raises(PackageError, match="already exists"):
        make(tmp_path)


def test_a_refused_creation_leaves_no_directory(tmp_path):
    """A snapshot refused mid-creation (here: a config file of the project holding a
    credential) leaves nothing where there was nothing: no manifest-less directory."""
    (tmp_path / "proj" / "conf").mkdir(parents=True)
    (tmp_path / "proj" / "conf" / "keys.yaml").write_text("swanlab:\n  api_key: abc123\n")
    with pytest.raises(PackageError, match="keys.yaml"):
        make(tmp_path)
    assert not (tmp_path / "runs" / "run1").exists()


def test_fingerprint_ignores_run_id_and_paths(tmp_path):
    a = make(tmp_path, "a").manifest()["fingerprint"]
    (tmp_path / "proj" / "src" / "m.py").unlink()
    (tmp_path / "proj" / "src").rmdir()
    b = make(tmp_path, "b").manifest()["fingerprint"]
    assert a == b


def test_open_rejects_foreign_and_unknown_format(tmp_path):
    (tmp_path / "foreign").mkdir()
    with pytest.raises(PackageError, match="not a save-package"):
        SavePackage.open(tmp_path / "foreign")
    with pytest.raises(PackageError, match="no such directory"):
        SavePackage.open(tmp_path / "nope")
    pkg = make(tmp_path)
    m = pkg.manifest()
    m["format"] = "other/9"
    pkg.manifest_path.write_text(json.dumps(m))
    with pytest.raises(PackageError, match="unknown package format"):
        SavePackage.open(pkg.path)


def test_running_package_of_a_dead_process_is_crashed(tmp_path):
    pkg = make(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def as_running(m, pid):
        m["status"] = "RUNNING"
        m["status_history"].append({"status": "RUNNING", "time": m["created"], "host": HOST, "pid": pid})

    pkg.update_manifest(lambda m: as_running(m, dead.pid))
    assert pkg.status() is Status.CRASHED
    pkg.set_status(Status.RUNNING)  # this (live) process
    assert pkg.status() is Status.RUNNING


def test_stale_heartbeat_from_another_host_is_crashed(tmp_path):
    pkg = make(tmp_path)
    pkg.set_status(Status.RUNNING)
    pkg.update_manifest(lambda m: m["status_history"][-1].update(host="elsewhere"))
    pkg.heartbeat_path.write_text(json.dumps({"time": time.time() - 3600, "host": "elsewhere", "pid": 1}))
    assert pkg.status(heartbeat_timeout=60) is Status.CRASHED
    pkg.heartbeat_path.write_text(json.dumps({"time": time.time(), "host": "elsewhere", "pid": 1}))
    assert pkg.status(heartbeat_timeout=60) is Status.RUNNING


def test_config_strings_that_omegaconf_reads_as_numbers_are_quoted():
    # A workflow run id is 12 hex digits: "6099e1067548" is a float (inf) to OmegaConf's loader
    # though not to PyYAML; "123456789012" is an int to both.
    from omegaconf import OmegaConf

    from expflow.package.package import dump_config

    config = {"run_id": "6099e1067548", "other": "123456789012", "flag": "true", "x": "${expflow:checkpoint}",
              "n": 3, "f": 1e-3, "none": None}
    assert OmegaConf.to_container(OmegaConf.create(dump_config(config))) == config
