"""The alignment spec: ``conf/align/<name>.yaml``, validated by a dataclass schema.

The user-facing shape follows seed 002::

    aligned_metrics: [algorithm/reward, algorithm/policy_loss, infra/throughput]
    frameworks:
      slime:
        enabled: true
        source: {kind: wandb-offline, path: runs/slime/wandb}
        mapping: {"rollout/raw_reward": "algorithm/reward"}   # or preset:slime, or null
        derived: {"infra/throughput": {formula: slime_throughput, n_gpus: 8}}
        target_exp_name: slime_experiment
    target: {project: framework-comparison, mode: offline}

``load_spec`` turns the file into a :class:`Plan`: every mapping resolved (presets
expanded, overrides applied) and checked, so a bad spec fails before any source is read,
with one line that names the key. Credentials never live in a spec (see ``credentials``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from expflow.align.derived import FORMULAS
from expflow.align.presets import PATTERN_PREFIX, PRESET_KEY, resolve_preset
from expflow.align.seed_dialect import translate
from expflow.errors import AlignError
from expflow.tracking.modes import MODES
from expflow.tracking.secrets import SECRETS_FILES

TARGET_MODES = MODES["SwanLab"]  # the target is a SwanLab project
FILL_MODES = ("bfill", "none")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


# -- schema ------------------------------------------------------------------------
@dataclass
class SourceSpec:
    """Where a framework's metrics come from. Which fields apply depends on ``kind``."""

    kind: str = MISSING
    # local kinds: a file or a directory, a glob, or a list of them (merged by step)
    path: Any = None
    id: str | None = None  # swanlab (cloud): experiment id, or "user/project/id"
    project: str | None = None  # swanlab (cloud): "user/project" when id is bare
    run_path: str | None = None  # wandb (cloud): "entity/project/run_id"
    host: str | None = None  # swanlab private host, or W&B base URL
    workers: int = 8  # cloud kinds: metrics fetched in parallel
    step_column: str = "step"  # csv
    runs: list[str] | None = None  # expflow: only these run ids of a runs directory


@dataclass
class DerivedSpec:
    formula: str = MISSING
    n_gpus: int | None = None
    column: str | None = None  # per_gpu: the column divided by n_gpus


@dataclass
class FrameworkSpec:
    source: SourceSpec | None = None  # required unless enabled is false (seed 002: `verl: {enabled: false}`)
    enabled: bool = True
    mapping: Any = None  # {"framework name": "aligned name"} | "preset:<name>" | null
    derived: dict[str, DerivedSpec] = field(default_factory=dict)
    target_exp_name: str | None = None  # default: the framework's name
    # step key -> metric patterns, on top of the source's own declarations (define_metric,
    # SwanLab x axes) and the seed's defaults (train/*, rollout/*, eval/*)
    step_groups: dict[str, list[str]] = field(default_factory=dict)
    train_step: str = "train/step"  # the group the others are merged on
    fill: str = "bfill"  # bfill: missing steps back-filled (inside each series); none: logged steps only
    # SLIME: train steps per rollout; rollout/step and eval/step (the rollout id) x this = the
    # train step. null: from the run's config when it has one (W&B), else as logged
    steps_per_rollout: int | None = None
    cache_file: str | None = None  # this framework's source cache (default: one in cache_dir)


@dataclass
class TargetSpec:
    project: str = "framework-comparison"
    mode: str = "offline"  # offline | cloud | local | disabled
    workspace: str | None = None
    host: str | None = None


@dataclass
class AlignSpec:
    aligned_metrics: list[str] = MISSING
    frameworks: dict[str, FrameworkSpec] = MISSING
    target: TargetSpec = field(default_factory=TargetSpec)
    cache_dir: str | None = None  # default: <out>/cache


