"""Hydra configs: schemas, composition, sweep expansion, validation."""

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
