"""Alignment specs: the user-facing shape loads, presets apply key by key, and every bad
spec is one line naming the key; credentials only from the environment or secrets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from expflow.align.presets import PRESETS
from expflow.align.spec import load_spec
from expflow.errors import AlignError
from expflow.tracking.secrets import find_credential

from .conftest import CONF, assert_one_line_error, run_cli

ISSUE_EXAMPLE = """
aligned_metrics: [algorithm/reward, algorithm/policy_loss, infra/throughput]
frameworks:
  slime:
    enabled: true
    source: {kind: wandb-offline, path: runs/slime/wandb}
    mapping: {"rollout/raw_reward": "algorithm/reward", "train/pg_loss": "algorithm/policy_loss"}
    derived: {"infra/throughput": {formula: slime_throughput, n_gpus: 8}}
    target_exp_name: slime_experiment
target: {project: framework-comparison, mode: offline}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def spec_with(framework: str, aligned: str = "[algorithm/reward, algorithm/policy_loss, infra/throughput]",
              extra: str = "") -> str:
    return f"aligned_metrics: {aligned}\nframeworks:\n  fw:\n{textwrap.indent(textwrap.dedent(framework), '    ')}{extra}"


def test_the_issue_example_loads(tmp_path):
    plan = load_spec(write(tmp_path, ISSUE_EXAMPLE))
    (slime,) = plan.frameworks
    assert slime.target_exp_name == "slime_experiment" and slime.source.kind == "wandb-offline"
    assert slime.mapping["rollout/raw_reward"] == "algorithm/reward"
    assert slime.derived["infra/throughput"].n_gpus == 8
    assert plan.target.project == "framework-comparison" and plan.target.mode == "offline"
    assert "perf/actor_train_tok_per_s" in slime.wanted()


@pytest.mark.parametrize("spec", sorted(p.name for p in (CONF / "align").glob("*.yaml")))
def test_shipped_specs_load(spec):
    plan = load_spec(CONF / "align" / spec)
    assert plan.frameworks and plan.aligned_metrics


def test_presets_name_the_frameworks_real_metrics():
    assert PRESETS["slime"]["train/pg_loss"] == "algorithm/policy_loss"
    assert PRESETS["slime"]["rollout/raw_reward"] == "algorithm/reward"
    assert PRESETS["verl"]["actor/pg_loss"] == "algorithm/policy_loss"
    assert PRESETS["verl"]["critic/score/mean"] == "algorithm/reward"
    assert PRESETS["verl"]["perf/throughput"] == "infra/throughput"
    assert PRESETS["roll"]["actor_train/grad_norm"] == "algorithm/grad_norm"
    # issue 12: every preset covers reward, eval reward, policy loss, entropy (but ROLL's
    # agentic pipeline), KL, grad norm, response length, truncation (not ROLL: a count),
    # throughput (derived for SLIME and ROLL agentic) and step time
    wanted = {"algorithm/reward", "algorithm/eval_reward", "algorithm/policy_loss", "algorithm/entropy",
              "algorithm/kl_loss", "algorithm/grad_norm", "rollout/response_length", "rollout/truncated_ratio",
              "infra/throughput", "infra/step_time"}
    gaps = {"verl": set(), "slime": {"infra/throughput"}, "roll-rlvr": {"rollout/truncated_ratio"},
            "roll-agentic": {"rollout/truncated_ratio", "algorithm/entropy", "infra/throughput"},
            "roll": {"rollout/truncated_ratio"}}
    for name, preset in PRESETS.items():
        assert wanted - set(preset.values()) == gaps[name], name
    assert PRESETS["roll-rlvr"]["token/response_length/mean"] == "rollout/response_length"
    assert PRESETS["roll-agentic"]["tokens/response_length/mean"] == "rollout/response_length"
    assert PRESETS["roll-rlvr"]["system/tps_gpu"] == "infra/throughput" and "system/tps" not in PRESETS["roll"]


def test_preset_with_overrides_key_by_key(tmp_path):
    plan = load_spec(write(tmp_path, spec_with("""\
        source: {kind: csv, path: x.csv}
        mapping:
          _preset_: slime
          "rollout/rewards": algorithm/reward   # replaces the preset's entry for algorithm/reward
          "train/pg_loss": null                 # drops a preset entry
        """, aligned="[algorithm/reward, algorithm/policy_loss, algorithm/grad_norm]")))
    m = plan.frameworks[0].mapping
    assert m["rollout/rewards"] == "algorithm/reward" and "rollout/raw_reward" not in m
    assert "train/pg_loss" not in m and m["algorithm/policy_loss"] == "algorithm/policy_loss"  # identity
    assert m["train/grad_norm"] == "algorithm/grad_norm"
    assert "train/entropy_loss" not in m  # not in aligned_metrics: unused


def test_string_preset_null_mapping_and_user_preset_file(tmp_path):
    plan = load_spec(write(tmp_path, spec_with("source: {kind: csv, path: x.csv}\nmapping: preset:verl\n")))
    assert plan.frameworks[0].mapping["critic/score/mean"] == "algorithm/reward"
    plan = load_spec(write(tmp_path, spec_with("source: {kind: csv, path: x.csv}\nmapping: null\n")))
    assert plan.frameworks[0].mapping == {m: m for m in plan.aligned_metrics}
    write(tmp_path, "mapping: {score: algorithm/reward}\n", "presets/mine.yaml")
    plan = load_spec(write(tmp_path, spec_with("source: {kind: csv, path: x.csv}\nmapping: preset:mine\n")))
    assert plan.frameworks[0].mapping["score"] == "algorithm/reward"


