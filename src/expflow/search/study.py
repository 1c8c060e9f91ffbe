"""A search's settings and its shared Optuna study.

The study lives in one journal file, ``<runs_dir>/.search/<name>/study.journal`` (Optuna's
``JournalFileBackend``, which appends under a lock that works across processes and, being a
symlink lock, across the nodes of a shared file system): every trial slot of every job, on
any node, asks and tells through it. Claims (who runs which trial, the trial budget) take
the same kind of lock, ``claim.lock`` beside it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expflow.errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
DIRECTIONS = {"max": "maximize", "min": "minimize", "maximize": "maximize", "minimize": "minimize"}
SEARCH_DIR = ".search"


@dataclass(frozen=True)
class SearchSpec:
    """The workflow config's ``search`` section (see conf/workflow.yaml)."""

    name: str
    objective: str
    direction: str  # "maximize" | "minimize"
    params: dict[str, Any]
    n_trials: int
    parallel: int = 1
    overrides: tuple[str, ...] = ()  # every trial's (after the workflow's common overrides)
    sampler: dict[str, Any] | None = None
    pruner: dict[str, Any] | None = None
    enqueue: tuple[dict[str, Any], ...] = ()
    gpus: int | None = None

    @classmethod
    def from_config(cls, section: dict[str, Any], common: list[str] | tuple[str, ...] = ()) -> SearchSpec:
        where = "search"
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: must be a mapping (name, objective, direction, params, n_trials, ...)")
        name = str(section.get("name") or "search")
        if not NAME.fullmatch(name):
            raise ConfigError(f"{where}.name: {name!r} is not valid; valid: letters, digits, '_', '.', '-'")
        objective = section.get("objective")
        if not objective or not isinstance(objective, str):
            raise ConfigError(f"{where}.objective: name the metric to optimize (e.g. val/acc)")
        direction = DIRECTIONS.get(str(section.get("direction", "max")))
        if direction is None:
            raise ConfigError(f"{where}.direction: {section.get('direction')!r} is not valid; valid: max, min")
        n_trials = _positive(section.get("n_trials", 10), f"{where}.n_trials")
        parallel = _positive(section.get("parallel", 1), f"{where}.parallel")
        gpus = section.get("gpus")
        if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0):
            raise ConfigError(f"{where}.gpus: {gpus!r} is not valid; valid: a count >= 0, or null (the trial config's gpu.count)")
        for key in ("sampler", "pruner"):
            value = section.get(key)
            if value is not None and (not isinstance(value, dict) or "_target_" not in value):
                raise ConfigError(f"{where}.{key}: {value!r} is not valid; valid: null or a mapping with _target_ "
                                  f"(e.g. optuna.samplers.TPESampler)")
        enqueue = section.get("enqueue") or []
        if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
            raise ConfigError(f"{where}.enqueue: must be a list of mappings of searched key to value")
        params = section.get("params")
        if not isinstance(params, dict) or not params:
            raise ConfigError(f"{where}.params: give the keys to search, e.g. optim.lr: tag(log, interval(1e-4, 1e-1))")
        for entry in enqueue:
            unknown = sorted(set(entry) - set(params))
            if unknown:
                raise ConfigError(f"{where}.enqueue: {unknown[0]!r} is not a searched key; valid: {', '.join(params)}")
        overrides = section.get("overrides") or []
        if isinstance(overrides, str):
            import shlex

            overrides = shlex.split(overrides)
        return cls(name=name, objective=objective, direction=direction, params=dict(params), n_trials=n_trials,
                   parallel=parallel, overrides=(*common, *map(str, overrides)), sampler=section.get("sampler"),
                   pruner=section.get("pruner"), enqueue=tuple(enqueue), gpus=gpus)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "objective": self.objective, "direction": self.direction, "params": self.params,
                "n_trials": self.n_trials, "parallel": self.parallel, "overrides": list(self.overrides),
                "sampler": self.sampler, "pruner": self.pruner, "enqueue": list(self.enqueue), "gpus": self.gpus}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchSpec:
        section = dict(data)
        section["direction"] = {"maximize": "max", "minimize": "min"}.get(section.get("direction"), section.get("direction"))
        return cls.from_config(section)


