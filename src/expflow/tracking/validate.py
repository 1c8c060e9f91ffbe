"""Tracker config checks, in the spirit of Axolotl's SwanLab plugin: every problem is
one clear line. Errors (no project, an empty or invalid one, an unknown mode) raise
ConfigError; doubtful choices (cloud mode without an API key, local mode without the
dashboard, several trackers at once) print one warning line each."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from typing import Any

from expflow.errors import ConfigError
from expflow.tracking.modes import DEFAULT_MODE, check_mode

KINDS = {"SwanLabTracker": "SwanLab", "MlflowTracker": "MLflow"}
# SwanLab's own rule for project names (swanlab.sdk.internal.pkg.constraints.ProjectName).
SWANLAB_PROJECT = re.compile(r"^[0-9a-zA-Z_\-+.]{1,100}$")
_printed: set[str] = set()


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True, enum_to_str=True) if isinstance(node, DictConfig) else node


def tracker_nodes(node: Any, key: str = "tracker") -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(config key, kind, node) of every SwanLab/MLflow tracker in ``node`` (multi included)."""
    node = _plain(node)
    if not isinstance(node, dict):
        return
    target = str(node.get("_target_", ""))
    cls = target.rpartition(".")[2]
    if cls == "MultiTracker":
        for name, child in (node.get("trackers") or {}).items():
            yield from tracker_nodes(child, f"{key}.trackers.{name}")
    elif cls in KINDS:
        yield key, KINDS[cls], node


def secret_keys(node: Any, key: str = "tracker") -> Iterator[str]:
    """Config keys under ``node`` that are credential-named and carry a value (see
    :mod:`expflow.config.credentials`; the values are never shown). The whole config
    gets the same check in :func:`expflow.config.validate_config`."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from expflow.config.credentials import credential_keys

    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False, enum_to_str=True)  # an interpolation resolves into the package
    yield from credential_keys(node, key)


def check_tracker(node: Any) -> list[str]:
    """Raise ConfigError on the first invalid tracker setting; return the warnings."""
    from expflow.config.credentials import refusal

    for key in secret_keys(node):
        raise ConfigError(refusal(key))
    warnings: list[str] = []
    enabled: list[str] = []
    for key, kind, t in tracker_nodes(node):
        mode = t.get("mode", DEFAULT_MODE[kind])
        check_mode(kind, mode, f"{key}.mode")
        if mode == "disabled":
            continue
        enabled.append(kind)
        project = t.get("project")
        if project is None:
            raise ConfigError(
                f"{key}.project: {kind} is enabled (mode {mode}) but no project is set; "
                f"set {key}.project=<name>, or {key}.mode=disabled"
            )
        if not str(project).strip():
            raise ConfigError(f"{key}.project: cannot be an empty string; set a name, or {key}.mode=disabled")
        if kind == "SwanLab" and not SWANLAB_PROJECT.match(str(project)):
            raise ConfigError(
                f"{key}.project: {project!r} is not a valid SwanLab project name; "
                "valid: 1-100 of letters, digits, '_', '-', '+', '.'"
            )
        if kind == "SwanLab" and mode == "cloud" and not _has_swanlab_login():
            warnings.append(
                f"{key}.mode=cloud but no SwanLab API key was found; fixes: export SWANLAB_API_KEY=<key>, "
                "or put the key in secrets/swanlab_api_key (ignored by git; $EXPFLOW_SECRETS_DIR moves it), "
                f"or run `swanlab login`, or use {key}.mode=offline and `expflow sync --target swanlab` later"
            )
        if kind == "SwanLab" and mode == "local" and importlib.util.find_spec("swanboard") is None:
            warnings.append(
                f"{key}.mode=local but SwanLab's dashboard is not installed: the logs are written as in "
                "offline mode; install it with pip install 'swanlab[dashboard]' (it pins rich 13.9) "
                "to view them with `swanlab watch`"
            )
    if len(enabled) > 1:
        warnings.append(
            f"{len(enabled)} trackers enabled at once ({', '.join(enabled)}): each adds its own cost to every "
            "metric logged on the training thread (swanlab.log takes ~20 us a call, 4x expflow's own record "
            "write, see benchmarks/log_overhead.py; typically 1-2% step time per tracker); keep one, or none "
            "and `expflow sync` the package afterwards"
        )
    return warnings


def _has_swanlab_login() -> bool:
    """An API key in the environment, the secrets file, or swanlab's own stored login."""
    from expflow.tracking.secrets import find_api_key

    if find_api_key("swanlab"):
        return True
    import os
    from pathlib import Path

    roots = [os.environ.get("SWANLAB_ROOT") or os.environ.get("SWANLAB_SAVE_DIR") or Path.home() / ".swanlab",
             Path.cwd() / ".swanlab"]
    return any((Path(r) / ".netrc").is_file() for r in roots)


def check_tracker_config(cfg: Any) -> None:
    """Validate ``cfg.tracker``; print each warning once per process, one line each."""
    from omegaconf import OmegaConf

    for warning in check_tracker(OmegaConf.select(cfg, "tracker", default=None)):
        if warning not in _printed:
            _printed.add(warning)
            print(f"expflow: warning: {warning}", file=sys.stderr, flush=True)
