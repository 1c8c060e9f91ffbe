"""Composing configs with Hydra, expanding sweeps with Hydra's own parser, and turning
Hydra/OmegaConf errors into one line that names the key and what is valid."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from expflow.config import placeholders
from expflow.config.checks import check_credentials, check_known_keys, check_numbers, short
from expflow.config.choices import describe_invalid
from expflow.config.schema import register_configs
from expflow.errors import ConfigError

CONFIG_NAME = "config"
CONFIG_DIR_ENV = "EXPFLOW_CONFIG_DIR"


def new_run_id() -> str:
    return f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def register_resolvers() -> None:
    # Not cached: Hydra deep-copies the sweep's master config (cache included) into each
    # job. The package directory Hydra makes fixes the id; train() pins run_id to it.
    OmegaConf.register_new_resolver("expflow_run_id", new_run_id, use_cache=False, replace=True)
    placeholders.register()  # ${expflow:checkpoint} and co. stay as written until launch


def setup() -> None:
    register_configs()
    register_resolvers()


def conf_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The project's config directory: explicit, ``$EXPFLOW_CONFIG_DIR``, or ``./conf``."""
    chosen = explicit or os.environ.get(CONFIG_DIR_ENV) or "conf"
    path = Path(chosen).resolve()
    if not (path / f"{CONFIG_NAME}.yaml").is_file():
        raise ConfigError(
            f"no config at {path}/{CONFIG_NAME}.yaml: run from a project root with conf/, "
            f"or set {CONFIG_DIR_ENV}"
        )
    return path