# -- the resolved plan ---------------------------------------------------------------
@dataclass(frozen=True)
class FrameworkPlan:
    name: str
    source: SourceSpec
    mapping: dict[str, str]  # framework metric name -> aligned name (identity included)
    derived: dict[str, DerivedSpec]
    target_exp_name: str
    step_groups: dict[str, tuple[str, ...]]
    train_step: str
    fill: str
    steps_per_rollout: int | None = None
    cache_file: str | None = None

    def wanted(self) -> set[str]:
        """The framework's metrics the alignment needs: mapped ones and derived inputs."""
        names = set(self.mapping)
        for d in self.derived.values():
            names.update(FORMULAS[d.formula].inputs(d))
        return names

    def expected(self) -> dict[str, list[str]]:
        """Aligned name -> the framework names that produce it (for the check report)."""
        out: dict[str, list[str]] = {}
        for name, d in self.derived.items():
            aligned = self.mapping.get(name, name)
            out.setdefault(aligned, []).append(f"{d.formula}({', '.join(FORMULAS[d.formula].inputs(d))})")
        for raw, aligned in self.mapping.items():
            if raw != aligned or aligned not in out:  # the identity entry only when nothing else
                out.setdefault(aligned, []).append(raw)
        return out


@dataclass(frozen=True)
class Plan:
    path: Path
    aligned_metrics: tuple[str, ...]
    frameworks: tuple[FrameworkPlan, ...]  # enabled ones, in spec order
    disabled: tuple[str, ...]
    target: TargetSpec
    cache_dir: str | None
    seed_equivalent: str | None = None  # read in seed 002's dialect: the equivalent expflow spec (YAML)


# -- loading -------------------------------------------------------------------------
def find_spec(cwd: Path | None = None) -> Path:
    """Seed 002's lookup when no spec is named: ``secrets/config.yaml``, then ``config.yaml``."""
    base = cwd or Path.cwd()
    for rel in SECRETS_FILES:
        if (base / rel).is_file():
            return base / rel
    raise AlignError(
        f"no alignment spec given and none of {', '.join(SECRETS_FILES)} exists in {base}; "
        "name one, e.g. expflow align conf/align/example.yaml"
    )


def load_spec(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Plan:
    """Read, type-check and resolve a spec; any problem is an AlignError naming the key."""
    path = Path(path)
    if not path.is_file():
        what = "a directory, expected an alignment spec (a YAML file)" if path.is_dir() else "no such alignment spec"
        raise AlignError(f"{path}: {what}")
    try:
        raw = OmegaConf.load(path)
        if overrides:
            raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(list(overrides)))
    except Exception as e:  # YAML syntax, bad dotlist
        raise AlignError(f"{path}: cannot read the spec: {_first_line(e)}") from None
    if not isinstance(raw, DictConfig):
        raise AlignError(f"{path}: the spec must be a mapping with aligned_metrics and frameworks")
    if "auth" in raw:
        # Seed 002 keeps API keys in the (git-ignored) secrets/config.yaml; never elsewhere.
        if not _is_secrets_file(path):
            raise AlignError(
                f"{path}: auth: credentials do not belong in a spec; set them in the environment "
                f"or in {SECRETS_FILES[0]} (git-ignored)"
            )
        raw = OmegaConf.masked_copy(raw, [k for k in raw if k != "auth"])
    raw, equivalent = translate(raw, str(path))
    spec = _typed(path, raw)
    plan = _resolve(path, spec)
    return dataclasses.replace(plan, seed_equivalent=equivalent) if equivalent else plan


def _typed(path: Path, raw: DictConfig) -> AlignSpec:
    schema = OmegaConf.structured(AlignSpec)
    try:
        merged = OmegaConf.merge(schema, raw)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "")
        msg = _first_line(getattr(e, "msg", None) or e)
        if msg.startswith("Key '") and "not in" in msg:
            valid = _valid_keys(key)
            return _raise(path, f"unknown key {key!r}" + (f"; valid keys: {', '.join(valid)}" if valid else ""))
        if "missing mandatory value" in msg:
            return _raise(path, f"{key}: required but missing")
        return _raise(path, f"{key}: {msg}" if key else msg)


