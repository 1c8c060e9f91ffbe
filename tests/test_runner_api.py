"""The Runner API: a runner of one's own trains, records, checkpoints and continues like the
supervised one, with batches of any structure."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from expflow.package import SavePackage, Status, effective_metrics
from expflow.runner import RunContext, Runner

from .conftest import REPO, assert_one_line_error, run_cli, small_overrides

# The runner's module is in tests/: the snapshot takes it, so continue imports it from there.
TOY = ["runner._target_=tests.toy_runner.TwoNetRunner", "code.include=[src/**/*.py,conf/**/*.yaml,tests/*.py]", "trainer.max_epochs=4", "trainer.log_every_n_steps=2",
       "lifecycle.hold_best=val/loss", "lifecycle.hold_mode=min"]


def train(runs, *extra, env=None):
    return run_cli(*small_overrides(runs, *TOY, *extra), module="expflow.train", env=env)


def records(pkg: SavePackage) -> list[tuple[int, dict]]:
    return [(r["step"], r["values"]) for r in effective_metrics(pkg.scan_records().records)]


def test_context_helpers_move_any_batch_and_shard_data():
    from dataclasses import dataclass
    from typing import NamedTuple

    @dataclass
    class B:
        x: torch.Tensor
        meta: str

    class NT(NamedTuple):
        a: torch.Tensor
        b: list

    ctx = RunContext(cfg=None, device=torch.device("cpu"), rank=1, world_size=2, seed=3)  # type: ignore[arg-type]
    moved = ctx.to_device({"a": (torch.ones(1), [torch.zeros(2)]), "b": B(torch.ones(3), "m"),
                           "c": NT(torch.ones(1), [1])})
    assert isinstance(moved["b"], B) and moved["b"].meta == "m" and isinstance(moved["c"], NT)
    val = ctx.loader(list(range(10)), batch_size=10, shuffle=False)
    assert next(iter(val)).tolist() == [1, 3, 5, 7, 9]  # every world_size-th sample, no padding
    train = ctx.loader(list(range(10)), batch_size=10, shuffle=True)
    ctx.set_epoch(0)
    first = next(iter(train)).tolist()
    ctx.set_epoch(1)
    assert next(iter(train)).tolist() != first and len(first) == 5
    assert ctx.all_reduce(torch.tensor(4.0)).item() == 2.0  # not distributed: 4 / world_size... over 1 process
    with pytest.raises(ValueError, match="valid: mean, sum"):
        ctx.all_reduce(1.0, op="max")


def test_base_runner_saves_every_module_and_optimizer_by_name():
    class R(Runner):
        def build(self, ctx):
            self.net = torch.nn.Linear(2, 2)
            self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)
            self._private = torch.nn.Linear(1, 1)

    r = R()
    r.build(None)
    state = r.state_dict()
    assert sorted(state) == ["net", "opt"]
    other = R()
    other.build(None)
    other.load_state_dict(state)
    assert torch.equal(other.net.weight, r.net.weight)
    with pytest.raises(TypeError, match="takes no parameters"):
        R(lr=1)


@pytest.mark.slow
def test_own_runner_trains_records_and_continues_identically(tmp_path):
    runs = tmp_path / "runs"
    full = train(runs, "run_id=full")
    assert full.returncode == 0, full.stderr[-2000:]
    pkg = SavePackage.open(runs / "full")
    assert pkg.status() is Status.COMPLETED
    got = records(pkg)
    steps_per_epoch = 96 // 16
    step_records = [(s, v) for s, v in got if "train/loss" in v]
    assert [s for s, _ in step_records] == list(range(2, 4 * steps_per_epoch + 1, 2))
    assert {r["values"]["train/seen"] for r in effective_metrics(pkg.scan_records().records)
            if "train/seen" in r["values"]} == {16.0 * s for s, _ in step_records}
    # expflow.log inside train_step records at the step being taken (state.step counts the steps before it)
    assert [s for s, v in got if "toy/seen" in v] == list(range(1, 4 * steps_per_epoch + 1, 3))
    assert [s for s, v in got if "val/loss" in v] == [steps_per_epoch * e for e in range(1, 5)]
    assert (pkg.path / "outputs" / "toy" / "epoch4.txt").read_text() == f"{16 * 4 * steps_per_epoch}\n"
    ck = pkg.checkpoints().load(pkg.checkpoints().latest())
    assert ck["format"] == 2 and sorted(ck["runner"]) == ["encoder", "head", "opt_enc", "opt_head", "seen"]

    crashed = train(runs, "run_id=crashed", "+runner.crash_at_epoch=3", env={"TOY_CRASH": "1"})
    assert crashed.returncode != 0 and "deliberate crash at epoch 3" in crashed.stderr
    pkg2 = SavePackage.open(runs / "crashed")
    assert pkg2.status() is Status.CRASHED
    cont = run_cli("continue", str(pkg2.path))
    assert cont.returncode == 0, cont.stderr[-2000:]
    assert pkg2.status() is Status.COMPLETED
    # Everything but the crash knob is equal: the continued run took exactly the same steps.
    assert records(pkg2) == got


def test_bad_runners_are_one_line(tmp_path):
    runs = tmp_path / "runs"
    missing = run_cli(*small_overrides(runs, "runner._target_=tests.toy_runner.Nope"), module="expflow.train")
    assert_one_line_error(missing, "runner", "tests.toy_runner.Nope")
    no_step = run_cli(*small_overrides(runs, "runner._target_=tests.toy_runner.NoStep"), module="expflow.train")
    assert_one_line_error(no_step, "runner", "train_step")


def test_supervised_runner_without_a_model_says_so(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "expflow.train", *small_overrides(tmp_path / "runs", "~model")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "model", "supervised runner")
