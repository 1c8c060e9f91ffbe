"""A trial slot: ask the shared study for a trial, make its package, train it, tell the result,
and again until the search's trial budget is spent.

The workflow runs ``search.parallel`` slots, each a job holding the GPUs of one trial (so
``--resources gpu=N`` bounds them like any train job). A trial's run id is its composed
config's, as for every run: the same values give the same package. Every claim (a new
trial, or a trial whose slot died) is made under the search's claim lock, so the budget is
never overrun and no trial is run by two slots. A trial whose slot was killed is continued
from its package by the next slot that finds it (its checkpoint, or its final records when
it had finished training); one whose package fails is told FAIL.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expflow.errors import ConfigError, ExpflowError
from expflow.interrupt import REASONS
from expflow.search.space import Space, parse_space
from expflow.search.study import SearchSpec, claim_lock, open_study, storage_path
from expflow.search.trial import TRIAL_ENV

# The slot is being stopped (a signal stop's reason included): the trial stays for the next slot.
INTERRUPTED = ("Terminated", "KeyboardInterrupt", *REASONS)


@dataclass
class TrialOutcome:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    run_id: str | None = None
    value: float | None = None
    continued: bool = False
    note: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # ask, materialize, train, tell (seconds)


def run_slot(spec: SearchSpec, runs_dir: str | Path, *, config_dir: str | Path | None = None, slot: int = 0,
             out: Any = None) -> list[TrialOutcome]:
    """Run trials until the budget is spent; returns what this slot ran."""
    from expflow.package.status import process_identity

    out = sys.stdout if out is None else out
    space = parse_space(spec.params)
    runs_dir = Path(runs_dir)
    study = open_study(spec, runs_dir)
    # Each slot draws from its own sampler: a fixed seed is shifted per slot and by the
    # trials already made, so no two slots (nor a slot's retry) draw the same values.
    from expflow.search.study import build_sampler

    study.sampler = build_sampler(spec.sampler, offset=slot * 100_003 + len(study.get_trials(deepcopy=False)))
    me = process_identity()
    outcomes: list[TrialOutcome] = []
    while True:
        started = time.perf_counter()
        with claim_lock(runs_dir, spec.name):
            claimed = claim(study, spec, space, runs_dir, me)
        if claimed is None:
            break
        number, trial_id, params, continued = claimed
        asked = time.perf_counter()
        outcome = run_trial(study, spec, space, runs_dir, config_dir, number, trial_id, params, continued=continued)
        outcome.timings["ask"] = asked - started
        outcomes.append(outcome)
        shown = f" {spec.objective}={outcome.value:.6g}" if outcome.value is not None else ""
        print(f"trial {number} (run {outcome.run_id or '-'}): {outcome.state}{shown}"
              f"{' (continued)' if continued else ''}{': ' + outcome.note if outcome.note else ''} "
              f"[{' '.join(space.overrides(params)[len(space.fixed):])}]", file=out, flush=True)
    return outcomes


def claim(study: Any, spec: SearchSpec, space: Space, runs_dir: Path,
          me: dict[str, Any]) -> tuple[int, int, dict[str, Any], bool] | None:
    """Under the claim lock: a trial whose slot died (to continue), else a new trial while the
    budget lasts, else None. The claimed trial records this slot as its owner."""
    from optuna.trial import TrialState

    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("config_error"):  # a setting no trial can meet: a retried slot stops here too
            raise ConfigError(str(t.user_attrs["config_error"]))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if orphaned(t, runs_dir):
            storage.set_trial_user_attr(t._trial_id, "owner", me)
            return t.number, t._trial_id, dict(t.params), True
    # The budget counts trials begun; ask() takes an enqueued (WAITING) trial first.
    begun = [t for t in study.get_trials(deepcopy=False) if t.state is not TrialState.WAITING]
    if len(begun) >= spec.n_trials:
        return None
    trial = study.ask(space.distributions)
    storage.set_trial_user_attr(trial._trial_id, "owner", me)
    return trial.number, trial._trial_id, dict(trial.params), False


def orphaned(trial: Any, runs_dir: Path) -> bool:
    """A RUNNING trial that no live slot runs: its owner process is gone (on this host), or,
    owned on another host, its package shows CRASHED."""
    from expflow.package import SavePackage, Status
    from expflow.package.manifest import is_package
    from expflow.package.status import process_alive

    owner = trial.user_attrs.get("owner")
    if not isinstance(owner, dict):
        return True  # asked by a slot that died holding the lock (the lock's grace period passed)
    alive = process_alive(owner)
    if alive is not None:
        return not alive
    run_id = trial.user_attrs.get("run_id")
    if run_id and is_package(runs_dir / run_id):
        try:
            return SavePackage.open(runs_dir / run_id).status() is Status.CRASHED
        except ExpflowError:
            return False
    return False


def run_trial(study: Any, spec: SearchSpec, space: Space, runs_dir: Path, config_dir: str | Path | None,
              number: int, trial_id: int, params: dict[str, Any], *, continued: bool = False) -> TrialOutcome:
    """Materialize the trial's package (or open it: same config, same package), train it
    with the trial named in ``EXPFLOW_TRIAL`` (pruning), and tell the study its result."""
    from omegaconf import OmegaConf
    from optuna.trial import TrialState

    from expflow.config import compose_config
    from expflow.launch import create_package, run_package
    from expflow.package import SavePackage, last_values
    from expflow.package.manifest import is_package
    from expflow.runid import config_id

    outcome = TrialOutcome(number, "FAIL", continued=continued)
    storage = study._storage
    t0 = time.perf_counter()
    overrides = [*spec.overrides, *space.overrides(params), f"paths.runs={runs_dir}"]
    pkg = None
    try:
        cfg = compose_config(overrides, config_dir=config_dir)
        run_id = config_id(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))  # type: ignore[arg-type]
        outcome.run_id = run_id
        storage.set_trial_user_attr(trial_id, "run_id", run_id)
        target = runs_dir / run_id
        if is_package(target):  # continued, or these values ran before (another trial, a sweep): the same run
            pkg = SavePackage.open(target)
        else:
            pkg = create_package(cfg, overrides=overrides, package_dir=target, claim=True)
        record = {"study": spec.name, "trial": number, "params": params, "objective": spec.objective}
        pkg.update_manifest(lambda m: m.setdefault("search", record))
        t1 = time.perf_counter()
        os.environ[TRIAL_ENV] = json.dumps({"storage": str(storage_path(runs_dir, spec.name).resolve()),
                                            "study": spec.name, "trial_id": trial_id, "number": number,
                                            "objective": spec.objective, "pruner": spec.pruner})
        try:
            result = run_package(pkg, from_snapshot=False)
        finally:
            os.environ.pop(TRIAL_ENV, None)
        t2 = time.perf_counter()
        outcome.timings.update(materialize=t1 - t0, train=t2 - t1)
    except ExpflowError as e:
        error = (pkg.manifest().get("error") or {}) if pkg is not None else {}
        if error.get("type") in INTERRUPTED:
            raise  # the slot is stopped: the trial stays RUNNING, for the next slot to continue
        outcome.note = e.one_line()
        storage.set_trial_user_attr(trial_id, "error", outcome.note[:500])
        _tell(study, number, TrialState.FAIL, None, outcome)
        return outcome
    value = last_values(pkg.scan_records().records).get(spec.objective)
    if value is not None and math.isfinite(value):
        outcome.value = float(value)
    if result.status.value == "PRUNED":
        _tell(study, number, TrialState.PRUNED, None, outcome)
    elif outcome.value is None:
        recorded = sorted(last_values(pkg.scan_records().records))
        outcome.note = f"the run recorded no value of the objective {spec.objective!r}"
        storage.set_trial_user_attr(trial_id, "error", outcome.note)
        line = None
        if spec.objective not in recorded:  # not a bad trial: a name no run records (stop the search)
            line = (f"search.objective: {spec.objective!r} is not a metric the run {pkg.path} recorded; "
                    f"valid: {', '.join(recorded) or 'none recorded'}")
            storage.set_trial_user_attr(trial_id, "config_error", line)
        _tell(study, number, TrialState.FAIL, None, outcome)
        if line:
            raise ConfigError(line)
    else:
        _tell(study, number, TrialState.COMPLETE, outcome.value, outcome)
    return outcome


def _tell(study: Any, number: int, state: Any, value: float | None, outcome: TrialOutcome) -> None:
    started = time.perf_counter()
    study._storage.set_trial_user_attr(study._storage.get_trial_id_from_study_id_trial_number(
        study._study_id, number), "timings", {k: round(v, 6) for k, v in outcome.timings.items()})
    if value is None:
        study.tell(number, state=state)
    else:
        study.tell(number, value)
    outcome.state = state.name
    outcome.timings["tell"] = time.perf_counter() - started
