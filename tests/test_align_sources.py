"""Sources, on files written by the real libraries: every point read, step keys declared,
corrupt or truncated files an error naming the file; cloud sources up to the network call."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from expflow.align.sources import SourceError
from expflow.align.sources.csvfile import read_csv
from expflow.align.sources.packages import ExpflowSource
from expflow.align.sources.swanlab import SwanLabCloudSource, find_record_file, read_record_file
from expflow.align.sources.tensorboard import find_event_files, read_event_files
from expflow.align.sources.wandb import (
    WandbCloudSource,
    find_run_file,
    find_run_files,
    read_run_file,
)
from expflow.align.spec import SourceSpec
from expflow.align.steps import align_steps

from .align_fixtures import (
    align_sources_fixture,  # noqa: F401 (the fixture)
    roll_value,
    verl_value,
    write_package,
    write_tensorboard,
)


def values(raw, metric: str) -> dict[int, float]:
    part = raw.points[raw.points["metric"] == metric]
    return dict(zip(part["row"].tolist(), part["value"].tolist(), strict=True))


def damage(src: Path, dest: Path, how: str) -> Path:
    data = bytearray(src.read_bytes())
    if how == "truncate":
        data = data[: len(data) - 20]
    else:
        data[len(data) // 2] ^= 0xFF
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(bytes(data))
    return dest


# -- W&B offline ------------------------------------------------------------------------
def test_wandb_offline_reads_history_rows_and_define_metric_groups(align_sources):
    raw = read_run_file(find_run_file(align_sources["slime"]))
    assert raw.step_keys == {"train/*": "train/step", "rollout/*": "rollout/step",
                             "perf/*": "rollout/step", "eval/*": "eval/step"}
    assert {"train/pg_loss", "rollout/raw_reward", "perf/step_time", "eval/acc"} <= set(raw.metrics)
    assert not any(m.startswith("_") or m.startswith("eval/samples") for m in raw.metrics)  # no _runtime, no text
    assert raw.info["name"] == "slime"
    pg = raw.points[raw.points["metric"] == "train/pg_loss"]["value"].to_numpy()
    assert np.isnan(pg).sum() == 1  # the null re-log at step 6 is read as a null


def test_wandb_offline_finds_the_run_in_a_wandb_directory(align_sources, tmp_path):
    wandb_dir = align_sources["slime"]
    assert find_run_file(wandb_dir) == find_run_file(wandb_dir.parent)  # the dir, or the dir above
    two = tmp_path / "wandb"
    for i in range(2):
        shutil.copytree(next(wandb_dir.glob("offline-run-*")), two / f"offline-run-{i}")
    assert len(find_run_files(two)) == 2  # several runs: all of them, merged by the source
    with pytest.raises(SourceError, match="no such file"):
        find_run_file(tmp_path / "nope")


# -- SwanLab offline --------------------------------------------------------------------
def test_swanlab_offline_reads_every_scalar_with_swanlabs_reader(align_sources):
    raw = read_record_file(find_record_file(align_sources["verl"]))
    assert raw.info["name"] == "verl" and raw.step_keys == {}
    assert values(raw, "actor/pg_loss") == {s: verl_value("actor/pg_loss", s) for s in (1, 2, 3, 5, 6, 7, 8, 9, 10)}
    axes = read_record_file(find_record_file(align_sources["axes"]))
    assert axes.step_keys == {"rollout/step": "rollout/step", "rollout/reward": "rollout/step"}


# -- TensorBoard ------------------------------------------------------------------------
def test_tensorboard_reads_every_point_not_a_sample(align_sources, tmp_path):
    raw = read_event_files(find_event_files(align_sources["roll"]), align_sources["roll"])
    assert values(raw, "system/tps")[7] == float(np.float32(roll_value("system/tps", 7)))
    big = write_tensorboard(tmp_path / "big", {"loss": [(s, s * 0.5) for s in range(12_000)]})
    raw = read_event_files(find_event_files(big), big)
    assert len(raw.points) == 12_000  # EventAccumulator's default keeps a 10,000-point sample


def test_tensorboard_restart_purges_the_abandoned_steps(tmp_path):
    run = tmp_path / "tb"
    write_tensorboard(run, {"loss": [(s, 1.0) for s in range(10)]})
    for f in run.glob("*tfevents*"):
        f.rename(f.with_name("events.out.tfevents.0000000001.a"))
    write_tensorboard(run, {"loss": [(s, 2.0) for s in range(5, 8)]})  # restarted at step 5, died at 7
    raw = read_event_files(find_event_files(run), run)
    assert len(values(raw, "loss")) == 10 and raw.points["segment"].max() == 1  # both files read
    aligned = align_steps(raw.points, {}, fill="none")
    assert dict(zip(aligned["step"], aligned["value"], strict=True)) == {**{s: 1.0 for s in range(5)}, 5: 2.0, 6: 2.0, 7: 2.0}


# source -> (its one file, how to read a copy of it)
READERS = {
    "slime": (lambda p: find_run_file(p), read_run_file),
    "verl": (lambda p: find_record_file(p), read_record_file),
    "roll": (lambda p: find_event_files(p)[0], lambda f: read_event_files([f], f.parent)),
}


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("name", sorted(READERS))
def test_damaged_file_is_an_error_naming_the_file(align_sources, tmp_path, name, how):
    find, read = READERS[name]
    original = find(align_sources[name])
    bad = damage(original, tmp_path / "copy" / original.name, how)
    with pytest.raises(SourceError) as info:
        read(bad)
    msg = info.value.one_line()
    assert str(bad) in msg and ("truncated" in msg or "corrupt" in msg), msg


# -- CSV and expflow packages ---------------------------------------------------------
def test_csv_long_and_wide(tmp_path):
    long = tmp_path / "long.csv"
    long.write_text("step,metric,value\n0,loss,1.5\n1,loss,1.0\n1,acc,0.5\n")
    assert values(read_csv(long), "loss") == {0: 1.5, 1: 1.0}
    wide = tmp_path / "wide.csv"
    wide.write_text("iter,loss,acc,note\n0,1.5,,a\n1,1.0,0.5,b\n")
    raw = read_csv(wide, step_column="iter")
    assert values(raw, "acc") == {1: 0.5} and "note" not in raw.metrics
    with pytest.raises(SourceError, match="no step column 'step'"):
        read_csv(wide)
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\nx,1\n")
    with pytest.raises(SourceError, match="line 2"):
        read_csv(bad)


def test_expflow_runs_directory_is_one_series_per_package(tmp_path):
    write_package(tmp_path / "runs", "aaa", [(1, {"train/loss": 2.0}), (2, {"train/loss": 1.0})])
    write_package(tmp_path / "runs", "bbb", [(1, {"train/loss": 3.0})])
    source = ExpflowSource(SourceSpec(kind="expflow", path=str(tmp_path / "runs")))
    instances = source.instances()
    assert [s for s, _ in instances] == ["aaa", "bbb"]
    assert values(instances[0][1].read(), "train/loss") == {1: 2.0, 2: 1.0}
    picked = ExpflowSource(SourceSpec(kind="expflow", path=str(tmp_path / "runs"), runs=["bbb"])).instances()
    assert [s for s, _ in picked] == ["bbb"]
    with pytest.raises(SourceError, match="no package for run"):
        ExpflowSource(SourceSpec(kind="expflow", path=str(tmp_path / "runs"), runs=["zzz"])).instances()
    records = tmp_path / "runs" / "aaa" / "metrics" / "records.log"
    records.write_bytes(records.read_bytes()[:-5])  # a torn record: skipped, the rest read
    raw = instances[0][1].read()
    assert values(raw, "train/loss") == {1: 2.0}
    assert raw.damage.startswith(f"{records}: 1 bad record line (first: line 2 (byte ")
    assert "torn record" in raw.damage and instances[1][1].read().damage is None


# -- cloud sources, up to the network call -------------------------------------------
class FakeWandbRun:
    state, heartbeat_at, lastHistoryStep = "finished", "2026-01-01T00:00:00", 3
    history_keys = {"keys": {"train/step": {}, "train/loss": {}, "rollout/step": {}, "rollout/reward": {}, "_runtime": {}}}
    rows = [
        {"_step": 0, "train/step": 0, "train/loss": 1.0},
        {"_step": 1, "rollout/step": 0, "rollout/reward": 5.0},
        {"_step": 2, "train/step": 1, "train/loss": 0.5},
        {"_step": 3, "rollout/step": 1, "rollout/reward": 6.0},
    ]

    def __init__(self):
        self.calls = []

    def scan_history(self, keys, page_size):
        self.calls.append(sorted(keys))
        return [{k: r[k] for k in keys} for r in self.rows if all(k in r for k in keys)]


def test_wandb_cloud_fetches_each_metric_with_its_step_key(monkeypatch):
    import wandb

    run = FakeWandbRun()
    seen = {}

    class FakeApi:
        def __init__(self, overrides=None, api_key=None):
            seen["api_key"] = api_key

        def run(self, path):
            seen["path"] = path
            return run

    monkeypatch.setattr(wandb, "Api", FakeApi)
    fake = "-".join(("test", "key", "not", "real"))  # built at runtime: no key-like literal
    monkeypatch.setenv("WANDB_API_KEY", fake)
    src = WandbCloudSource(SourceSpec(kind="wandb", run_path="ent/proj/abc", workers=4))
    raw = src.read()
    assert seen == {"api_key": fake, "path": "ent/proj/abc"}
    assert sorted(run.calls) == sorted([["_step", "train/loss", "train/step"], ["_step", "train/step"],
                                        ["_step", "rollout/reward", "rollout/step"], ["_step", "rollout/step"]])
    assert values(raw, "rollout/reward") == {1: 5.0, 3: 6.0} and values(raw, "rollout/step") == {1: 0.0, 3: 1.0}
    assert raw.step_keys["rollout/reward"] == "rollout/step"
    assert src.fingerprint() == src.fingerprint() and src.identity() == "wandb::ent/proj/abc"


def test_swanlab_cloud_fetches_every_point_per_key(monkeypatch):
    import swanlab

    class FakeExperiment:
        state, finished_at = "FINISHED", "2026-01-01"

        def summary(self):
            return {"loss": {"latest": {"step": 2}}, "acc": {"latest": {"step": 2}}}

        def metrics(self, keys, all):
            assert all is True  # the full series, not the 1,500-point sample
            (key,) = keys
            pts = [{"step": s, "value": float(s) if key == "loss" else None} for s in range(3)]
            return {"list": [{"key": key, "metrics": pts}]}

    class FakeApi:
        def __init__(self, api_key=None, host=None):
            pass

        def run(self, path):
            assert path == "me/proj/exp123"
            return FakeExperiment()

    monkeypatch.setattr(swanlab, "Api", FakeApi)
    src = SwanLabCloudSource(SourceSpec(kind="swanlab", id="exp123", project="me/proj"))
    raw = src.read()
    assert values(raw, "loss") == {0: 0.0, 1: 1.0, 2: 2.0} and "acc" not in raw.metrics
    assert len(src.fingerprint()) == 64
    with pytest.raises(SourceError, match="user/project/id"):
        SwanLabCloudSource(SourceSpec(kind="swanlab", id="a/exp123")).read()  # neither bare nor full


def test_cloud_service_errors_are_source_errors(monkeypatch):
    import wandb

    def refuse(*a, **k):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(wandb, "Api", refuse)
    with pytest.raises(SourceError, match="wandb ent/proj/abc: ConnectionError"):
        WandbCloudSource(SourceSpec(kind="wandb", run_path="ent/proj/abc")).fingerprint()


def test_fake_objects_are_plain(tmp_path):
    # the expflow source's spec may be any object with the SourceSpec fields
    spec = SimpleNamespace(kind="expflow", path=str(tmp_path), runs=None)
    with pytest.raises(SourceError, match="no save-packages"):
        ExpflowSource(spec).instances()