def compose_config(
    overrides: Sequence[str] = (),
    *,
    config_dir: str | os.PathLike[str] | None = None,
    config_name: str = CONFIG_NAME,
    return_hydra_config: bool = False,
) -> DictConfig:
    """Compose the project's config with ``overrides``; errors become ConfigError."""
    setup()
    directory = conf_dir(config_dir)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException, ValueError, OverflowError) as e:
        raise ConfigError(explain(e, directory, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    # A '+key=value' force-adds even into a schema's node: the same unknown key as without '+'.
    check_credentials(cfg)
    check_known_keys(cfg, overrides)
    return cfg


# -- sweeps ----------------------------------------------------------------------
def sweeper_params(cfg: DictConfig) -> dict[str, str]:
    """``hydra.sweeper.params`` of a config composed with its hydra node."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    if not params:
        return {}
    return {str(k): str(v) for k, v in params.items()}


def expand_sweep(overrides: Sequence[str], params: dict[str, str] | None = None) -> list[list[str]]:
    """All override lists of a sweep, in Hydra's BasicSweeper order.

    ``overrides`` are command-line overrides (Hydra sweep syntax: ``a=1,2``,
    ``seed=range(3)``); ``params`` are ``hydra.sweeper.params`` from the config,
    which command-line overrides of the same key replace.
    """
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(list(overrides))
        keys = {o.key_or_group for o in parsed}
        extra = [f"{k}={v}" for k, v in (params or {}).items() if k not in keys]
        parsed = parser.parse_overrides(extra) + parsed
    except OverrideParseException as e:
        raise ConfigError(f"bad override: {_first_line(str(e))}") from None
    axes: list[list[str]] = []
    for o in parsed:
        if o.is_sweep_override():
            if o.is_interval_sweep():
                raise ConfigError(
                    f"override {o.input_line!r}: interval sweeps need an optimizing sweeper; "
                    "use a list (a=1,2) or range(...)"
                )
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    combos: list[list[str]] = [[]]
    for axis in axes:
        combos = [c + [v] for c in combos for v in axis]
    return combos


# -- validation ------------------------------------------------------------------
def validate_config(cfg: DictConfig, overrides: Sequence[str] = (), only: str | None = None) -> None:
    """Checks no schema type can express (see :mod:`expflow.config.checks`): no
    credentials, no key a schema lacks, finite numbers in range, the tracker's settings, and a code snapshot that would take no credentials.

    ``only``: check the subtree of that top-level key alone (the workflow's planner, for a
    value override of a config it checked whole; the package job checks the whole config).
    """
    check_credentials(cfg, only)
    check_known_keys(cfg, overrides, only)
    check_numbers(cfg, overrides, only)
    from expflow.tracking.validate import check_tracker_config

    if only in (None, "tracker"):
        check_tracker_config(cfg)
    if only in (None, "code", "paths"):
        check_code_sources(cfg)


_vetted: set[tuple[Any, ...]] = set()  # code trees this process found clean


def check_code_sources(cfg: DictConfig) -> None:
    """Refuse, before any package is made, a code snapshot that would take a config file
    carrying a credential. Each tree is looked at once per process here (a sweep or a
    workflow plan validates many configs of one tree); the snapshot itself checks again."""
    from expflow.package.codestore import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, check_sources

    try:
        code = OmegaConf.to_container(cfg.code, resolve=True, enum_to_str=True)
        paths = OmegaConf.to_container(cfg.paths, resolve=True, enum_to_str=True)
    except Exception:  # no code node, or one that cannot resolve here: the snapshot checks
        return
    if not isinstance(code, dict) or not isinstance(paths, dict):
        return
    root = Path(str(code.get("root") or ".")).resolve()
    if not root.is_dir():
        return  # the snapshot reports it
    include = tuple(code.get("include") or DEFAULT_INCLUDE)
    exclude = tuple(code.get("exclude") or DEFAULT_EXCLUDE)
    skip = tuple(Path(str(p)).resolve() for p in (paths.get("runs"), paths.get("store")) if p)
    key = (root, include, exclude, skip, os.environ.get("EXPFLOW_SECRETS_DIR"))
    if key in _vetted:
        return
    check_sources(root, include, exclude, skip_dirs=skip)
    _vetted.add(key)


# -- errors ----------------------------------------------------------------------
def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return str(text).strip()


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def _valid_keys(directory: Path, parent: str) -> list[str]:
    try:
        with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
            cfg = compose(CONFIG_NAME)
    except Exception:
        return []
    finally:
        GlobalHydra.instance().clear()
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []


def explain(exc: BaseException, directory: Path, overrides: Sequence[str] = ()) -> str:
    """One line for a composition error: which key or option, and what is valid."""
    for e in _chain(exc):
        if isinstance(e, MissingConfigException):
            missing = e.missing_cfg_file or ""
            options = [o for o in (e.options or []) if not o.startswith("schema")]
            if "/" in missing and options:
                group, _, name = missing.rpartition("/")
                return f"unknown option {name!r} for config group {group!r}; valid: {', '.join(sorted(options))}"
            if options:
                return f"{_first_line(str(e))}; valid: {', '.join(sorted(options))}"
            return _first_line(str(e))
        if isinstance(e, OverrideParseException):
            return f"bad override: {_first_line(str(e))}"
    for e in _chain(exc):
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            key = str(e.full_key)
            choice = getattr(getattr(e, "child_node", None), "enum_type", None)
            if choice is not None:  # a value outside an enum field's choices
                return f"{key}: {describe_invalid(choice, getattr(e, 'value', None))}{_override_where(key, overrides)}"
            msg = _first_line(getattr(e, "msg", None) or str(e))
            if "not in" in msg or "Key '" in msg and "not" in msg:
                parent = key.rpartition(".")[0]
                valid = _valid_keys(directory, parent)
                hint = f"; valid keys{' under ' + repr(parent) if parent else ''}: {', '.join(valid)}" if valid else ""
                return f"unknown key {key!r}{hint}"
            override = next((o for o in overrides if o.lstrip("+~").split("=")[0] == key), None)
            where = f" (override {override!r})" if override else ""
            return f"{key}: {msg}{where}"
    for e in _chain(exc):
        if isinstance(e, OverflowError):  # e.g. a 400-digit number for a float
            m = re.search(r"full_key: (\S+)", str(e))
            key = m.group(1) if m else "config"
            return f"{key}: the number is out of range{_override_where(key, overrides)}; valid: a finite float"
    msg = _first_line(str(exc))
    if msg.startswith("Could not override") and "No match in the defaults list" in msg:
        # freq=lr_sweep for a group that is not in the defaults list: Hydra's own hint
        key = msg.split("'")[1] if "'" in msg else ""
        if key and (directory / key).is_dir():
            override = next((o for o in overrides if o.split("=")[0] == key), f"{key}=<option>")
            options = sorted(p.stem for p in (directory / key).glob("*.y*ml"))
            return (f"{key!r} is a config group not in the defaults list: to add it, write '+{override}' "
                    f"(options: {', '.join(options)})")
    if msg.startswith("Could not append to config. An item is already at"):
        key = msg.split("'")[1] if "'" in msg else ""
        override = next((o for o in overrides if o.lstrip("+").split("=")[0] == key), "")
        fix = f": write {override.lstrip('+')!r} (no '+') to change it" if override else ""
        return f"{key!r} is already in the config{fix}"
    if msg.startswith("Could not override"):
        # e.g. "Could not override 'trainer.foo'." (unknown key without a typed cause)
        key = msg.split("'")[1] if "'" in msg else ""
        parent = key.rpartition(".")[0]
        valid = _valid_keys(directory, parent)
        return f"unknown key {key!r}" + (f"; valid keys under {parent!r}: {', '.join(valid)}" if valid else "")
    return msg


def _override_where(key: str, overrides: Sequence[str]) -> str:
    override = next((o for o in overrides if o.lstrip("+~").split("=")[0] == key), None)
    return f" (override {short(override, 60)!r})" if override else ""


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data, every interpolation resolved (errors name the key)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, enum_to_str=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise ConfigError(f"{key or 'config'}: {_first_line(getattr(e, 'msg', None) or str(e))}") from None
