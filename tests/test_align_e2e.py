"""End to end: a SLIME-like W&B offline run (three step groups, uneven steps, gaps), a
VERL-like SwanLab offline run and a ROLL-like TensorBoard run, written by the real
libraries, aligned; exact values, the missing-metric report, the derived throughput, the
output files; re-runs read nothing; damaged sources fail alone, in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from expflow.align import sources as sources_pkg
from expflow.align.pipeline import WorkflowRuns, run_alignment
from expflow.align.sources.swanlab import find_record_file, read_record_file
from expflow.align.sources.wandb import find_run_file
from expflow.align.spec import load_spec

from .align_fixtures import (
    align_sources_fixture,  # noqa: F401 (the fixture)
    roll_value,
    slime_grad_norm,
    slime_perf,
    slime_reward,
    verl_value,
    write_package,
    write_tensorboard,
)
from .conftest import assert_one_line_error, run_cli

ALIGNED = ["algorithm/reward", "algorithm/policy_loss", "algorithm/entropy", "algorithm/grad_norm",
           "infra/throughput", "eval/accuracy"]

SPEC = """
aligned_metrics: {aligned}
frameworks:
  slime:
    source: {{kind: wandb-offline, path: "{slime}"}}
    mapping: {{_preset_: slime, "eval/acc": eval/accuracy}}
    derived: {{"infra/throughput": {{formula: slime_throughput, n_gpus: 8}}}}
    target_exp_name: slime_experiment
  verl:
    source: {{kind: swanlab-offline, path: "{verl}"}}
    mapping: {{_preset_: verl, "val-core/gsm8k/acc/mean@1": eval/accuracy}}
  roll:
    source: {{kind: tensorboard, path: "{roll}"}}
    mapping: preset:roll
    derived: {{"infra/throughput": {{formula: per_gpu, column: system/tps}}}}   # no n_gpus: not derived
