"""Seed 002's own ``config.yaml`` (``secrets/config.yaml``), read as it is.

The seed names a framework's source by ``platform`` plus ``exp_id`` (SwanLab) or
``run_path`` (W&B), keeps its download in ``output_file`` and takes ``n_gpus`` for SLIME's
throughput. Each has an expflow equivalent::

    platform: swanlab, exp_id: X   ->  source: {kind: swanlab, id: X}
    platform: wandb, run_path: P   ->  source: {kind: wandb, run_path: P}
    output_file: data/verl.csv     ->  cache_file: data/verl.parquet   (the source cache)
    n_gpus: 8                      ->  derived: {perf/throughput: {formula: slime_throughput, n_gpus: 8}}
                                       (when perf/throughput is mapped or aligned, as the seed uses it)

:func:`translate` rewrites such a file into the expflow spec and returns that spec as YAML,
which the CLI prints once, so a seed user sees what to write instead.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from expflow.errors import AlignError

SEED_KEYS = ("platform", "exp_id", "run_path", "output_file", "n_gpus")
PLATFORMS = {"swanlab": "swanlab", "wandb": "wandb"}
SEED_THROUGHPUT = "perf/throughput"  # the column seed 002 computes for SLIME


def is_seed_config(raw: DictConfig) -> bool:
    frameworks = raw.get("frameworks")
    if not isinstance(frameworks, DictConfig):
        return False
    return any(isinstance(fw, DictConfig) and any(k in fw for k in SEED_KEYS) for fw in frameworks.values())


def translate(raw: DictConfig, where: str) -> tuple[DictConfig, str | None]:
    """(the spec in expflow's shape, its YAML when ``raw`` was in seed 002's dialect, else None)."""
    if not is_seed_config(raw):
        return raw, None
    data: dict[str, Any] = OmegaConf.to_container(raw, resolve=True)  # type: ignore[assignment]
    aligned = list(data.get("aligned_metrics") or [])
    for name, fw in (data.get("frameworks") or {}).items():
        if not isinstance(fw, dict) or not any(k in fw for k in SEED_KEYS):
            continue
        key = f"frameworks.{name}"
        platform = fw.pop("platform", None)
        exp_id, run_path = fw.pop("exp_id", None), fw.pop("run_path", None)
        output_file, n_gpus = fw.pop("output_file", None), fw.pop("n_gpus", None)
        if "source" in fw and (platform or exp_id or run_path):
            raise AlignError(f"{where}: {key}: give either source or seed 002's platform/exp_id/run_path, not both")
        if platform is not None or exp_id is not None or run_path is not None:
            fw["source"] = _source(where, key, platform, exp_id, run_path)
        if output_file:
            fw["cache_file"] = _cache_file(str(output_file))
        if n_gpus is not None:
            mapping = fw.get("mapping") or {}
            used = SEED_THROUGHPUT in aligned or (isinstance(mapping, dict) and SEED_THROUGHPUT in mapping)
            if used:
                derived = fw.setdefault("derived", {}) or {}
                derived.setdefault(SEED_THROUGHPUT, {"formula": "slime_throughput", "n_gpus": n_gpus})
                fw["derived"] = derived
    spec = OmegaConf.create(data)
    text = OmegaConf.to_yaml(spec)
    return spec, text


def _source(where: str, key: str, platform: Any, exp_id: Any, run_path: Any) -> dict[str, Any]:
    if platform is None:
        platform = "swanlab" if exp_id is not None else "wandb"
    if platform not in PLATFORMS:
        raise AlignError(f"{where}: {key}.platform: {platform!r} is not valid; valid: {', '.join(PLATFORMS)} "
                         "(or an expflow source: {kind: ..., path: ...})")
    if platform == "swanlab":
        if not exp_id:
            raise AlignError(f"{where}: {key}.exp_id: required with platform: swanlab")
        return {"kind": "swanlab", "id": str(exp_id)}
    if not run_path:
        raise AlignError(f"{where}: {key}.run_path: required with platform: wandb (entity/project/run_id)")
    return {"kind": "wandb", "run_path": str(run_path)}


def _cache_file(output_file: str) -> str:
    """The seed downloads into ``output_file`` (a CSV); expflow's cache of the same source
    is a Parquet file next to it."""
    stem, dot, ext = output_file.rpartition(".")
    return f"{stem}.parquet" if dot and "/" not in ext else f"{output_file}.parquet"