def _valid_keys(full_key: str) -> list[str]:
    """The keys the schema allows where ``full_key`` was found."""
    cls: Any = AlignSpec
    parts = full_key.split(".")[:-1]
    i = 0
    while i < len(parts):
        nested = _NESTED.get(parts[i])
        if nested is None:
            return []
        cls, step = nested
        i += step
    return sorted(cls.__dataclass_fields__)


# key -> (schema of what it holds, parts to skip: 2 where a free name follows the key)
_NESTED: dict[str, tuple[type, int]] = {
    "frameworks": (FrameworkSpec, 2),
    "derived": (DerivedSpec, 2),
    "source": (SourceSpec, 1),
    "target": (TargetSpec, 1),
}


def _resolve(path: Path, spec: AlignSpec) -> Plan:
    from expflow.align.sources import SOURCE_KINDS

    aligned = list(spec.aligned_metrics)
    if not aligned:
        _raise(path, "aligned_metrics: empty; list the metric names every framework is aligned to")
    dupes = sorted({m for m in aligned if aligned.count(m) > 1})
    if dupes:
        _raise(path, f"aligned_metrics: listed twice: {', '.join(dupes)}")
    if not spec.frameworks:
        _raise(path, "frameworks: empty; add at least one framework")
    target = spec.target
    if target.mode not in TARGET_MODES:
        _raise(path, f"target.mode: {target.mode!r} is not valid; valid: {', '.join(TARGET_MODES)}")
    if target.mode != "disabled" and not target.project.strip():
        _raise(path, "target.project: empty; name the tracker project the experiments go to")

    plans: list[FrameworkPlan] = []
    disabled: list[str] = []
    for name, fw in spec.frameworks.items():
        key = f"frameworks.{name}"
        if not NAME_PATTERN.match(name):
            _raise(path, f"{key}: a framework name may hold letters, digits, '_', '.', '-' only")
        if not fw.enabled:
            disabled.append(name)
            continue
        if fw.source is None:
            _raise(path, f"{key}.source: required (or set enabled: false)")
        kind = SOURCE_KINDS.get(fw.source.kind)
        if kind is None:
            _raise(path, f"{key}.source.kind: unknown source kind {fw.source.kind!r}; valid: {', '.join(SOURCE_KINDS)}")
        problem = kind.check_spec(fw.source)
        if problem:
            _raise(path, f"{key}.source{problem}")
        if fw.steps_per_rollout is not None and fw.steps_per_rollout < 1:
            _raise(path, f"{key}.steps_per_rollout: {fw.steps_per_rollout} is out of range; valid: an integer >= 1, or null")
        if fw.fill not in FILL_MODES:
            _raise(path, f"{key}.fill: {fw.fill!r} is not valid; valid: {', '.join(FILL_MODES)}")
        mapping, explicit = _mapping(path, key, fw.mapping, aligned)
        for dname, d in fw.derived.items():
            formula = FORMULAS.get(d.formula)
            if formula is None:
                _raise(path, f"{key}.derived.{dname}.formula: unknown formula {d.formula!r}; valid: {', '.join(FORMULAS)}")
            problem = formula.check(d)
            if problem:
                _raise(path, f"{key}.derived.{dname}: {problem}")
            produces = mapping.get(dname, dname)
            if produces not in aligned:
                _raise(path, f"{key}.derived.{dname}: neither in aligned_metrics nor mapped to one")
            others = sorted(r for r, t in mapping.items() if t == produces and r not in (dname, produces) and r in explicit)
            for r in [r for r, t in mapping.items() if t == produces and r not in (dname, produces) and r not in explicit]:
                del mapping[r]  # a preset's entry for what the spec derives: the derived one is used
            if others:
                _raise(path, f"{key}.derived.{dname}: {produces!r} also comes from mapping entry {others[0]!r}; drop one (null)")
            if produces != dname and mapping.get(produces) == produces:
                del mapping[produces]  # the derived series wins over a same-named logged one
        plans.append(
            FrameworkPlan(
                name=name,
                source=fw.source,
                mapping=mapping,
                derived=dict(fw.derived),
                target_exp_name=fw.target_exp_name or name,
                step_groups={k: tuple(v) for k, v in fw.step_groups.items()},
                train_step=fw.train_step,
                fill=fw.fill,
                steps_per_rollout=fw.steps_per_rollout,
                cache_file=fw.cache_file,
            )
        )
    if not plans:
        _raise(path, "frameworks: every framework is disabled (enabled: false); nothing to align")
    return Plan(path, tuple(aligned), tuple(plans), tuple(disabled), target, spec.cache_dir)


