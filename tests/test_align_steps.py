"""Step groups (seed 002): each group on its full step range, last non-null value per step,
missing steps back-filled, groups merged on the train step; equal to a per-metric pandas
implementation of the seed's approach on random runs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from expflow.align.steps import DEFAULT_STEP_GROUPS, align_steps, assign_groups

from .conftest import REPO

NAN = float("nan")


def points(rows: list[tuple[str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame({"metric": pd.Categorical([r[0] for r in rows]),
                         "row": np.array([r[1] for r in rows], dtype=np.int64),
                         "value": np.array([r[2] for r in rows], dtype=np.float64)})


def series(table: pd.DataFrame, metric: str) -> dict[int, float]:
    part = table[table["metric"] == metric]
    return dict(zip(part["step"].tolist(), part["value"].tolist(), strict=True))


def load_benchmark():
    spec = importlib.util.spec_from_file_location("align_scale", REPO / "benchmarks" / "align_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A SLIME-like history: one row counter (W&B's _step), three step keys.
HISTORY = points([
    ("train/step", 0, 0), ("train/loss", 0, 1.0),
    ("rollout/step", 1, 0), ("rollout/reward", 1, 10.0),
    ("train/step", 2, 1), ("train/loss", 2, 2.0),
    ("train/step", 3, 2),  # no loss at train step 2
    ("train/step", 4, 3), ("train/loss", 4, 4.0),
    ("train/loss", 5, 4.5),  # no step key in this row: the last one logged (3) applies
    ("rollout/step", 6, 3), ("rollout/reward", 6, 40.0),  # rollouts 1, 2 never logged
    ("train/step", 7, 4), ("train/loss", 7, 5.0), ("train/loss", 8, NAN),  # a null after a value
    ("eval/step", 9, 1), ("eval/acc", 9, 0.7),
    ("rollout/step", 10, 6), ("rollout/reward", 10, 60.0),  # beyond the train axis (0..4)
])


def test_groups_come_from_spec_then_source_then_seed_defaults():
    names = ["train/loss", "train/step", "rollout/reward", "rollout/step", "perf/x", "my/step", "other"]
    assert assign_groups(names) == {
        "train/loss": "train/step", "train/step": "train/step", "rollout/reward": "rollout/step",
        "rollout/step": "rollout/step", "perf/x": "rollout/step", "my/step": None, "other": None,
    }
    declared = {"perf/*": "my/step", "other": "my/step"}
    got = assign_groups(names, declared=declared, configured={"train/step": ["other"]})
    assert got["perf/x"] == "my/step" and got["other"] == "train/step"
    # a rule whose step key was never logged does not apply
    assert assign_groups(["eval/acc"]) == {"eval/acc": None}
    assert "train/*" in DEFAULT_STEP_GROUPS["train/step"]


def test_last_non_null_value_per_step_and_back_fill_on_the_train_axis():
    groups = assign_groups(HISTORY["metric"].cat.categories)
    out = align_steps(HISTORY, groups)
    # train axis 0..4; loss missing at 2 -> the next value (step 3's); step 3 logged twice -> 4.5
    assert series(out, "train/loss") == {0: 1.0, 1: 2.0, 2: 4.5, 3: 4.5, 4: 5.0}
    # rollout group: steps 1, 2 back-filled from 3; step 6 lies beyond the train axis (left join)
    assert series(out, "rollout/reward") == {0: 10.0, 1: 40.0, 2: 40.0, 3: 40.0, 4: 60.0}
    # eval group starts at its first step (1), not at 0: no step is invented before it
    assert series(out, "eval/acc") == {1: 0.7}


def test_fill_none_keeps_logged_steps_only():
    out = align_steps(HISTORY, assign_groups(HISTORY["metric"].cat.categories), fill="none")
    assert series(out, "train/loss") == {0: 1.0, 1: 2.0, 3: 4.5, 4: 5.0}
    assert series(out, "rollout/reward") == {0: 10.0, 3: 40.0}


def test_without_a_train_group_the_source_step_is_the_axis_and_wanted_filters():
    pts = points([("loss", 1, 1.0), ("loss", 3, 3.0), ("acc", 3, 0.5), ("acc", 9, 0.9)])
    out = align_steps(pts, {"loss": None, "acc": None}, wanted={"loss", "nope"})
    assert set(out["metric"].astype(str)) == {"loss"}
    assert series(out, "loss") == {1: 1.0, 2: 3.0, 3: 3.0}
    # acc starts at 3: nothing before its first logged step, though the axis starts at 1
    assert series(align_steps(pts, {"loss": None, "acc": None}), "acc") == {3: 0.5, 4: 0.9, 5: 0.9,
                                                                          6: 0.9, 7: 0.9, 8: 0.9, 9: 0.9}


def test_empty_and_all_null_inputs():
    assert align_steps(points([]), {}).empty
    assert align_steps(points([("a", 0, NAN)]), {"a": None}).empty


@pytest.mark.parametrize("seed", range(4))
def test_equals_a_per_metric_pandas_implementation_of_the_seed(seed):
    bench = load_benchmark()
    rng = np.random.default_rng(seed)
    pts = bench.make_run(rng, 3_000, 12)
    names = [str(n) for n in pts["metric"].cat.categories]
    groups = assign_groups(names)
    mapping = {n: f"aligned/{n}" for n in names if not n.endswith("/step")}
    fast = bench.expflow_align(pts, groups, mapping).astype({"metric": str})
    seed_table = bench.seed_align(pts, groups, mapping)
    key = ["metric", "step"]
    fast = fast.sort_values(key).reset_index(drop=True)
    seed_table = seed_table.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(fast, seed_table, check_exact=True)
