"""Sweep planning: deterministic run ids from composed configs, at DAG-build speed."""

from __future__ import annotations

import pytest

from expflow.errors import ConfigError
from expflow.workflow import Planner, composed_id, workflow_settings

from .conftest import CONF


@pytest.fixture(scope="module")
def planner():
    return Planner(CONF)


def test_sweep_line_expands_like_multirun(planner):
    runs = planner.expand("optim.lr=1e-3,3e-3 seed=range(3)")
    assert len(runs) == 6 and len({r.run_id for r in runs}) == 6
    assert runs[0].overrides == ("optim.lr=0.001", "seed=0")


@pytest.mark.parametrize("line", [
    "optim.lr=1e-3,3e-3 seed=range(2)",
    "+freq=lr_sweep",
    "model=mlp,cnn trainer.max_epochs=2",
    "+freq=regression seed=1,2",
    "model.hidden=[32],[64,32] optim=sgd",
    "+lifecycle.extra=5 checkpoint.persistent_keep=null",
])
def test_planned_id_is_the_composed_config_id(planner, line):
    for spec in planner.expand(line, ["trainer=debug"]):
        assert spec.run_id == composed_id(spec.overrides, CONF)


def test_same_config_same_id_any_change_new_id(planner):
    a = planner.expand("optim.lr=1e-3")[0].run_id
    assert planner.expand("optim.lr=0.001")[0].run_id == a  # same value, other spelling
    assert planner.expand("")[0].run_id == a  # the default lr is 1e-3
    assert planner.expand("optim.lr=2e-3")[0].run_id != a
    assert planner.expand("model=cnn")[0].run_id != a


def test_duplicate_runs_across_lines_are_one(planner):
    runs = planner.plan(["optim.lr=1e-3,3e-3", "+freq=lr_sweep"])
    assert len(runs) == 3  # lr_sweep's 1e-3 and 3e-3 are the first line's runs


def test_gpu_count_comes_from_the_config(planner):
    assert planner.expand("gpu.count=2")[0].gpus == 2
    assert planner.expand("gpu=cpu")[0].gpus == 0


@pytest.mark.parametrize("line, needle", [
    ("optim.lr=abc", "optim.lr"),
    ("trainer.nope=1", "trainer.nope"),
    ("model=nope", "cnn, mlp"),
    ("optim.lr=[1", "bad override"),
    ("trainer.max_epochs=0", ">= 1"),
])
def test_bad_sweep_is_one_line_error(planner, line, needle):
    with pytest.raises(ConfigError) as info:
        planner.expand(line)
    assert needle in info.value.one_line()


def test_command_line_sweep_string_is_normalized():
    s = workflow_settings({"sweep": "optim.lr=1e-3,3e-3 seed=range(2)", "common": "trainer=debug gpu=cpu"})
    assert s["sweep"] == ["optim.lr=1e-3,3e-3 seed=range(2)"] and s["common"] == ["trainer=debug", "gpu=cpu"]


def test_ten_thousand_runs_plan_fast(planner):
    import time

    lrs = ",".join(f"{i}e-4" for i in range(1, 11))
    wds = ",".join(f"0.{i}" for i in range(10))
    t0 = time.perf_counter()
    runs = planner.plan([f"optim.lr={lrs} optim.weight_decay={wds} seed=range(100)"])
    assert len(runs) == 10_000
    assert time.perf_counter() - t0 < 30  # generous here; benchmarks/dag_scale.py measures it