def _mapping(path: Path, key: str, value: Any, aligned: list[str]) -> tuple[dict[str, str], set[str]]:
    """framework name -> aligned name: the preset (if any), the user's entries over it key by
    key (null drops a preset entry), then identity for names that already match; and the
    names the spec itself gave. A name ``re:<regex>`` matches the run's names at alignment
    (see ``aligned.resolve_mapping``); several entries for one aligned name from a preset are
    alternatives."""
    user: dict[str, Any] = {}
    preset_name: str | None = None
    if value is None:
        pass
    elif isinstance(value, str):
        if not value.startswith("preset:"):
            _raise(path, f"{key}.mapping: {value!r} is neither a mapping, preset:<name>, nor null")
        preset_name = value.split(":", 1)[1].strip()
    elif isinstance(value, dict):
        user = dict(value)
        preset_name = user.pop(PRESET_KEY, None)
    else:
        _raise(path, f"{key}.mapping: expected a mapping, preset:<name> or null, got {type(value).__name__}")

    base: dict[str, str] = {}
    if preset_name is not None:
        try:
            preset = resolve_preset(str(preset_name), search=[path.parent / "presets"])
        except KeyError as e:
            _raise(path, f"{key}.mapping: {e.args[0]}")
        # A preset names many metrics; those outside aligned_metrics are simply not used.
        base = {raw: tgt for raw, tgt in preset.items() if tgt in aligned}

    for raw, tgt in user.items():
        if tgt is None:
            base.pop(raw, None)
            continue
        if not isinstance(tgt, str):
            _raise(path, f"{key}.mapping[{raw!r}]: expected an aligned metric name, got {tgt!r}")
        if tgt not in aligned:
            _raise(path, f"{key}.mapping[{raw!r}]: {tgt!r} is not in aligned_metrics ({', '.join(aligned)})")
        if str(raw).startswith(PATTERN_PREFIX):
            try:
                re.compile(str(raw)[len(PATTERN_PREFIX):])
            except re.error as e:
                _raise(path, f"{key}.mapping[{raw!r}]: not a valid regular expression ({e})")
    explicit = {raw: tgt for raw, tgt in user.items() if tgt is not None}
    targets = list(explicit.values())
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raws = [r for r, t in explicit.items() if t == twice[0]]
        _raise(path, f"{key}.mapping: {', '.join(map(repr, raws))} all map to {twice[0]!r}; keep one")
    # An override for an aligned name replaces the preset's entry for it.
    merged = {raw: tgt for raw, tgt in base.items() if tgt not in set(targets)}
    merged.update(explicit)
    taken = set(merged.values())
    for name in aligned:
        if name not in taken and name not in merged:
            merged[name] = name
    return merged, set(explicit)


def _is_secrets_file(path: Path) -> bool:
    resolved = path.resolve()
    return any(resolved == (Path.cwd() / rel).resolve() for rel in SECRETS_FILES) or resolved.parent.name == "secrets"


def _first_line(e: object) -> str:
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return str(e).strip() or type(e).__name__


def _raise(path: Path, msg: str) -> Any:
    raise AlignError(f"{path}: {msg}")
