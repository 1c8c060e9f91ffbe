"""The workflow at DAG-build time: its config checked, its runs planned, their priorities.

``conf/workflow.yaml`` names the runs in Hydra's own syntax: each ``sweep`` entry is a
line of overrides (``optim.lr=1e-3,3e-3 seed=range(3)``, ``+freq=lr_sweep``), expanded
with Hydra's override parser the way ``-m`` would (:mod:`expflow.planning`). Each run's id
is a hash of its composed (unresolved) config: the same config gives the same id, any
change a new one, so Snakemake knows every output before anything runs and skips finished
runs.

Snakemake parses the Snakefile again for every dry run, every run of the workflow and, on a
cluster, every job. The plan is kept in ``.snakemake/expflow/plan.json`` (beside Snakemake's
own state, which dry runs write too) under a key of
everything it depends on (the sweep and common lines, the bytes of every file in the config
directory, the planner's and Hydra's code): an unchanged project loads it instead of
importing Hydra and composing again. This module itself imports neither Hydra nor OmegaConf.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from expflow.errors import ConfigError, ExpflowError
from expflow.runid import RunSpec


def workflow_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The workflow config with defaults filled and ``--config sweep=...`` strings normalized."""
    settings = dict(config)
    sweep = settings.get("sweep") or []
    settings["sweep"] = [sweep] if isinstance(sweep, str) else list(sweep)
    common = settings.get("common") or []
    settings["common"] = shlex.split(common) if isinstance(common, str) else list(common)
    settings.setdefault("runs_dir", "runs")
    settings.setdefault("config_dir", "conf")
    return settings