target: {{project: framework-comparison, mode: offline}}
"""


def write_spec(directory: Path, **paths: Path) -> Path:
    spec = directory / "spec.yaml"
    spec.write_text(SPEC.format(aligned=json.dumps(ALIGNED), **{k: str(v) for k, v in paths.items()}))
    return spec


def value(table: pd.DataFrame, framework: str, metric: str, step: int) -> float | None:
    hit = table[(table["framework"] == framework) & (table["metric"] == metric) & (table["step"] == step)]
    assert len(hit) <= 1
    return float(hit["value"].iloc[0]) if len(hit) else None


@pytest.fixture(scope="module")
def workspace(align_sources, tmp_path_factory):
    """Copies of the sources (tests change them) and a first alignment."""
    root = tmp_path_factory.mktemp("align-e2e")
    paths = {name: Path(shutil.copytree(align_sources[name], root / name)) for name in ("slime", "verl", "roll")}
    spec = write_spec(root, **paths)
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWANLAB_ROOT", str(root / "swanlab-root"))
        result = run_alignment(load_spec(spec), out)
    return {"root": root, "spec": spec, "out": out, "result": result, **paths}


def test_slime_step_groups_merge_on_the_train_step(workspace):
    t = workspace["result"].table
    # rollout group (rollout/step = rollout_id * 2): odd steps back-filled from the next rollout,
    # the missing rollout 5 (step 10) from rollout 6, nothing after the last rollout (22)
    assert value(t, "slime", "algorithm/reward", 0) == slime_reward(0)
    assert value(t, "slime", "algorithm/reward", 1) == slime_reward(1)
    assert value(t, "slime", "algorithm/reward", 10) == slime_reward(6)
    assert value(t, "slime", "algorithm/reward", 22) == slime_reward(11)
    assert value(t, "slime", "algorithm/reward", 23) is None
    # train group: the last non-null value per step
    assert value(t, "slime", "algorithm/policy_loss", 3) == 99.0
    assert value(t, "slime", "algorithm/policy_loss", 6) == -0.06
    assert value(t, "slime", "algorithm/policy_loss", 23) == -0.23
    assert value(t, "slime", "algorithm/grad_norm", 7) == slime_grad_norm(8)
    assert value(t, "slime", "algorithm/entropy", 5) == 1.0 - 0.02 * 5
    # eval group (eval/step 0, 8, 16): back-filled over its own range only
    assert value(t, "slime", "eval/accuracy", 1) == 0.5 + 0.01 * 4
    assert value(t, "slime", "eval/accuracy", 16) == 0.5 + 0.01 * 8
    assert value(t, "slime", "eval/accuracy", 17) is None
    assert t[t["framework"] == "slime"]["step"].max() == 23


def test_slime_derived_throughput(workspace):
    t = workspace["result"].table
    for step, rollout in ((4, 2), (10, 6), (0, 0)):
        tok, train_time, step_time = slime_perf(rollout)
        assert value(t, "slime", "infra/throughput", step) == tok * train_time / (step_time * 8)


def test_verl_and_roll_values(workspace):
    t = workspace["result"].table
    assert value(t, "verl", "algorithm/reward", 4) == verl_value("critic/score/mean", 5)  # step 4 never logged
    assert value(t, "verl", "algorithm/grad_norm", 6) == verl_value("actor/grad_norm", 7)
    assert value(t, "verl", "infra/throughput", 3) == verl_value("perf/throughput", 3)
    assert value(t, "verl", "eval/accuracy", 2) is None  # validation starts at step 5: nothing before
    assert value(t, "verl", "eval/accuracy", 5) == 0.3 + 0.01 * 5
    assert value(t, "verl", "eval/accuracy", 7) == 0.3 + 0.01 * 10
    assert value(t, "verl", "algorithm/policy_loss", 0) is None  # VERL starts at step 1
    assert value(t, "roll", "algorithm/reward", 7) == float(np.float32(roll_value("critic/score/mean", 7)))
    assert value(t, "roll", "algorithm/grad_norm", 14) == float(np.float32(roll_value("actor_train/grad_norm", 14)))


def test_missing_metric_report(workspace, capsys):
    checks = {c.label: c for c in workspace["result"].checks}
    assert checks["slime"].status == "ok" and checks["verl"].status == "ok"
    roll = checks["roll"]
    assert roll.status == "missing"
    assert roll.missing == ["algorithm/entropy", "infra/throughput", "eval/accuracy"]
    assert roll.notes == ["infra/throughput: not derived (n_gpus is not set)"]
    assert roll.expected["infra/throughput"] == ["per_gpu(system/tps)"]
    report = json.loads((workspace["out"] / "check.json").read_text())
    assert report["aligned_metrics"] == ALIGNED
    assert report["frameworks"]["roll"]["missing"] == roll.missing
    assert report["frameworks"]["slime"]["missing"] == []


def test_output_files(workspace):
    out = workspace["out"]
    csv = pd.read_csv(out / "aligned.csv")
    assert list(csv.columns) == ["framework", "metric", "step", "value"]
    parquet = pd.read_parquet(out / "aligned.parquet")
    assert len(csv) == len(parquet) == len(workspace["result"].table)
    assert set(csv["framework"]) == {"slime", "verl", "roll"} and set(csv["metric"]) == set(ALIGNED)
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert len(pngs) == len(ALIGNED) and "algorithm_reward.png" in pngs
    assert all((out / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(ALIGNED) and "<img" in page and "src='http" not in page
    assert "algorithm/entropy" in page  # roll's missing metric is in the check table


def test_one_tracker_experiment_per_framework(workspace):
    out = workspace["out"]
    runs = sorted((out / "swanlab").glob("run-*"))
    assert len(runs) == 3
    tracker = workspace["result"].tracker
    assert {v["name"] for v in tracker.values()} == {"slime_experiment", "verl", "roll"}
    # the experiment holds the aligned series (SwanLab's own reader reads it back)
    logged = read_record_file(find_record_file(out / "swanlab" / tracker["slime"]["dir"]))
    assert logged.info["project"] == "framework-comparison" and logged.info["name"] == "slime_experiment"
    pts = logged.points[logged.points["metric"] == "algorithm/reward"]
    assert dict(zip(pts["row"], pts["value"], strict=True))[10] == slime_reward(6)


def test_rerun_with_unchanged_sources_reads_no_source(workspace, monkeypatch):
    def refuse(self):
        raise AssertionError(f"{self.describe()} was read again")

    for kind in sources_pkg.SOURCE_KINDS.values():
        monkeypatch.setattr(kind, "read", refuse)
    monkeypatch.setenv("SWANLAB_ROOT", str(workspace["root"] / "swanlab-root"))
    again = run_alignment(load_spec(workspace["spec"]), workspace["out"])
    assert again.read == [] and sorted(again.cached) == ["roll", "slime", "verl"]
    pd.testing.assert_frame_equal(again.table, workspace["result"].table)
    assert {v["status"] for v in again.tracker.values()} == {"unchanged"}
    assert len(list((workspace["out"] / "swanlab").glob("run-*"))) == 3  # no duplicate


def test_a_changed_source_is_read_again_and_its_experiment_replaced(workspace, monkeypatch):
    monkeypatch.setenv("SWANLAB_ROOT", str(workspace["root"] / "swanlab-root"))
    out = workspace["root"] / "out-changed"
    shutil.copytree(workspace["out"], out)
    roll = workspace["roll"]
    write_tensorboard(roll, {"critic/score/mean": [(15, 9.0)]})  # the run went on: a new event file
    result = run_alignment(load_spec(workspace["spec"]), out)
    assert result.read == ["roll"] and sorted(result.cached) == ["slime", "verl"]
    assert value(result.table, "roll", "algorithm/reward", 15) == 9.0
    assert result.tracker["roll"]["status"] == "written" and result.tracker["slime"]["status"] == "unchanged"
    assert len(list((out / "swanlab").glob("run-*"))) == 3  # roll's run replaced, not added


def test_corrupt_source_is_one_line_and_the_others_are_aligned(workspace, tmp_path):
    bad = tmp_path / "slime" / "wandb"
    shutil.copytree(workspace["slime"], bad)
    wandb_file = find_run_file(bad)
    data = bytearray(wandb_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wandb_file.write_bytes(bytes(data))
    spec = write_spec(tmp_path, slime=bad, verl=workspace["verl"], roll=workspace["roll"])
    out = tmp_path / "out"
    proc = run_cli("align", str(spec), "--out", str(out), "--no-tracker", timeout=300)
    assert proc.returncode == 1
    assert_one_line_error(proc, str(wandb_file), "slime", "corrupt record at byte")
    assert "[✓] verl" in proc.stdout and "[✗] slime" in proc.stdout
    report = json.loads((out / "check.json").read_text())
    assert report["frameworks"]["slime"]["status"] == "error"
    assert str(wandb_file) in report["frameworks"]["slime"]["error"]
    assert set(pd.read_csv(out / "aligned.csv")["framework"]) == {"verl", "roll"}


def test_truncated_source_fails_alone(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab-root"))
    verl = Path(shutil.copytree(workspace["verl"], tmp_path / "verl"))
    record = find_record_file(verl)
    record.write_bytes(record.read_bytes()[:-30])
    spec = write_spec(tmp_path, slime=workspace["slime"], verl=verl, roll=workspace["roll"])
    result = run_alignment(load_spec(spec), tmp_path / "out", tracker=False, plots=False)
    assert [c.label for c in result.failures] == ["verl"]
    assert str(record) in result.failures[0].error and "truncated" in result.failures[0].error
    assert set(result.table["framework"].astype(str)) == {"slime", "roll"}


def test_workflow_runs_are_aligned_one_series_each(tmp_path, monkeypatch):
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab-root"))
    runs = tmp_path / "runs"
    for i, run_id in enumerate(("aaa", "bbb", "zzz")):
        write_package(runs, run_id, [(s, {"train/loss": 1.0 / (s + 1) + i}) for s in range(1, 4)])
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"aligned_metrics: [train/loss]\nframeworks:\n  ours:\n    source: {{kind: expflow, path: {runs}}}\n"
                    "target: {mode: disabled}\n")
    result = run_alignment(load_spec(spec), tmp_path / "out", workflow=WorkflowRuns(runs, ["aaa", "bbb"]), plots=False)
    assert [c.label for c in result.checks] == ["ours/aaa", "ours/bbb"]  # zzz is not the workflow's
    assert value(result.table, "ours/bbb", "train/loss", 2) == 1.0 / 3 + 1