def test_disabled_frameworks_are_skipped_and_overrides_apply(tmp_path):
    text = spec_with("source: {kind: csv, path: x.csv}\n") + "  other:\n    enabled: false\n"  # seed 002 style
    plan = load_spec(write(tmp_path, text), ["frameworks.fw.target_exp_name=renamed"])
    assert [f.name for f in plan.frameworks] == ["fw"] and plan.disabled == ("other",)
    assert plan.frameworks[0].target_exp_name == "renamed"


@pytest.mark.parametrize(
    "framework, extra, needles",
    [
        ("source: {kind: csv, path: x.csv}\nmapping: {a: algorithm/nope}\n", "", ["mapping['a']", "'algorithm/nope'", "aligned_metrics"]),
        ("source: {kind: parquet, path: x}\n", "", ["frameworks.fw.source.kind", "'parquet'", "wandb-offline"]),
        ("source: {kind: csv, pth: x}\n", "", ["'frameworks.fw.source.pth'", "valid keys", "path"]),
        ("source: {kind: csv, path: x}\nmappings: {}\n", "", ["'frameworks.fw.mappings'", "mapping"]),
        ("source: {kind: csv, path: x}\nenabled: maybe\n", "", ["frameworks.fw.enabled", "bool"]),
        ("source: {kind: wandb-offline}\n", "", ["frameworks.fw.source.path", "required"]),
        ("source: {kind: wandb}\n", "", ["frameworks.fw.source.run_path", "required"]),
        ("source: {kind: wandb-offline, path: x, id: abc}\n", "", ["frameworks.fw.source.id", "not used"]),
        ("source: {kind: csv, path: x}\nderived: {infra/throughput: {formula: magic}}\n", "", ["formula", "'magic'", "slime_throughput"]),
        ("source: {kind: csv, path: x}\nderived: {infra/throughput: {formula: slime_throughput, n_gpus: eight}}\n", "",
         ["frameworks.fw.derived.infra/throughput.n_gpus"]),
        ("source: {kind: csv, path: x}\nderived: {infra/throughput: {formula: slime_throughput, n_gpus: 0}}\n", "", ["n_gpus", ">= 1"]),
        ("source: {kind: csv, path: x}\nderived: {perf/tp: {formula: per_gpu, column: c, n_gpus: 2}}\n", "", ["derived.perf/tp", "aligned_metrics"]),
        ("source: {kind: csv, path: x}\nmapping: {a: algorithm/reward, b: algorithm/reward}\n", "", ["'a', 'b'", "algorithm/reward"]),
        ("source: {kind: csv, path: x}\nmapping: preset:nope\n", "", ["unknown preset 'nope'", "roll, roll-agentic, roll-rlvr, slime, verl"]),
        ("source: {kind: csv, path: x}\nmapping: verl\n", "", ["mapping", "preset:<name>"]),
        ("source: {kind: csv, path: x}\nfill: ffill\n", "", ["fill", "bfill, none"]),
        ("source: {kind: csv, path: x}\n", "target: {mode: online}\n", ["target.mode", "cloud, local, offline, disabled"]),
        ("source: {kind: csv, path: x}\n", "auth: {swanlab_api_key: k}\n", ["auth", "secrets/config.yaml"]),
        ("enabled: false\nsource: {kind: csv, path: x}\n", "", ["every framework is disabled"]),
        ("mapping: null\n", "", ["frameworks.fw.source", "required"]),
    ],
)
def test_bad_spec_is_one_line_naming_the_key(tmp_path, framework, extra, needles):
    path = write(tmp_path, spec_with(framework, extra=extra))
    with pytest.raises(AlignError) as info:
        load_spec(path)
    msg = info.value.one_line()
    assert str(path) in msg
    for n in needles:
        assert n in msg, msg


def test_missing_spec_and_bad_yaml(tmp_path):
    with pytest.raises(AlignError, match="no such alignment spec"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(AlignError, match="a directory, expected an alignment spec"):
        load_spec(tmp_path)
    with pytest.raises(AlignError, match="cannot read the spec"):
        load_spec(write(tmp_path, "aligned_metrics: [a\n"))
    with pytest.raises(AlignError, match="aligned_metrics: required"):
        load_spec(write(tmp_path, "frameworks: {}\n"))


def test_credentials_come_from_env_then_secrets_then_config(tmp_path, monkeypatch):
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert find_credential("swanlab") is None
    write(tmp_path, "auth: {swanlab_api_key: from-config}\n", "config.yaml")
    assert find_credential("swanlab").origin == "config.yaml"
    write(tmp_path, "auth: {swanlab_api_key: from-secrets}\n", "secrets/config.yaml")
    cred = find_credential("swanlab")
    assert cred.value == "from-secrets" and "from-secrets" not in repr(cred)
    monkeypatch.setenv("SWANLAB_API_KEY", "from-env")
    assert find_credential("swanlab").value == "from-env"


def test_seed_style_secrets_file_may_hold_auth_and_is_the_default_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, ISSUE_EXAMPLE + "auth: {swanlab_api_key: k}\n", "secrets/config.yaml")
    from expflow.align.spec import find_spec

    found = find_spec()
    assert found == tmp_path / "secrets" / "config.yaml"
    assert load_spec(found).frameworks[0].name == "slime"


def test_cli_bad_spec_is_one_line(tmp_path):
    path = write(tmp_path, spec_with("source: {kind: csv, path: x}\nmapping: {a: algorithm/nope}\n"))
    proc = run_cli("align", str(path), "--out", str(tmp_path / "out"), timeout=120)
    assert_one_line_error(proc, str(path), "algorithm/nope")
    assert not (tmp_path / "out").exists()