def cluster_resources(config: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Partition and account for cluster jobs: ``slurm.partition``/``slurm.account`` of the
    workflow config, overridden by ``EXPFLOW_SLURM_PARTITION``/``EXPFLOW_SLURM_ACCOUNT``.
    Local runs ignore these resources; the Slurm executor turns them into -p/-A."""
    environ = os.environ if environ is None else environ
    slurm = config.get("slurm") or {}
    out = {}
    for key in ("partition", "account"):
        value = environ.get(f"EXPFLOW_SLURM_{key.upper()}") or slurm.get(key)
        if value:
            out[f"slurm_{key}"] = str(value)
    return out


def train_signal(config: dict[str, Any]) -> str:
    """The train job's warning before its time limit (``train.signal_s``): an environment
    prefix for its command, on which a run in a Slurm job sends itself SIGUSR1 that long
    before the job's end, checkpoints at its step and stops (expflow.interrupt); the retry
    continues there. Empty when null."""
    seconds = (config.get("train") or {}).get("signal_s")
    return f"EXPFLOW_STOP_BEFORE_END_S={int(seconds)} " if seconds else ""


def train_command(config: dict[str, Any]) -> str:
    """The train rule's command, with Snakemake's placeholders: `expflow run` on the package
    (the config's directory, which the shell itself takes off the path: no dirname process
    between a freed device and the next job's lease), with the warning of
    :func:`train_signal` in its environment, appending to the job's log."""
    return "c={input.config:q}; " + train_signal(config) + 'expflow run "${{c%/*}}" >> {log} 2>&1'


def train_gpus(spec: RunSpec) -> int:
    """The train job's ``gpu`` resource: the run's GPUs (on this machine, or ``--gpus`` for
    Slurm). 0 for a run across nodes, whose GPUs are asked per node (:func:`train_gres`)."""
    return spec.gpus if spec.nodes == 1 else 0


def train_gres(spec: RunSpec) -> str:
    """The train job's ``gres`` of a run across nodes with GPUs (``gpu:<gpu.count>``, per node,
    where ``--gpus`` would count them in all); empty otherwise."""
    return f"gpu:{spec.gpus}" if spec.nodes > 1 and spec.gpus > 0 else ""


def plan_workflow(config: dict[str, Any], *, families: bool = False,
                  cache: str | os.PathLike[str] | None = None) -> dict[str, RunSpec]:
    """Every run of the workflow config, by id. ``families``: also each run's family id
    (for packing by the train times of earlier runs). ``cache``: a file that keeps the plan
    for the next parse of an unchanged project (see the module's docstring); a missing,
    stale or damaged one is planned again and rewritten, and one that cannot be written
    only costs the next parse its planning."""
    settings = workflow_settings(config)
    if not settings["sweep"]:
        if (settings.get("search") or {}).get("enabled"):
            return {}  # the search's trials are the workflow's runs
        settings["sweep"] = [""]  # the default config alone
    estimate = (settings.get("train") or {}).get("estimate")
    # With a cache, families always (a hash per run): the key stays the same when the first
    # train times appear, so the jobs of a running workflow keep loading the same plan.
    families = families or cache is not None
    key = plan_key(settings, estimate=estimate) if cache is not None else None
    runs = load_plan(cache, key) if key is not None else None
    if runs is None:
        from expflow.planning import Planner

        planner = Planner(Path(settings["config_dir"]), families=families, estimate=estimate)
        runs = planner.plan(settings["sweep"], settings["common"])
        if key is not None:
            save_plan(cache, key, runs)  # type: ignore[arg-type]
    if estimate and all(spec.estimate is None for spec in runs.values()):
        raise ConfigError(f"workflow config key 'train.estimate': {estimate!r} is not a number in any run's config "
                          "(name a config key that holds one, e.g. trainer.max_epochs, or null)")
    return runs


def search_settings(config: dict[str, Any]) -> dict[str, Any] | None:
    """The workflow's search (None when ``search.enabled`` is off): its settings as the slot
    jobs' ``--spec`` JSON, its name, budget and slot count, and the GPUs of each trial
    (``search.gpus``, else the ``gpu.count`` of a trial's config without its parameters)."""
    section = dict(config.get("search") or {})
    if not section.pop("enabled", False):
        return None
    from expflow.search.cli import require_optuna
    from expflow.search.space import parse_space
    from expflow.search.study import SearchSpec, build_pruner, build_sampler

    settings = workflow_settings(config)
    spec = SearchSpec.from_config(section, settings["common"])
    # Every setting is checked here, at DAG-build time: a bad one is one line, before any job.
    require_optuna()
    parse_space(spec.params)
    build_sampler(spec.sampler)
    build_pruner(spec.pruner)
    gpus = spec.gpus
    if gpus is None:
        from expflow.config import compose_config

        cfg = compose_config(list(spec.overrides), config_dir=settings["config_dir"])
        gpus = int(cfg.gpu.count)
    return {"name": spec.name, "n_trials": spec.n_trials, "slots": spec.parallel, "gpus": gpus,
            "spec": json.dumps(spec.to_json(), sort_keys=True)}


# -- Snakemake's lock after a SIGKILL ---------------------------------------------------------
# Snakemake locks the files of the DAG it runs (.snakemake/locks/) and removes the lock when it
# ends; killed with SIGKILL it cannot, and the next run refuses to start until `--unlock`.
# The workflow records who holds the lock (the `onstart` handler, which runs once the lock is
# taken); a later parse removes a lock whose every recorded holder is a dead process of this host.
LOCK_OWNERS = ".snakemake/expflow/lock_owners.json"


def record_lock_owner(path: str | os.PathLike[str] = LOCK_OWNERS) -> None:
    """In the main Snakemake process, once it holds the lock: add it to the lock's holders
    (dropping dead ones). Nothing when the file cannot be written (the lock stays Snakemake's)."""
    from expflow.atomic import atomic_write_json
    from expflow.package.status import process_alive, process_identity

    owners = [o for o in _read_owners(path) if process_alive(o) is not False]
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, [*owners, process_identity()])
    except OSError:
        pass


def clear_stale_lock(snakemake_dir: str | os.PathLike[str] = ".snakemake",
                     owners_path: str | os.PathLike[str] = LOCK_OWNERS) -> str | None:
    """Remove Snakemake's lock when every process recorded as holding it is dead (this host);
    returns the line saying so, or None when there is no lock, its holder is alive, elsewhere,
    or unknown (a lock from before this record: `snakemake --unlock`, as ever)."""
    from expflow.package.status import process_alive

    locks = Path(snakemake_dir) / "locks"
    try:
        files = [f for f in locks.iterdir() if f.is_file()]
    except OSError:
        return None
    owners = _read_owners(owners_path)
    if not files or not owners or any(process_alive(o) is not False for o in owners):
        return None
    for f in files:
        try:
            f.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            return None
    try:
        os.unlink(owners_path)
    except OSError:
        pass
    pids = ", ".join(str(o.get("pid")) for o in owners)
    return f"expflow: removed the lock of a Snakemake that was killed (pid {pids}); running on"


def _read_owners(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return []
    return [o for o in data if isinstance(o, dict)] if isinstance(data, list) else []


# -- the plan cache ------------------------------------------------------------------------
PLAN_FORMAT = 2  # 2: each run carries its trainer.nodes
# The planner's own code: a change to any of these (an editable install, an upgrade) is a
# new key. Hydra and OmegaConf count by their installed files' sizes and times.
_PLANNER_CODE = ("workflow.py", "planning.py", "config")
_PLANNER_LIBRARIES = ("hydra", "omegaconf", "antlr4")


def plan_key(settings: dict[str, Any], *, estimate: Any) -> str | None:
    """A hash of everything the plan of ``settings`` depends on; None where it cannot be
    known from files alone (no readable config directory; a config that adds search paths
    through ``hydra.searchpath``, which may point anywhere): plan without the cache then."""
    digest = hashlib.sha256()
    digest.update(json.dumps([PLAN_FORMAT, settings["sweep"], settings["common"], estimate],
                             default=str).encode())
    root = Path(settings["config_dir"])
    try:
        if not (root / "config.yaml").is_file():
            return None
        for directory, dirs, files in os.walk(root):
            dirs.sort()
            digest.update(os.path.relpath(directory, root).encode() + b"/\0")  # a group, even an empty one
            for name in sorted(files):
                path = os.path.join(directory, name)
                with open(path, "rb") as f:
                    data = f.read()
                if b"searchpath" in data:
                    return None
                digest.update(os.path.relpath(path, root).encode() + b"\0" + hashlib.sha256(data).digest())
        digest.update(_code_stamp().encode())
    except OSError:
        return None
    return digest.hexdigest()


def _code_stamp() -> str:
    """Sizes and modification times of the planner's code and of the libraries it runs on
    (found without importing them), and the Hydra plugins installed."""
    import importlib.util

    here = Path(__file__).parent
    paths = []
    for name in _PLANNER_CODE:
        path = here / name
        paths += sorted(path.glob("*.py")) if path.is_dir() else [path]
    for name in _PLANNER_LIBRARIES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            paths.append(Path(spec.origin))
    stamps = []
    for path in paths:
        st = path.stat()
        stamps.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    plugins = importlib.util.find_spec("hydra_plugins")
    for location in (plugins.submodule_search_locations or []) if plugins is not None else []:
        stamps += sorted(os.listdir(location))
    return "\n".join(stamps)


def load_plan(path: str | os.PathLike[str], key: str) -> dict[str, RunSpec] | None:
    """The plan kept at ``path`` under ``key``; None when absent, stale or damaged."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or data.get("key") != key:
            return None
        runs = {}
        for run_id, overrides, gpus, gpu_mem_mb, family, estimate, nodes in data["runs"]:
            runs[run_id] = RunSpec(run_id, tuple(overrides), gpus, gpu_mem_mb, family, estimate, nodes)
        return runs
    except (OSError, ValueError, TypeError, KeyError):
        return None


def save_plan(path: str | os.PathLike[str], key: str, runs: dict[str, RunSpec]) -> None:
    """Keep ``runs`` at ``path`` under ``key`` (atomically); an unwritable place is skipped."""
    from expflow.atomic import atomic_write

    body = {"format": PLAN_FORMAT, "key": key,
            "runs": [[s.run_id, list(s.overrides), s.gpus, s.gpu_mem_mb, s.family, s.estimate, s.nodes]
                     for s in runs.values()]}
    try:
        atomic_write(path, lambda f: f.write(json.dumps(body, separators=(",", ":")).encode()))
    except OSError:  # expflow.paths.WriteError included
        pass


# -- packing: longer runs first ----------------------------------------------------------
def train_seconds(benchmark_dir: str | os.PathLike[str]) -> dict[str, float]:
    """Wall seconds of each earlier train job, by run id, from the ``benchmark:`` files
    Snakemake wrote (a tab-separated header and one row per repeat, seconds first). An
    unreadable or malformed file is skipped: it only loses an estimate."""
    seconds: dict[str, float] = {}
    try:
        entries = list(os.scandir(benchmark_dir))
    except OSError:
        return seconds
    for entry in entries:
        if not entry.name.endswith(".tsv"):
            continue
        try:
            with open(entry.path, encoding="utf-8") as f:
                header, row = f.readline().split("\t"), f.readline().split("\t")
            if header[0].strip() == "s":
                seconds[entry.name[: -len(".tsv")]] = float(row[0])
        except (OSError, UnicodeDecodeError, ValueError, IndexError):
            continue
    return seconds


def run_priorities(runs: dict[str, RunSpec], history: dict[str, float]) -> dict[str, int]:
    """Snakemake job priorities that start longer runs first (longest-processing-time order).

    A run's estimate is its ``train.estimate`` value when the config has one, else the mean
    train time of the earlier runs of its family (``history``: seconds by run id). Runs
    without either sit at the median estimate. Priorities are ranks (1 for the shortest);
    empty when nothing is known, so every job keeps Snakemake's default priority 0.
    Estimates from the two sources are never compared: with any config estimate, only
    config estimates count.
    """
    if any(spec.estimate is not None for spec in runs.values()):
        known = {rid: spec.estimate for rid, spec in runs.items() if spec.estimate is not None}
    else:
        by_family: dict[str, list[float]] = {}
        for rid, spec in runs.items():
            if spec.family and rid in history:
                by_family.setdefault(spec.family, []).append(history[rid])
        known = {rid: sum(by_family[spec.family]) / len(by_family[spec.family])
                 for rid, spec in runs.items() if spec.family in by_family}
    if not known:
        return {}
    ranks = {value: i + 1 for i, value in enumerate(sorted(set(known.values())))}
    ordered = sorted(known.values())
    median = ordered[(len(ordered) - 1) // 2]
    return {rid: ranks[known.get(rid, median)] for rid in runs}  # type: ignore[index]


# -- the workflow config, checked at Snakefile parse time -----------------------------
@contextmanager
def config_errors_exit() -> Iterator[None]:
    """An expflow error inside the block is one line on stderr and exit status 1.

    Snakemake prints any exception raised while it parses the Snakefile with the
    traceback of every frame outside Snakemake. A SystemExit passes through it: the
    interpreter prints its message on stderr and exits 1, after Snakemake's API context
    has stopped its logging thread (so the line never lands inside a log line)."""
    try:
        yield
    except ExpflowError as e:
        raise SystemExit(e.line()) from None


def check_config_file(path: str | os.PathLike[str], optional: bool = False) -> None:
    """ConfigError unless ``path`` is a YAML mapping (what Snakemake's ``configfile:`` loads).

    ``optional``: a missing file is fine (``--configfile`` on the command line replaces it)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        if optional:
            return
        raise ConfigError(f"no workflow config at {path} (in {Path.cwd()}): run from the project root, or pass --configfile")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the workflow config must be a mapping of keys (sweep:, common:, ...), not {type(data).__name__}")


def validate_workflow_config(config: dict[str, Any], schema_path: str | os.PathLike[str]) -> None:
    """Validate the workflow config against its JSON schema, filling the schema's defaults
    in place (like ``snakemake.utils.validate``); the first error is one ConfigError line."""
    import yaml
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import best_match

    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, props, instance, subschema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, subschema)

    validator = validators.extend(Draft202012Validator, {"properties": set_defaults})(schema)
    error = best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(schema_error_line(error))


def schema_error_line(error: Any) -> str:
    """One line for a jsonschema ValidationError: the config key, and what is wrong."""
    key = ".".join(str(p) for p in error.absolute_path)
    where = f"workflow config key {key!r}" if key else "workflow config"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties") or {})
        unknown = sorted(str(k) for k in error.instance if k not in known)
        valid = ", ".join(sorted(known))
        return f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; valid: {valid}"
    if error.validator in ("oneOf", "anyOf"):
        described = error.schema.get("description")
        hint = f" (expected {described})" if described else ""
        return f"{where}: {error.instance!r} is not valid{hint}"
    if error.validator == "enum":
        valid = ", ".join("null" if v is None else str(v) for v in error.validator_value)
        return f"{where}: {error.instance!r} is not one of: {valid}"
    return f"{where}: {' '.join(error.message.split())}"