def search_dir(runs_dir: str | Path, name: str) -> Path:
    return Path(runs_dir) / SEARCH_DIR / name


def storage_path(runs_dir: str | Path, name: str) -> Path:
    return search_dir(runs_dir, name) / "study.journal"


def journal_storage(path: str | Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    # Absolute: the lock is a symlink to this path, and Optuna's lock judges a lock left by a
    # killed process stale by the mtime of the link's target (os.stat follows the link). A
    # relative target resolves against the link's own directory, where nothing is: the waiter
    # would retry at once for ever, at 100% CPU, never reaching the grace period.
    path = os.path.abspath(path)
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileSymlinkLock(path)))


@contextmanager
def claim_lock(runs_dir: str | Path, name: str) -> Iterator[None]:
    """The search's claim lock (a symlink lock: safe on a shared file system)."""
    from optuna.storages.journal import JournalFileSymlinkLock

    # The link's target must exist, at an absolute path (see journal_storage): else a lock a
    # killed slot left would be waited on for ever, spinning.
    target = os.path.abspath(search_dir(runs_dir, name) / "claims")
    with open(target, "a"):
        pass
    lock = JournalFileSymlinkLock(target, grace_period=60)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _instantiate(spec: dict[str, Any] | None, what: str, **extra: Any) -> Any:
    if spec is None:
        return None
    from hydra.errors import HydraException
    from hydra.utils import instantiate

    try:
        return instantiate({**spec, **extra})
    except (HydraException, TypeError, ValueError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"search.{what}: cannot build {spec.get('_target_')!r}: {first}") from None


def build_pruner(spec: dict[str, Any] | None) -> Any:
    """The pruner of ``search.pruner``; null prunes nothing (not Optuna's default median pruner)."""
    if spec is None:
        import optuna

        return optuna.pruners.NopPruner()
    return _instantiate(spec, "pruner")


def build_sampler(spec: dict[str, Any] | None, offset: int = 0) -> Any:
    """The sampler of ``search.sampler``. A fixed seed is shifted by ``offset``: slots in
    other processes must not draw the same values (each has its own sampler)."""
    if spec is None:  # Optuna's default, unseeded
        import optuna

        return optuna.samplers.TPESampler()
    if spec.get("seed") is not None:
        return _instantiate({k: v for k, v in spec.items() if k != "seed"}, "sampler", seed=int(spec["seed"]) + offset)
    return _instantiate(spec, "sampler")


def open_study(spec: SearchSpec, runs_dir: str | Path, *, sampler_offset: int = 0) -> Any:
    """The search's study (created on first use, with ``search.enqueue``'s trials first)."""
    import optuna

    from expflow.paths import check_writable

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = storage_path(runs_dir, spec.name)
    kwargs = {"pruner": build_pruner(spec.pruner), "sampler": build_sampler(spec.sampler, sampler_offset)}
    check_writable(path.parent, what="the search's directory")  # one line naming it, before Optuna writes
    path.parent.mkdir(parents=True, exist_ok=True)
    with claim_lock(runs_dir, spec.name):
        try:
            storage = journal_storage(path)
            study = optuna.create_study(study_name=spec.name, storage=storage, direction=spec.direction,
                                        load_if_exists=True, **kwargs)
        except ConfigError:
            raise
        except Exception as e:  # Optuna replaying a damaged or foreign journal (it asserts, too)
            # Named, and left as it is: it holds the trials so far.
            raise ConfigError(f"{path}: not a readable Optuna journal of study {spec.name!r} "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if study.direction.name.lower() != spec.direction:
            raise ConfigError(f"search.direction: the study {spec.name!r} in {path} was created to "
                              f"{study.direction.name.lower()}; give another search.name for a new study")
        if spec.enqueue and not study.get_trials(deepcopy=False):
            from expflow.search.space import PRIMITIVES, value_text

            for params in spec.enqueue:  # lists and dicts as the override text a choice keeps them as
                study.enqueue_trial({k: v if isinstance(v, PRIMITIVES) else value_text(v) for k, v in params.items()},
                                    skip_if_exists=True)
    return study


def _positive(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {value!r} is not valid; valid: an integer >= 1")
    return value
