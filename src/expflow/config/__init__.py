"""Hydra configs: schemas, composition, sweep expansion, validation.

The names below are imported on first use (PEP 562), so that the light submodules
(:mod:`~expflow.config.credentials`, :mod:`~expflow.config.numbers`, used by the
command line and the code snapshot) do not pull in Hydra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from expflow.config.compose import (
        CONFIG_NAME,
        compose_config,
        conf_dir,
        expand_sweep,
        new_run_id,
        resolve,
        setup,
        sweeper_params,
        validate_config,
    )
    from expflow.config.schema import register_configs

_WHERE = {
    "CONFIG_NAME": "compose",
    "compose_config": "compose",
    "conf_dir": "compose",
    "expand_sweep": "compose",
    "new_run_id": "compose",
    "resolve": "compose",
    "setup": "compose",
    "sweeper_params": "compose",
    "validate_config": "compose",
    "register_configs": "schema",
}

__all__ = [
    "CONFIG_NAME",
    "compose_config",
    "conf_dir",
    "expand_sweep",
    "new_run_id",
    "register_configs",
    "resolve",
    "setup",
    "sweeper_params",
    "validate_config",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"expflow.config.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
