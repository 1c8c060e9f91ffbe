"""Expanding the workflow's sweep lines into runs (Hydra's parser and compose API).

Each ``sweep`` entry of ``conf/workflow.yaml`` is a line of overrides
(``optim.lr=1e-3,3e-3 seed=range(3)``, ``+freq=lr_sweep``), expanded with Hydra's override
parser the way ``-m`` would. Each run's id is a hash of its composed (unresolved) config.

Hydra's compose API cannot expand a sweep, and composing every run is ~20 ms; here a full
composition happens once per distinct combination of config-group choices, each distinct
value override is type-checked once against the typed config, and a run costs a dict copy
and a hash. This module imports Hydra and OmegaConf: :mod:`expflow.workflow` loads it only
when its plan cache misses.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
from collections.abc import Iterable, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from expflow.config import compose_config, conf_dir, expand_sweep, sweeper_params, validate_config
from expflow.errors import ConfigError
from expflow.runid import RunSpec, config_id, number_at


def composed_id(overrides: Sequence[str], config_dir: str | os.PathLike[str] | None = None) -> str:
    """The id a full composition gives (what the package rule checks against the plan)."""
    cfg = compose_config(list(overrides), config_dir=config_dir)
    return config_id(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))  # type: ignore[arg-type]


def _with_path(node: Any, path: list[str], value: Any, delete: bool) -> Any:
    """A copy of ``node`` with ``path`` set (or deleted): only the containers along the
    path are copied, the rest is shared. Nothing here is ever mutated after planning."""
    head, rest = path[0], path[1:]
    if isinstance(node, list):
        new_list = list(node)
        i = int(head)
        if not rest:
            if delete:
                new_list.pop(i)
            else:
                new_list[i] = value
        else:
            new_list[i] = _with_path(new_list[i], rest, value, delete)
        return new_list
    new = dict(node) if isinstance(node, dict) else {}
    if not rest:
        if delete:
            new.pop(head, None)
        else:
            new[head] = value
    else:
        new[head] = _with_path(new.get(head, {}), rest, value, delete)
    return new


class Planner:
    """Expands sweep lines into run specs; caches compositions and parsed overrides."""

    def __init__(self, config_dir: str | os.PathLike[str] | None = None, *, families: bool = False,
                 estimate: str | None = None):
        """``families``: give each run its family id; ``estimate``: read each run's duration
        estimate from this config key (both only for packing: they cost a hash per run)."""
        self.config_dir = conf_dir(config_dir)
        self.families = families
        self.estimate = estimate
        self._parser = OverridesParser.create()
        self._parsed: dict[str, Override] = {}
        self._bases: dict[tuple[str, ...], tuple[DictConfig, dict[str, Any]]] = {}
        self._values: dict[tuple[tuple[str, ...], str], tuple[list[str], Any, bool]] = {}
        self._sweeper: dict[tuple[str, ...], dict[str, str]] = {}
        self._groups: dict[str, bool] = {}
        self._scratch: dict[tuple[str, ...], DictConfig] = {}

    def parse(self, text: str) -> Override:
        o = self._parsed.get(text)
        if o is None:
            try:
                o = self._parser.parse_override(text)
            except HydraException as e:
                raise ConfigError(f"bad override {text!r}: {str(e).splitlines()[0]}") from None
            self._parsed[text] = o
        return o

    def is_group(self, o: Override) -> bool:
        key = o.key_or_group
        found = self._groups.get(key)
        if found is None:
            found = self._groups[key] = (self.config_dir / key).is_dir() or key.startswith("hydra/")
        return found

    def base(self, groups: tuple[str, ...], composed: DictConfig | None = None) -> tuple[DictConfig, dict[str, Any]]:
        """The config of ``groups`` (group overrides only), composed once; ``composed``: that
        composition, already made (without its hydra node)."""
        found = self._bases.get(groups)
        if found is None:
            cfg = composed if composed is not None else compose_config(list(groups), config_dir=self.config_dir)
            validate_config(cfg)
            found = (cfg, OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))  # type: ignore[assignment]
            self._bases[groups] = found  # type: ignore[assignment]
        return found  # type: ignore[return-value]

    def value(self, groups: tuple[str, ...], text: str) -> tuple[list[str], Any, bool]:
        """(path, value as the typed config holds it, delete?) for a value override."""
        key = (groups, text)
        found = self._values.get(key)
        if found is not None:
            return found
        o = self.parse(text)
        path = o.key_or_group.split(".")
        if not (o.is_delete() or o.is_add() or o.is_force_add()):
            found = self._leaf_value(groups, o, path)
            if found is not None:
                self._values[key] = found
                return found
        typed = copy.deepcopy(self.base(groups)[0])
        try:
            if o.is_delete():
                with open_dict(typed):
                    parent = OmegaConf.select(typed, ".".join(path[:-1])) if len(path) > 1 else typed
                    if parent is None or path[-1] not in parent:
                        raise ConfigError(f"override {text!r}: no key {o.key_or_group!r} to delete")
                found = (path, None, True)
            else:
                if o.is_add() or o.is_force_add():
                    with open_dict(typed):
                        OmegaConf.update(typed, o.key_or_group, o.value(), merge=True, force_add=True)
                else:
                    if OmegaConf.select(typed, o.key_or_group, default=_MISSING) is _MISSING:
                        parent = ".".join(path[:-1])
                        node = OmegaConf.select(typed, parent) if parent else typed
                        valid = ", ".join(sorted(map(str, node.keys()))) if isinstance(node, DictConfig) else ""
                        raise ConfigError(f"unknown key {o.key_or_group!r}" + (f"; valid keys under {parent!r}: {valid}" if parent and valid else ""))
                    OmegaConf.update(typed, o.key_or_group, o.value(), merge=False)
                validate_config(typed)
                node = OmegaConf.select(typed, o.key_or_group)
                plain = OmegaConf.to_container(node, resolve=False, enum_to_str=True) if OmegaConf.is_config(node) else node
                found = (path, plain, False)
        except OmegaConfBaseException as e:
            msg = str(getattr(e, "msg", None) or e).splitlines()[0]
            raise ConfigError(f"{o.key_or_group}: {msg} (override {text!r})") from None
        self._values[key] = found
        return found

    def _leaf_value(self, groups: tuple[str, ...], o: Override, path: list[str]) -> tuple[list[str], Any, bool] | None:
        """A value override of an existing leaf, checked on one scratch copy of the base
        config per group choice (set, checked, set back) instead of a copy per value: the
        typed node checks the type, :func:`validate_config` the key's own subtree (the whole
        base was checked once; the package job checks the whole config). None when the key
        is not a leaf of a dict node here (the caller takes the general path)."""
        scratch = self._scratch.get(groups)
        if scratch is None:
            scratch = self._scratch[groups] = copy.deepcopy(self.base(groups)[0])
        parent = OmegaConf.select(scratch, ".".join(path[:-1])) if len(path) > 1 else scratch
        if not isinstance(parent, DictConfig) or path[-1] not in parent:
            return None
        node = parent._get_node(path[-1])
        if OmegaConf.is_config(node):
            return None
        before = node._value()  # type: ignore[union-attr]
        try:
            OmegaConf.update(scratch, o.key_or_group, o.value(), merge=False)
            validate_config(scratch, only=path[0])
            value = OmegaConf.select(scratch, o.key_or_group)
        except OmegaConfBaseException as e:
            self._scratch.pop(groups, None)  # possibly half-changed: a fresh copy next time
            msg = str(getattr(e, "msg", None) or e).splitlines()[0]
            raise ConfigError(f"{o.key_or_group}: {msg} (override {o.input_line!r})") from None
        except BaseException:
            self._scratch.pop(groups, None)
            raise
        try:
            OmegaConf.update(scratch, o.key_or_group, before, merge=False)
            restored = parent._get_node(path[-1])._value() == before  # type: ignore[union-attr]
        except OmegaConfBaseException:
            restored = False
        if not restored:
            self._scratch.pop(groups, None)
        return (path, value, False)

    def sweeper_params(self, fixed: tuple[str, ...]) -> dict[str, str]:
        """``hydra.sweeper.params`` for the non-sweep overrides ``fixed``.

        Only group choices and ``hydra.*`` overrides decide them, so the composition takes
        those alone; without ``hydra.*`` overrides it is also (less its hydra node, which is
        what Hydra's compose drops) the base config of every run with these groups: one
        composition less. Params that interpolate another key are composed with all of ``fixed``.
        """
        found = self._sweeper.get(fixed)
        if found is not None:
            return found
        groups = tuple(t for t in fixed if self.is_group(self.parse(t)))
        hydra_values = tuple(t for t in fixed if t not in groups and self.parse(t).key_or_group.startswith("hydra."))
        cfg = compose_config([t for t in fixed if t in groups or t in hydra_values], config_dir=self.config_dir,
                             return_hydra_config=True)
        raw = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
        if raw is not None and "${" in json.dumps(OmegaConf.to_container(raw, resolve=False, enum_to_str=True), default=str):
            found = sweeper_params(compose_config(list(fixed), config_dir=self.config_dir, return_hydra_config=True))
        else:
            found = sweeper_params(cfg)
        self._sweeper[fixed] = found
        if not hydra_values and groups not in self._bases:
            with open_dict(cfg):
                del cfg["hydra"]
            self.base(groups, composed=cfg)
        return found

    def expand(self, line: str | Sequence[str], common: Sequence[str] = ()) -> list[RunSpec]:
        """The runs of one sweep line (after the common overrides)."""
        tokens = list(common) + (shlex.split(line) if isinstance(line, str) else list(line))
        fixed = tuple(t for t in tokens if not self.parse(t).is_sweep_override())
        jobs = expand_sweep(tokens, self.sweeper_params(fixed))
        specs = []
        for job in jobs:
            groups = tuple(o for o in job if self.is_group(self.parse(o)))
            plain = self.base(groups)[1]
            for o in job:
                if o in groups:
                    continue
                path, value, delete = self.value(groups, o)
                plain = _with_path(plain, path, value, delete)
            gpu = plain.get("gpu") or {}
            trainer = plain.get("trainer") if isinstance(plain.get("trainer"), dict) else {}
            specs.append(RunSpec(config_id(plain), tuple(job), _as_int(gpu.get("count"), 1), _as_int(gpu.get("mem_mb"), 0),
                                 family=config_id(plain, exclude=("seed",)) if self.families else "",
                                 estimate=number_at(plain, self.estimate) if self.estimate else None,
                                 nodes=max(1, _as_int(trainer.get("nodes"), 1))))
        return specs

    def plan(self, sweep: Iterable[str | Sequence[str]], common: Sequence[str] = ()) -> dict[str, RunSpec]:
        """Every run of every sweep line, by id (a run that two lines name is one run)."""
        runs: dict[str, RunSpec] = {}
        for line in sweep:
            for spec in self.expand(line, common):
                runs.setdefault(spec.run_id, spec)
        return runs


_MISSING = object()


def _as_int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
