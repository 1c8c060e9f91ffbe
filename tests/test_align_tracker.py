"""Tracker experiments: deterministic identity, cloud mode up to the network call (the
key goes to the SDK and nowhere else), no credentials is one line before any source is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expflow.align.pipeline import run_alignment
from expflow.align.spec import load_spec
from expflow.align.tracker import experiment_id
from expflow.errors import AlignError

FAKE_KEY = "test-only-" + "0" * 8  # not a credential


def csv_spec(tmp_path: Path, mode: str) -> Path:
    data = tmp_path / "fw.csv"
    data.write_text("step,loss\n0,2.0\n1,1.0\n2,0.5\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"aligned_metrics: [loss]\nframeworks:\n  fw:\n    source: {{kind: csv, path: {data}}}\n"
                    f"target: {{project: cmp, mode: {mode}}}\n")
    return spec


def test_experiment_ids_are_deterministic_swanlab_style():
    a = experiment_id("proj", "verl", "d1")
    assert a == experiment_id("proj", "verl", "d1") and len(a) == 21 and a.isalnum() and a.islower()
    assert a != experiment_id("proj", "verl", "d2") != experiment_id("other", "verl", "d1")


def test_cloud_mode_without_a_key_fails_before_reading(tmp_path, monkeypatch):
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no secrets/config.yaml here
    with pytest.raises(AlignError) as info:
        run_alignment(load_spec(csv_spec(tmp_path, "cloud")), tmp_path / "out")
    assert "SWANLAB_API_KEY" in info.value.one_line() and "secrets/config.yaml" in info.value.one_line()
    assert not (tmp_path / "out").exists()


def test_cloud_mode_hands_the_key_to_the_sdk_only(tmp_path, monkeypatch):
    import swanlab

    calls: dict[str, object] = {}
    logged: list[tuple[dict, int]] = []

    class FakeRun:
        def log(self, data, step):
            logged.append((data, step))

    monkeypatch.setenv("SWANLAB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(swanlab, "login", lambda **kw: calls.setdefault("login", kw))
    monkeypatch.setattr(swanlab, "init", lambda **kw: calls.setdefault("init", kw) and FakeRun())
    monkeypatch.setattr(swanlab, "finish", lambda **kw: calls.setdefault("finish", True))
    out = tmp_path / "out"
    result = run_alignment(load_spec(csv_spec(tmp_path, "cloud")), out, plots=False)
    assert calls["login"]["api_key"] == FAKE_KEY and calls["login"]["save"] is False
    assert calls["init"]["mode"] == "online" and calls["init"]["project"] == "cmp"
    assert logged == [({"loss": 2.0}, 0), ({"loss": 1.0}, 1), ({"loss": 0.5}, 2)]
    assert result.tracker["fw"]["status"] == "written"
    for f in out.rglob("*"):
        if f.is_file():
            assert FAKE_KEY.encode() not in f.read_bytes(), f
    # the same data again: no second experiment
    calls.clear()
    again = run_alignment(load_spec(csv_spec(tmp_path, "cloud")), out, plots=False)
    assert again.tracker["fw"]["status"] == "unchanged" and "init" not in calls
    assert json.loads((out / "check.json").read_text())["tracker"]["fw"]["status"] == "unchanged"


def test_disabled_target_writes_no_experiment(tmp_path):
    result = run_alignment(load_spec(csv_spec(tmp_path, "disabled")), tmp_path / "out", plots=False)
    assert result.tracker == {} and not (tmp_path / "out" / "swanlab").exists()
    assert result.table["value"].tolist() == [2.0, 1.0, 0.5]


def _logged(tmp_path: Path, name: str, steps: list[dict], cached: bool) -> list[tuple[str, int, float]]:
    """The scalar records of an offline run that logged ``steps`` (swanlab 0.10's own run.log)."""
    import subprocess
    import sys

    script = f"""
import contextlib, json, os, sys
import swanlab
from expflow.sync.swanlab_sdk import scalar_key_cache
steps = json.loads(sys.argv[1])
with (scalar_key_cache() if {cached!r} else contextlib.nullcontext()):
    run = swanlab.init(mode="offline", log_dir=sys.argv[2], project="p", name="n", id="abcdefghijklmnop")
    for i, values in enumerate(steps):
        run.log(values, step=i)
    swanlab.finish()
"""
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(steps), str(tmp_path / name)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from expflow.sync.swanlab_sdk import RecordFile

    (run_file,) = (tmp_path / name).glob("run-*/run-*.swanlab")
    return [(r.scalar.key, r.scalar.step, r.scalar.value.number) for r in RecordFile(run_file)
            if r.WhichOneof("record_type") == "scalar"]


def test_scalar_key_cache_logs_what_swanlab_logs(tmp_path):
    """The align experiments validate a key once: the records equal swanlab's own, keys that
    swanlab trims or drops included, and values it handles its own way (ints, nested dicts)."""
    steps = [{"loss": 1.5, "/lead/": 0.5, "a/b": 2.0},
             {"loss": 1.25, "/lead/": 0.25, "a/b": 3.0, "int": 4},
             {"loss": 1.0, "nested": {"x": 1.0}, "///": 7.0}]
    plain = _logged(tmp_path, "plain", steps, cached=False)
    cached = _logged(tmp_path, "cached", steps, cached=True)
    assert cached == plain
    assert ("lead", 0, 0.5) in plain and ("nested/x", 2, 1.0) in plain and not any(k == "///" for k, _, _ in plain)
