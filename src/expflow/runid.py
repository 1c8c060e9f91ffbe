"""Run ids and the planned runs: a run's id is a hash of its composed, unresolved config.

Light on purpose (no Hydra, no OmegaConf): the workflow loads its kept plan with these
alone, and the planner (:mod:`expflow.planning`) and ``expflow materialize`` compute ids
with the same function.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# ``objective`` only names the metric `python -m expflow.train` returns to a sweeper.
ID_EXCLUDED_KEYS = ("run_id", "paths", "hydra", "objective")


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    overrides: tuple[str, ...]
    gpus: int
    gpu_mem_mb: int
    # Filled in only when the workflow packs its runs (a duration is known): the id of the
    # run's config without its seed (runs differing only in seed share it), and the value
    # of the config key named by ``train.estimate``.
    family: str = ""
    estimate: float | None = None
    nodes: int = 1  # trainer.nodes: the nodes of the run's train job (a Slurm allocation)

    @property
    def override_line(self) -> str:
        return " ".join(shlex.quote(o) for o in self.overrides)


def config_hash(config: dict[str, Any], exclude: Sequence[str] = ()) -> str:
    """The sha256 of a config (canonical JSON) without what names or places the run
    (``ID_EXCLUDED_KEYS``) and the keys in ``exclude``: the one way expflow hashes a config,
    unresolved for run ids, resolved for a package's config fingerprint."""
    body = {k: v for k, v in config.items() if k not in ID_EXCLUDED_KEYS and k not in exclude}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def config_id(plain: dict[str, Any], exclude: Sequence[str] = ()) -> str:
    """The run id of an unresolved config: a hash of everything but the run's name and place
    (and the keys in ``exclude``: ``("seed",)`` gives the id of the run's family)."""
    return config_hash(plain, exclude)[:12]


def number_at(plain: dict[str, Any], dotted: str) -> float | None:
    """The number at ``dotted`` in an unresolved config; None when absent or not a number
    (an interpolation, a string)."""
    node: Any = plain
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    return float(node)
