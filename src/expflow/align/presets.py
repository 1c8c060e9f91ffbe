"""Metric-name presets for VERL, ROLL and SLIME: ``mapping: preset:verl``.

Each maps the names the framework really logs (read from its source) onto one aligned
vocabulary. A spec uses a preset as is, or overrides it key by key::

    mapping:
      _preset_: slime
      "train/entropy_loss": null                 # drop a preset entry
      "rollout/rewards": algorithm/reward        # replace the entry for algorithm/reward

Entries whose aligned name is not in the spec's ``aligned_metrics`` are unused. A file
``presets/<name>.yaml`` next to the spec (a mapping, or ``{mapping: {...}}``) adds a preset
or replaces a built-in one.

Throughput is not a plain rename for every framework: VERL logs tokens/s per GPU
(``perf/throughput``), ROLL's RLVR pipeline too (``system/tps_gpu``); SLIME's is derived
(``derived: {formula: slime_throughput}``); ROLL's agentic pipeline logs total tokens/s
(``system/tps``), so per GPU it is ``formula: per_gpu``. ROLL has two pipelines with
different names: ``roll-rlvr``, ``roll-agentic``, and ``roll`` for either.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

PRESET_KEY = "_preset_"

# Read from the repositories at these commits (file: what it logs):
#   volcengine/verl b178a3cd (2026-01-29), alibaba/ROLL 8eb27cc2 (2026-08-19),
#   THUDM/slime 624b824a (2026-08-21).
# A key starting with "re:" is a regular expression matched against the run's metric names
# (a name that depends on the data set); when several names match, the first in sorted
# order is used and the check notes the others. Several entries may give one aligned name:
# they are alternatives, the first one the run has is used.
_VERL: dict[str, str] = {
    # verl/trainer/ppo/metric_utils.py compute_data_metrics
    "critic/score/mean": "algorithm/reward",
    "critic/rewards/mean": "algorithm/shaped_reward",  # score + KL penalty (token_level_rewards)
    "critic/advantages/mean": "algorithm/advantage",
    "response_length/mean": "rollout/response_length",
    "response_length/clip_ratio": "rollout/truncated_ratio",
    # verl/trainer/ppo/ray_trainer.py _val_metrics_update: val-core/<source>/<acc|reward>/mean@N
    r"re:val-core/[^/]+/(acc|reward)/mean@\d+": "algorithm/eval_reward",
    # verl/workers/actor/dp_actor.py update_policy (pg_loss, kl_loss, entropy, grad_norm)
    "actor/pg_loss": "algorithm/policy_loss",
    "actor/entropy": "algorithm/entropy",  # also verl/trainer/ppo/ray_trainer.py (old log-prob pass)
    "actor/kl_loss": "algorithm/kl_loss",
    "actor/grad_norm": "algorithm/grad_norm",
    # verl/trainer/ppo/core_algos.py compute_policy_loss_* (ppo_kl, pg_clipfrac)
    "actor/ppo_kl": "algorithm/ppo_kl",
    "actor/pg_clipfrac": "algorithm/clip_fraction",
    # verl/workers/fsdp_workers.py update_actor
    "actor/lr": "algorithm/lr",
    # verl/trainer/ppo/metric_utils.py compute_throughout_metrics (per GPU), compute_timing_metrics
    "perf/throughput": "infra/throughput",
    "perf/time_per_step": "infra/step_time",
    "timing_s/step": "infra/step_time",  # the same time, from compute_timing_metrics
}
# ROLL logs "<name>@sum" / "@mean"; roll/utils/tracking.py _strip_metric_tag drops the tag.
_ROLL_COMMON: dict[str, str] = {
    # roll/distributed/strategy/{megatron,fsdp2}_strategy.py: f"{worker name}/grad_norm"
    "actor_train/grad_norm": "algorithm/grad_norm",
    "time/step_total": "infra/step_time",  # rlvr_pipeline.py, agentic_pipeline.py
}
_ROLL_RLVR: dict[str, str] = {
    # roll/utils/metrics/metrics_manager.py add_values_metrics (prefix "critic")
    "critic/score/mean": "algorithm/reward",
    "critic/rewards/mean": "algorithm/shaped_reward",
    "critic/entropy/mean": "algorithm/entropy",
    "critic/advantages/mean": "algorithm/advantage",
    # roll/pipeline/rlvr/rlvr_pipeline.py val()
    "val_correct/all/mean": "algorithm/eval_reward",
    # roll/pipeline/rlvr/actor_worker.py loss_func
    "actor/pg_loss": "algorithm/policy_loss",
    "actor/kl_loss": "algorithm/kl_loss",
    "actor/approxkl": "algorithm/ppo_kl",
    "actor/policykl": "algorithm/policy_kl",
    "actor/clipfrac": "algorithm/clip_fraction",
    # roll/utils/metrics/metrics_manager.py add_token_metrics (prefix "token"); its
    # total_response_length/clip is a count, not a ratio: no truncation entry
    "token/response_length/mean": "rollout/response_length",
    # roll/utils/metrics/metrics_manager.py add_system_metrics: tps / num_gpus
    "system/tps_gpu": "infra/throughput",
    **_ROLL_COMMON,
}
_ROLL_AGENTIC: dict[str, str] = {
    # roll/pipeline/agentic/agentic_pipeline.py compute_train_data_metrics
    "critic/score/mean": "algorithm/reward",
    "critic/rewards/mean": "algorithm/shaped_reward",
    "critic/advantages/mean": "algorithm/advantage",
    "tokens/response_length/mean": "rollout/response_length",
    # roll/pipeline/agentic/agentic_pipeline.py val: f"val/{k}" with score/mean
    "val/score/mean": "algorithm/eval_reward",
    # roll/pipeline/agentic/agentic_actor_worker.py loss_func
    "actor/pg_loss": "algorithm/policy_loss",
    "actor/kl_loss": "algorithm/kl_loss",
    "actor/approxkl": "algorithm/ppo_kl",
    "actor/policykl": "algorithm/policy_kl",
    "actor/clipfrac": "algorithm/clip_fraction",
    # system/tps (agentic_pipeline.py) is the total: derived {formula: per_gpu, column: system/tps}
    **_ROLL_COMMON,
}
_SLIME: dict[str, str] = {
    # slime/observability/train_metric_utils.py log_rollout_data: rollout data as rollout/*
    "rollout/raw_reward": "algorithm/reward",
    "rollout/advantages": "algorithm/advantage",
    # slime/observability/rollout_metrics.py log_eval_rollout_data: eval/<dataset> (mean reward)
    r"re:eval/(?!step$)(?![^/]*-pass@)[^/]+(?<!-truncated_ratio)": "algorithm/eval_reward",
    # slime/backends/megatron_utils/loss.py policy_loss_function (reported_loss), model.py train_one_step
    "train/pg_loss": "algorithm/policy_loss",
    "train/entropy_loss": "algorithm/entropy",
    "train/kl_loss": "algorithm/kl_loss",
    "train/ppo_kl": "algorithm/ppo_kl",
    "train/pg_clipfrac": "algorithm/clip_fraction",
    "train/grad_norm": "algorithm/grad_norm",  # slime/backends/megatron_utils/model.py
    "train/lr-pg_0": "algorithm/lr",  # model.py: f"train/lr-pg_{param_group_id}"
    # slime/observability/rollout_metrics.py compute_metrics_from_samples (rollout/ prefix)
    "rollout/response_len/mean": "rollout/response_length",
    "rollout/truncated_ratio": "rollout/truncated_ratio",
    # slime/observability/rollout_metrics.py compute_perf_metrics_from_samples (perf/ prefix)
    "perf/tokens_per_gpu_per_sec": "infra/rollout_throughput",
    # slime/observability/train_metric_utils.py log_perf_data (train_wait_time + train_time);
    # infra/throughput is derived: {formula: slime_throughput, n_gpus: N}
    "perf/step_time": "infra/step_time",
}

PRESETS: dict[str, dict[str, str]] = {
    "verl": _VERL,
    "roll-rlvr": _ROLL_RLVR,
    "roll-agentic": _ROLL_AGENTIC,
    # either pipeline: the names differ only where they are alternatives of one aligned name
    "roll": {**_ROLL_RLVR, **{k: v for k, v in _ROLL_AGENTIC.items() if k not in _ROLL_RLVR}},
    "slime": _SLIME,
}

PATTERN_PREFIX = "re:"


def resolve_preset(name: str, search: Iterable[Path] = ()) -> dict[str, str]:
    """The preset ``name``: a ``<dir>/<name>.yaml`` of ``search`` first, else a built-in.
    Raises KeyError with a one-line message when there is none."""
    for directory in search:
        path = Path(directory) / f"{name}.yaml"
        if path.is_file():
            return _load(path)
    if name in PRESETS:
        return dict(PRESETS[name])
    raise KeyError(f"unknown preset {name!r}; built-in: {', '.join(sorted(PRESETS))}")


def _load(path: Path) -> dict[str, str]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise KeyError(f"preset {path}: cannot read it ({type(e).__name__})") from None
    if isinstance(data, dict) and isinstance(data.get("mapping"), dict):
        data = data["mapping"]
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise KeyError(f"preset {path}: expected a mapping of metric names to aligned names")
    return dict(data)
