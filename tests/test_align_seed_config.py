"""Seed 002's own config.yaml, unchanged: ``platform`` + ``exp_id``/``run_path``, ``n_gpus``,
``output_file``, API keys under ``auth`` in ``secrets/config.yaml``. The cloud services are
stubbed at the API boundary (``swanlab.Api``, ``wandb.Api``); the result equals the
equivalent expflow spec's, which the command prints."""

from __future__ import annotations

import pandas as pd
import pytest

from expflow.align.pipeline import run_alignment
from expflow.align.spec import load_spec
from expflow.cli import main

SEED_CONFIG = """\
auth:
  swanlab_api_key: "{key}"
aligned_metrics:
  - "algorithm/reward"
  - "algorithm/policy_loss"
  - "infra/throughput"
frameworks:
  verl:
    enabled: true
    platform: "swanlab"
    exp_id: "7s7hg9w5tuwcf7jzvu5rg"
    output_file: "data/verl.csv"
    target_exp_name: "verl_experiment"
    mapping:
      "critic/score/mean": "algorithm/reward"
      "actor/pg_loss": "algorithm/policy_loss"
      "perf/throughput": "infra/throughput"
  roll:
    enabled: false
    platform: "swanlab"
    exp_id: "YOUR_EXP_ID"
    output_file: "data/roll.csv"
    target_exp_name: "roll_experiment"
    mapping: null
  slime:
    enabled: true
    platform: "wandb"
    run_path: "ent/slime-proj/run42"
    output_file: "data/slime.csv"
    target_exp_name: "slime_experiment"
    n_gpus: 8
    mapping:
      "rollout/raw_reward": "algorithm/reward"
      "train/pg_loss": "algorithm/policy_loss"
      "perf/throughput": "infra/throughput"
target:
  project: "framework-comparison"
"""

VERL_POINTS = {"critic/score/mean": [(s, 0.1 * s) for s in range(1, 6)],
               "actor/pg_loss": [(s, -0.2 * s) for s in range(1, 6)],
               "perf/throughput": [(s, 1000.0 + s) for s in range(1, 6)]}


class SwanLabExperiment:
    state, finished_at = "FINISHED", "2026-01-01"

    def summary(self):
        return {k: {} for k in VERL_POINTS}

    def metrics(self, keys, all):
        (key,) = keys
        return {"list": [{"key": key, "metrics": [{"step": s, "value": v} for s, v in VERL_POINTS[key]]}]}


class SwanLabApi:
    username = "me"
    seen: list = []

    def __init__(self, api_key=None, host=None):
        SwanLabApi.seen.append(api_key)

    def projects(self, user, all):
        return [type("P", (), {"path": "me/verl-runs"})()]

    def runs(self, path):
        return [type("E", (), {"run_id": "7s7hg9w5tuwcf7jzvu5rg"})()]

    def run(self, path):
        assert path == "me/verl-runs/7s7hg9w5tuwcf7jzvu5rg"
        return SwanLabExperiment()


class WandbRun:
    state, heartbeat_at, lastHistoryStep = "finished", "2026-01-01T00:00:00", 7
    history_keys = {"keys": {k: {} for k in ("train/step", "train/pg_loss", "rollout/step", "rollout/raw_reward",
                                             "perf/actor_train_tok_per_s", "perf/actor_train_time", "perf/step_time")}}
    rows = []
    for i in range(4):
        rows.append({"_step": 2 * i, "rollout/step": i, "rollout/raw_reward": 0.5 + i, "perf/actor_train_tok_per_s": 800.0 + i,
                     "perf/actor_train_time": 2.0, "perf/step_time": 4.0})
        rows.append({"_step": 2 * i + 1, "train/step": i, "train/pg_loss": -1.0 * i})

    def scan_history(self, keys, page_size):
        return [{k: r[k] for k in keys} for r in self.rows if all(k in r for k in keys)]


class WandbApi:
    def __init__(self, overrides=None, api_key=None):
        pass

    def run(self, path):
        assert path == "ent/slime-proj/run42"
        return WandbRun()


@pytest.fixture
def seed_dir(tmp_path, monkeypatch):
    import swanlab
    import wandb

    monkeypatch.setattr(swanlab, "Api", SwanLabApi)
    monkeypatch.setattr(wandb, "Api", WandbApi)
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab-root"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secrets").mkdir()
    key = "-".join(("seed", "key", "not", "real"))  # built at runtime: no key-like literal
    (tmp_path / "secrets" / "config.yaml").write_text(SEED_CONFIG.format(key=key))
    return tmp_path, key


def test_a_seed_002_config_runs_unchanged(seed_dir, capsys):
    root, key = seed_dir
    SwanLabApi.seen.clear()
    assert main(["align", "--out", "out", "--no-plots"]) == 0  # secrets/config.yaml, as the seed looks it up
    printed = capsys.readouterr().out
    assert "read as a seed 002 config; the equivalent expflow spec is:" in printed
    assert printed.count("equivalent expflow spec") == 1
    assert SwanLabApi.seen and set(SwanLabApi.seen) == {key}  # auth.swanlab_api_key from the secrets file
    table = pd.read_parquet(root / "out" / "aligned.parquet")
    t = {(str(r.framework), str(r.metric), int(r.step)): r.value for r in table.itertuples()}
    assert t[("verl", "algorithm/reward", 3)] == 0.1 * 3 and t[("verl", "infra/throughput", 5)] == 1005.0
    assert t[("slime", "algorithm/reward", 2)] == 2.5 and t[("slime", "algorithm/policy_loss", 3)] == -3.0
    # n_gpus: SLIME's throughput derived as the seed computes perf/throughput
    assert t[("slime", "infra/throughput", 1)] == 801.0 * 2.0 / (4.0 * 8)
    assert "roll" not in set(table["framework"].astype(str))  # enabled: false
    # output_file: the source cache next to where the seed kept its download
    assert (root / "data" / "verl.parquet").is_file() and (root / "data" / "slime.parquet").is_file()

    # the printed spec is an expflow spec that gives the same table
    equivalent = printed.split("the equivalent expflow spec is:\n", 1)[1].split("\n\n", 1)[0]  # YAML, then a blank line
    spec = root / "equivalent.yaml"
    spec.write_text(equivalent)
    assert "platform" not in equivalent and "kind: swanlab" in equivalent and "auth" not in equivalent
    again = run_alignment(load_spec(spec), root / "out2", plots=False, tracker=False)
    pd.testing.assert_frame_equal(again.table, table.astype({"framework": again.table["framework"].dtype,
                                                             "metric": again.table["metric"].dtype}))


def test_a_bad_seed_platform_is_one_line_with_the_valid_ones(seed_dir):
    root, _ = seed_dir
    cfg = root / "secrets" / "config.yaml"
    cfg.write_text(cfg.read_text().replace('platform: "wandb"', 'platform: "mlflow"'))
    from expflow.errors import AlignError

    with pytest.raises(AlignError, match=r"frameworks.slime.platform: 'mlflow' is not valid; valid: swanlab, wandb"):
        load_spec(cfg)
