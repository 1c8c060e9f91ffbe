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


def _records(run_dir: Path) -> list[tuple]:
    """What a run file says, timestamps, record numbers, colour and console lines aside."""
    from expflow.sync.swanlab_sdk import RecordFile

    (run_file,) = run_dir.glob("run-*.swanlab")
    out = []
    for r in RecordFile(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "start":
            out.append((kind, r.start.project, r.start.name, r.start.id))
        elif kind == "save":
            out.append((kind, r.num, r.save.name, Path(r.save.source_path).relative_to(run_dir).as_posix(), r.save.type))
        elif kind == "column":
            c = r.column
            out.append((kind, c.column_key, c.column_class, c.column_type, c.section_name, c.section_type))
        elif kind == "scalar":
            out.append((kind, r.scalar.key, r.scalar.step, r.scalar.type, r.scalar.value.number))
        elif kind == "finish":
            out.append((kind, r.finish.state))
    return out


def test_an_offline_experiment_is_the_run_swanlab_itself_writes(tmp_path, monkeypatch):
    """expflow writes align's offline experiments without swanlab's per-call cost: the run
    directory holds what swanlab.init + one run.log per step + finish would write (the same
    records in the same order, columns and sections, keys cleaned or dropped as swanlab does,
    config and metadata files), and swanlab's own sync uploads the same to a server."""
    import subprocess
    import sys

    import numpy as np
    import pandas as pd

    from expflow.align.spec import TargetSpec
    from expflow.align.tracker import _log_experiment
    from expflow.sync.swanlab_sdk import upload_run

    from .swanlab_standin import StandinSwanLab

    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab-root"))
    keys = ["loss", "a/b", "a/b/c", "/lead/", "///", "eval/acc"]
    rows = [(k, s, float(s) + i / 8) for s in range(0, 12, 3) for i, k in enumerate(keys) if (s + i) % 4]
    table = pd.DataFrame(rows, columns=["metric", "step", "value"])
    target = TargetSpec(project="cmp", mode="offline")
    exp_id = experiment_id("cmp", "verl", "d1")
    ours = _log_experiment(table, target, "verl", exp_id, tmp_path / "ours")

    wide = table.pivot(index="step", columns="metric", values="value").sort_index()
    steps = [{k: float(v) for k, v in row.items() if not np.isnan(v)} for _, row in wide.iterrows()]
    script = """
import json, sys
import swanlab
run = swanlab.init(mode="offline", log_dir=sys.argv[2], project="cmp", name="verl", id=sys.argv[4],
                   config={"expflow.align": {"experiment": "verl"}}, settings=swanlab.Settings(probe={
                   "hardware": False, "runtime": False, "requirements": False, "conda": False, "git": False,
                   "monitor": False}))
for step, values in zip(json.loads(sys.argv[3]), json.loads(sys.argv[1])):
    run.log(values, step=step)
swanlab.finish()
"""
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(steps), str(tmp_path / "sdk"),
                           json.dumps([int(s) for s in wide.index]), exp_id], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (sdk,) = (tmp_path / "sdk").glob(f"run-*-{exp_id}")
    assert ours.parent == tmp_path / "ours" and ours.name.startswith("run-") and ours.name.endswith(exp_id)

    def in_order(records):  # swanlab writes its config save last (twice); expflow writes both saves first
        return sorted({r for r in records if r[0] == "save"}), [r for r in records if r[0] != "save"]

    assert in_order(_records(ours)) == in_order(_records(sdk))
    assert ("scalar", "lead", 0, 1, 3 / 8) in _records(ours) and not any(r[1] == "///" for r in _records(ours)[1:])
    assert (ours / "files/config.yaml").read_text() == (sdk / "files/config.yaml").read_text()
    ours_meta, sdk_meta = (json.loads((d / "files/swanlab-metadata.json").read_text()) for d in (ours, sdk))
    assert {k: v for k, v in ours_meta.items() if k != "swanlab"} == {k: v for k, v in sdk_meta.items() if k != "swanlab"}

    key = FAKE_KEY
    monkeypatch.setenv("SWANLAB_API_KEY", key)
    with StandinSwanLab(key) as server:
        for run_dir, cuid in ((ours, "a" * 21), (sdk, "b" * 21)):
            upload_run(run_dir, api_key=key, api_host=server.url, web_host=None, workspace=None, project="cmp",
                       experiment_id=cuid, must_exist=False, replay=False, timeout=60)
        a, b = server.experiments["a" * 21], server.experiments["b" * 21]
        assert a.points and sorted(a.points) == sorted(b.points)
        for exp in (a, b):  # each names its own run directory
            exp.profile["metadata"]["swanlab"].pop("run_dir")
        assert a.profile == b.profile and a.states == b.states
