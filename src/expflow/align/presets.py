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
(``perf/throughput``); SLIME's is derived (``derived: {formula: slime_throughput}``);
ROLL logs total tokens/s (``system/tps``), so per GPU it is ``formula: per_gpu``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

PRESET_KEY = "_preset_"

PRESETS: dict[str, dict[str, str]] = {
    # volcengine/verl: verl/trainer/ppo/metric_utils.py (compute_data_metrics,
    # compute_timing_metrics, compute_throughout_metrics), verl/workers/actor/dp_actor.py.
    # Logged with step=global_steps, from 1.
    "verl": {
        "critic/score/mean": "algorithm/reward",
        "actor/pg_loss": "algorithm/policy_loss",
        "actor/entropy": "algorithm/entropy",
        "actor/kl_loss": "algorithm/kl_loss",
        "actor/ppo_kl": "algorithm/ppo_kl",
        "actor/pg_clipfrac": "algorithm/clip_fraction",
        "actor/grad_norm": "algorithm/grad_norm",
        "actor/lr": "algorithm/lr",
        "critic/advantages/mean": "algorithm/advantage",
        "response_length/mean": "rollout/response_length",
        "response_length/clip_ratio": "rollout/truncated_ratio",
        "perf/throughput": "infra/throughput",
        "timing_s/step": "infra/step_time",
    },
    # alibaba/ROLL: roll/pipeline/base_worker.py (ActorWorker.loss_func, train_step),
    # roll/distributed/strategy/*_strategy.py ("<worker>/grad_norm", worker actor_train),
    # compute_data_metrics, rlvr_pipeline.py ("time/step_total", "system/tps").
    # Logged with step=global_step, from 0.
    "roll": {
        "critic/score/mean": "algorithm/reward",
        "actor/pg_loss": "algorithm/policy_loss",
        "actor/kl_loss": "algorithm/kl_loss",
        "actor/clipfrac": "algorithm/clip_fraction",
        "actor_train/grad_norm": "algorithm/grad_norm",
        "actor/lr": "algorithm/lr",
        "critic/advantages/mean": "algorithm/advantage",
        "tokens/response_length/mean": "rollout/response_length",
        "time/step_total": "infra/step_time",
    },
    # THUDM/slime: slime/backends/megatron_utils/model.py (train/*, step key train/step),
    # slime/utils/wandb_utils.py (define_metric groups), rollout logging (rollout/*, step key
    # rollout/step), train_metric_utils.py (perf/*, step key rollout/step).
    "slime": {
        "rollout/raw_reward": "algorithm/reward",
        "train/pg_loss": "algorithm/policy_loss",
        "train/entropy_loss": "algorithm/entropy",
        "train/kl_loss": "algorithm/kl_loss",
        "train/ppo_kl": "algorithm/ppo_kl",
        "train/pg_clipfrac": "algorithm/clip_fraction",
        "train/grad_norm": "algorithm/grad_norm",
        "train/lr-pg_0": "algorithm/lr",
        "rollout/advantages": "algorithm/advantage",
        "rollout/response_lengths": "rollout/response_length",
        "rollout/truncated": "rollout/truncated_ratio",
        "perf/step_time": "infra/step_time",
    },
}


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
