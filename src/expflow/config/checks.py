"""General checks of a composed config that Hydra's merge does not make, each failing
with one line that names the key and what is valid:

- known keys: ``+key=value`` (and ``++``) force-adds a key even into a node a schema
  types; every node typed by a schema may hold only that schema's fields. Nodes without
  a schema (``lifecycle``, ``optim.optimizer``, a user's ``_target_`` option without
  one) stay open.
- numbers: every integer fits int64, every float is finite (no nan/inf), any ``seed`` /
  ``*_seed`` is in 0..2**32-1, and the keys of :data:`~expflow.config.schema.RANGES`
  are in their range.
- credentials: no credential-named key (see :mod:`expflow.config.credentials`) with a
  value, anywhere.

The argparse ``type=`` of numeric command-line options, with the same ranges and
one-line messages, is in :mod:`expflow.config.numbers` (no Hydra import).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

import expflow.config.credentials as credentials
from expflow.config.numbers import INT64, SEED, Range, short
from expflow.config.schema import NONFINITE, RANGES
from expflow.errors import ConfigError

HYDRA_KEY = "hydra"  # Hydra's own node (return_hydra_config): its schema is Hydra's


def _join(prefix: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


def _override_for(key: str, overrides: Sequence[str]) -> str | None:
    for o in overrides:
        if o.lstrip("+~").split("=", 1)[0] == key:
            return o
    return None


def _where(key: str, overrides: Sequence[str]) -> str:
    o = _override_for(key, overrides)
    return f" (override {short(o, 60)!r})" if o else ""


# -- known keys ------------------------------------------------------------------
def _nodes(node: DictConfig | ListConfig, prefix: str = "") -> Iterator[tuple[str, DictConfig]]:
    """(key, node) of every dict node under ``node``, interpolations not followed."""
    if isinstance(node, DictConfig):
        if node._is_none() or node._is_missing() or node._is_interpolation():
            return
        yield prefix, node
        keys: Any = node.keys()
    else:
        if node._is_none() or node._is_missing() or node._is_interpolation():
            return
        keys = range(len(node))
    for k in keys:
        if not prefix and k == HYDRA_KEY:
            continue
        child = node._get_node(k)
        if isinstance(child, (DictConfig, ListConfig)):
            yield from _nodes(child, _join(prefix, k))


def check_known_keys(cfg: DictConfig, overrides: Sequence[str] = (), only: str | None = None) -> None:
    """Every key of a schema-typed node is one of the schema's fields (``only``: under that
    top-level key)."""
    for prefix, node in _nodes(cfg):
        if only is not None and prefix and prefix.split(".", 1)[0].split("[", 1)[0] != only:
            continue
        schema = OmegaConf.get_type(node)
        if schema is None or not dataclasses.is_dataclass(schema):
            continue  # an open node
        fields = sorted(f.name for f in dataclasses.fields(schema))
        for k in node.keys():
            if k in fields or (not prefix and k == HYDRA_KEY):
                continue
            key = _join(prefix, k)
            close = difflib.get_close_matches(str(k), fields, n=1)
            hint = f"did you mean {_join(prefix, close[0])!r}? " if close else ""
            under = f" under {prefix!r}" if prefix else ""
            raise ConfigError(
                f"unknown key {key!r}{_where(key, overrides)}: {hint}valid keys{under}: {', '.join(fields)} "
                "('+' adds keys only to nodes without a schema, such as lifecycle)"
            )


# -- numbers ---------------------------------------------------------------------
def _plain(cfg: DictConfig, resolve: bool, hydra: bool = False, only: str | None = None) -> Iterator[tuple[str, Any]]:
    for k in cfg.keys():
        if (k == HYDRA_KEY and not hydra) or (only is not None and k != only):
            continue
        node = cfg._get_node(k)
        if isinstance(node, (DictConfig, ListConfig)):
            yield str(k), OmegaConf.to_container(node, resolve=resolve, throw_on_missing=False, enum_to_str=True)
        else:
            yield str(k), cfg[k] if resolve else node._value()


def _plain_configs(cfg: DictConfig, only: str | None = None) -> Iterator[list[tuple[str, Any]]]:
    """The config as (top-level key, plain data): as written (a value is blamed on its own
    key, not on an interpolation of it), then resolved where it resolves. ``only``: that
    top-level key alone."""
    yield list(_plain(cfg, resolve=False, only=only))
    try:
        resolved = list(_plain(cfg, resolve=True, only=only))
    except Exception:  # an interpolation that cannot resolve here (resolve() reports it later)
        return
    yield resolved


def _leaves(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, _join(key, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, _join(key, i))
    else:
        yield key, value


def _is_seed(key: str) -> bool:
    name = key.rpartition(".")[2].split("[")[0].lower()
    return name == "seed" or name.endswith("_seed")


def range_of(key: str) -> Range | None:
    if key in RANGES:
        return RANGES[key]
    return SEED if _is_seed(key) else None


def number_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not a valid number for ``key`` (None: it is, or is no number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    rng = range_of(key)
    if isinstance(value, float) and not math.isfinite(value):
        if key in NONFINITE:
            return None
        return f"{short(value)} is not a finite number; valid: {rng.describe() if rng else 'a finite number'}"
    if rng is not None and not rng.contains(value):
        why = " (what Python, NumPy and torch seeding all accept)" if rng is SEED else ""
        return f"{short(value)} is out of range; valid: {rng.describe()}{why}"
    if isinstance(value, int) and not INT64.contains(value):
        return f"{short(value)} is out of range; valid: {INT64.describe()} (int64)"
    return None


def check_numbers(cfg: DictConfig, overrides: Sequence[str] = (), only: str | None = None) -> None:
    for plain in _plain_configs(cfg, only):
        for top, value in plain:
            for key, leaf in _leaves(value, top):
                problem = number_problem(key, leaf)
                if problem:
                    raise ConfigError(f"{key}: {problem}{_where(key, overrides)}")


# -- credentials -----------------------------------------------------------------
def check_credentials(cfg: DictConfig, only: str | None = None) -> None:
    """No credential-named key with a value anywhere (interpolations count: they resolve
    into the package's config). The value is never printed."""
    for top, value in _plain(cfg, resolve=False, hydra=only is None, only=only):
        for key in credentials.credential_keys({top: value}):
            raise ConfigError(credentials.refusal(key))


def check_override_credentials(overrides: Sequence[str]) -> None:
    """No command-line override sets a credential-named key, ``hydra.*`` included (Hydra
    writes its own node and the overrides into the package's ``.hydra/``)."""
    for o in overrides:
        key, eq, value = o.lstrip("+~").partition("=")
        if eq and credentials.credential_name(key.rpartition(".")[2]) and \
                credentials.carries_value(None if value.strip() in ("null", "") else value):
            raise ConfigError(credentials.refusal(key))
