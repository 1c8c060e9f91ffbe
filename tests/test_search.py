"""The adaptive search: Optuna trials as packages in the workflow, on leased GPUs, pruned early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")  # the search extra; .ci/run installs it

from expflow.errors import ConfigError  # noqa: E402
from expflow.package import SavePackage, Status, last_values  # noqa: E402
from expflow.search.space import parse_space  # noqa: E402
from expflow.search.study import SearchSpec, journal_storage, storage_path  # noqa: E402

from .conftest import REPO, assert_one_line_error, lease_peak, run_cli  # noqa: E402
from .test_slurm import slurm  # noqa: E402,F401  (the test cluster fixture)
from .test_workflow import BARRIER, CRASHY, make_project, packages, snakemake  # noqa: E402


# -- the space, from Hydra's sweep syntax --------------------------------------------------
def test_space_reads_hydra_optuna_sweeper_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = parse_space({"optim.lr": "tag(log, interval(1e-4, 1e-1))", "x": "interval(0, 2)",
                         "n": "tag(int, interval(1, 8))", "k": "range(1, 10, 2)", "f": "range(0.5, 2.0, 0.5)",
                         "model.hidden": "choice([32],[64,32])", "opt": "adamw,sgd", "seed": 3})
    d = space.distributions
    assert d["optim.lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert d["x"] == FloatDistribution(0.0, 2.0)
    assert d["n"] == IntDistribution(1, 8)
    assert d["k"] == IntDistribution(1, 9, step=2)  # Hydra's range excludes its stop
    assert d["f"] == FloatDistribution(0.5, 1.5, step=0.5)
    assert d["model.hidden"] == CategoricalDistribution(["[32]", "[64,32]"])  # lists as their override text
    assert d["opt"] == CategoricalDistribution(["adamw", "sgd"])
    assert space.fixed == ("seed=3",)
    assert space.overrides({"optim.lr": 0.001, "x": 1.5, "n": 4, "k": 3, "f": 1.0, "model.hidden": "[64,32]",
                            "opt": "sgd"}) == [
        "seed=3", "optim.lr=0.001", "x=1.5", "n=4", "k=3", "f=1.0", "model.hidden=[64,32]", "opt=sgd"]


@pytest.mark.parametrize("params, needle", [
    ({"optim.lr": "tag(log, interval(0, 1))"}, "search.params.optim.lr: a log scale needs bounds above 0"),
    ({"optim.lr": "interval(2, 1)"}, "search.params.optim.lr: bounds 2.0, 1.0 must be finite with low <= high"),
    ({"optim.lr": "interval(1"}, "search.params.optim.lr: 'interval(1' is not an override value"),
    ({"k": "range(5, 1)"}, "search.params.k: range(5, 1, 1) is empty"),
    ({"seed": 3}, "search.params: no key to search"),
    ({"m": "choice(a, a)"}, "search.params.m: choice(...) lists an option twice"),
    ({"m": "tag(log, choice(1, 2))"}, "search.params.m: tags apply to interval(...) and range(...)"),
])
def test_bad_space_is_one_line_naming_the_key(params, needle):
    with pytest.raises(ConfigError) as e:
        parse_space(params)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("section, needle", [
    ({"params": {"x": "interval(0, 1)"}, "direction": "up"}, "search.direction: 'up' is not valid; valid: max, min"),
    ({"params": {"x": "interval(0, 1)"}, "n_trials": 0}, "search.n_trials: 0 is not valid"),
    ({"params": {}}, "search.params: give the keys to search"),
    ({"params": {"x": "interval(0, 1)"}, "sampler": "tpe"}, "search.sampler: 'tpe' is not valid"),
    ({"params": {"x": "interval(0, 1)"}, "enqueue": [{"y": 1}]}, "search.enqueue: 'y' is not a searched key"),
    ({"params": {"x": "interval(0, 1)"}, "name": "a/b"}, "search.name: 'a/b' is not valid"),
])
def test_bad_search_settings_are_one_line(section, needle):
    with pytest.raises(ConfigError) as e:
        SearchSpec.from_config({"objective": "val/acc", **section})
    assert needle in str(e.value)


def test_sampler_that_cannot_be_built_is_one_line(tmp_path):
    from expflow.search.study import open_study

    spec = SearchSpec.from_config({"objective": "val/acc", "params": {"x": "interval(0, 1)"},
                                   "sampler": {"_target_": "optuna.samplers.NoSuchSampler"}})
    with pytest.raises(ConfigError) as e:
        open_study(spec, tmp_path)
    assert "search.sampler: cannot build 'optuna.samplers.NoSuchSampler'" in str(e.value)


# -- slots in processes of their own, sharing one study -------------------------------------
SMALL = ["trainer=debug", "trainer.max_epochs=3", "trainer.threads=1", "gpu=cpu", "trainer.progress=plain"]


def _spec(**extra) -> dict:
    section = {"name": "s", "objective": "val/acc", "direction": "max", "n_trials": 4,
               "params": {"optim.lr": "tag(log, interval(1e-5, 1e-1))"},
               "sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": 0}}
    section.update(extra)
    return SearchSpec.from_config(section, SMALL).to_json()


def test_two_slots_spend_the_budget_exactly_once(tmp_path):
    """Two slot processes at once: exactly n_trials trials, each its own package, each told."""
    runs = tmp_path / "runs"
    spec = json.dumps(_spec(n_trials=5))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    procs = [subprocess.Popen([sys.executable, "-m", "expflow", "search-slot", "--runs", str(runs),
                               "--config-dir", str(REPO / "conf"), "--slot", str(i), "--spec", spec],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    study = optuna.load_study(study_name="s", storage=journal_storage(storage_path(runs, "s")))
    trials = study.get_trials()
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    run_ids = [t.user_attrs["run_id"] for t in trials]
    assert len(set(run_ids)) == 5
    for t in trials:
        pkg = SavePackage.open(runs / t.user_attrs["run_id"])
        assert pkg.status() is Status.COMPLETED
        assert pkg.manifest()["search"]["trial"] == t.number
        assert last_values(pkg.scan_records().records)["val/acc"] == pytest.approx(t.value)
    ran = sum(int(o.rsplit("slot", 1)[1].split(":")[1].split()[0]) for o in outs)
    assert ran == 5  # each trial by one slot


def test_trial_of_a_dead_slot_is_continued_from_its_package(tmp_path):
    """A slot killed in the middle of a trial: the next slot continues that trial (same
    trial number, same package, from its checkpoint), and the budget stays exact."""
    runs = tmp_path / "runs"
    # CrashOnce SIGKILLs its process (the slot: trials train in it) after the epoch-2 checkpoint, once.
    spec = _spec(n_trials=2, overrides=["trainer.max_epochs=6", "lifecycle._target_=crashy.CrashOnce"])
    src = tmp_path / "src"
    src.mkdir()
    (src / "crashy.py").write_text(CRASHY)
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}:{src}", CRASH_MARKER=str(tmp_path / "killed"))
    cmd = [sys.executable, "-m", "expflow", "search-slot", "--runs", str(runs), "--config-dir", str(REPO / "conf"),
           "--spec", json.dumps(spec)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    study = optuna.load_study(study_name="s", storage=journal_storage(storage_path(runs, "s")))
    (running,) = study.get_trials()
    assert running.state.name == "RUNNING"
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "trial 0 (run" in second.stdout and "(continued)" in second.stdout
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    pkg = SavePackage.open(runs / trials[0].user_attrs["run_id"])
    attempts = pkg.manifest()["attempts"]
    assert [a["kind"] for a in attempts] == ["train", "continue"] and attempts[1]["from_step"] > 0
    assert pkg.manifest()["progress"]["epoch"] == 6





def test_damaged_journal_is_one_line_and_kept(tmp_path):
    runs = tmp_path / "runs"
    journal = storage_path(runs, "s")
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b'{"op_code": 0, "worker_id": "x", "study_name": "s", "directions": [1]}\n{"op_code": 99}\n')
    before = journal.read_bytes()
    cmd = ["search-slot", "--runs", str(runs), "--config-dir", str(REPO / "conf"), "--spec", json.dumps(_spec())]
    for args in (cmd, ["search", str(runs)]):
        proc = run_cli(*args)
        assert_one_line_error(proc, f"{journal}: not a readable Optuna journal of study 's'")
    assert journal.read_bytes() == before


def test_objective_no_run_records_stops_the_slot_with_one_line(tmp_path):
    runs = tmp_path / "runs"
    spec = json.dumps(_spec(objective="val/accuracy", n_trials=3))
    proc = run_cli("search-slot", "--runs", str(runs), "--config-dir", str(REPO / "conf"), "--spec", spec)
    assert_one_line_error(proc, "search.objective: 'val/accuracy' is not a metric the run", "valid:", "val/acc")
    (trial,) = optuna.load_study(study_name="s", storage=journal_storage(storage_path(runs, "s"))).get_trials()
    assert trial.state.name == "FAIL"  # told, and the search stopped there (not 3 failures)
    again = run_cli("search-slot", "--runs", str(runs), "--config-dir", str(REPO / "conf"), "--spec", spec)
    assert_one_line_error(again, "search.objective: 'val/accuracy' is not a metric")  # a retried slot: no new trial
    assert len(optuna.load_study(study_name="s", storage=journal_storage(storage_path(runs, "s"))).get_trials()) == 1


SCORER = """
import sys, time
import expflow

lr = float(sys.argv[1])
for step in range(10**6):  # a good rate ends after 5 steps; a poor one runs until it is stopped
    expflow.log({"score": lr}, step=step)
    if lr >= 0.5 and step == 4:
        break
    time.sleep(0.05)
    if step > 2400:
        sys.exit("never stopped")
"""


def test_command_run_trial_is_pruned_from_the_records_it_writes(tmp_path):
    """A whole program as a trial (runner=command): the supervisor reports what it records;
    the pruner's stop ends the program (SIGTERM) and the package is PRUNED."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "score.py").write_text(SCORER)
    spec = SearchSpec.from_config({
        "name": "s", "objective": "score", "direction": "max", "n_trials": 2,
        "params": {"optim.lr": "choice(1.0, 0.001)"}, "enqueue": [{"optim.lr": 1.0}, {"optim.lr": 0.001}],
        "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1, "n_warmup_steps": 0},
    }, ["runner=command", "runner.argv=[python,score.py,${optim.lr}]", "runner.ingest_every_s=0.2", "gpu=cpu",
        "trainer.progress=plain"])
    proc = run_cli("search-slot", "--runs", "runs", "--config-dir", str(REPO / "conf"), "--spec",
                   json.dumps(spec.to_json()), cwd=proj, timeout=200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    first, second = optuna.load_study(study_name="s", storage=journal_storage(storage_path(proj / "runs", "s"))).get_trials()
    assert (first.state.name, first.value) == ("COMPLETE", 1.0)
    assert second.state.name == "PRUNED"
    pkg = SavePackage.open(proj / "runs" / second.user_attrs["run_id"])
    assert pkg.status() is Status.PRUNED and pkg.manifest()["pruned"]["value"] == 0.001
    assert last_values(pkg.scan_records().records)["score"] == 0.001  # its records are kept


# -- the workflow ----------------------------------------------------------------------------
def _search_workflow(n_trials: int, parallel: int, **extra) -> dict:
    search = {
        "enabled": True, "name": "lr_width", "objective": "val/acc", "direction": "max",
        "params": {"optim.lr": "tag(log, interval(1e-7, 1e-1))", "model.hidden": "choice([16],[64])"},
        "n_trials": n_trials, "parallel": parallel,
        "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 0},
        # Three good trials first: the median the pruner compares with is theirs; a trial with a
        # rate too small to learn in an epoch falls far below it.
        "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 3, "n_warmup_steps": 0},
        "enqueue": [{"optim.lr": 0.01, "model.hidden": [64]}, {"optim.lr": 0.02, "model.hidden": [64]},
                    {"optim.lr": 0.005, "model.hidden": [16]}],
    }
    search.update(extra)
    return {"sweep": [], "common": ["trainer=debug", "trainer.max_epochs=4", "trainer.threads=1", "gpu.count=1",
                                    "gpu.max_jobs_per_gpu=1", "gpu.allow_cpu=true"],
            "train": {"threads": 1, "retries": 0}, "analyze": {"scripts": []}, "report": {"enabled": True},
            "search": search}


def _study(proj: Path):
    return optuna.load_study(study_name="lr_width", storage=journal_storage(storage_path(proj / "runs", "lr_width")))


@pytest.mark.slow
def test_workflow_search_twelve_trials_three_at_once_on_four_gpus(tmp_path):
    workflow = _search_workflow(12, 3)
    workflow["common"].append("lifecycle._target_=barrier.MeetAtBarrier")
    proj = make_project(tmp_path, workflow, {"src/barrier.py": BARRIER})
    barrier = tmp_path / "barrier"
    # The first three trials wait for one another, holding their leases: three trials at once
    # by construction; later ones pass (the barrier stays open).
    env = {"EXPFLOW_SIMULATED_GPUS": "4x81920", "EXPFLOW_LEASE_DIR": str(tmp_path / "leases"),
           "BARRIER_DIR": str(barrier), "BARRIER_MIN": "3", "BARRIER_TIMEOUT": "300"}
    proc = snakemake(proj, "--cores", "4", "--resources", "gpu=4", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pkgs = packages(proj)
    assert len(pkgs) == 12 and len({p.run_id for p in pkgs}) == 12
    study = _study(proj)
    trials = study.get_trials()
    assert len(trials) == 12
    assert sorted(p.manifest()["search"]["trial"] for p in pkgs) == list(range(12))
    # The study's best trial is the best objective among the packages that completed.
    finals = {p.run_id: last_values(p.scan_records().records)["val/acc"] for p in pkgs if p.status() is Status.COMPLETED}
    assert study.best_trial.user_attrs["run_id"] == max(finals, key=finals.get)
    assert study.best_value == pytest.approx(max(finals.values()))
    # The median pruner stopped at least one trial early: PRUNED, at an epoch before the last,
    # with its checkpoint and records kept.
    pruned = [p for p in pkgs if p.status() is Status.PRUNED]
    assert pruned, [(t.number, t.state.name, t.params) for t in trials]
    for p in pruned:
        m = p.manifest()
        assert m["progress"]["epoch"] < 4 and m["pruned"]["study"] == "lr_width"
        assert p.checkpoints().list() and last_values(p.scan_records().records)["val/acc"] == pytest.approx(m["pruned"]["value"])
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert sum(t.state.name == "PRUNED" for t in trials) == len(pruned)
    # Never two trials on one device; three at once (the barrier).
    spans = [(lease["acquired"], lease["released"], lease["gpus"][0]) for p in pkgs for lease in p.manifest()["leases"]]
    assert lease_peak(spans) == 3
    # The results: `expflow search` and its page, the report, `expflow status`.
    out = run_cli("search", "runs", "--json", cwd=proj, env={"PYTHONPATH": str(proj / "src")})
    assert out.returncode == 0, out.stderr
    (result,) = json.loads(out.stdout)
    assert result["best"]["number"] == study.best_trial.number and result["counts"]["PRUNED"] == len(pruned)
    page = (proj / "runs" / ".search" / "lr_width" / "search.html").read_text()
    assert "optimization history" in page and 'data-param="optim.lr"' in page
    status = run_cli("status", "--runs", "runs", cwd=proj, env={"PYTHONPATH": str(proj / "src")})
    assert f"{len(pruned)} PRUNED" in status.stdout
    assert (proj / "runs" / "report.html").exists()
    # Run again: nothing to do.
    dry = snakemake(proj, "-n", env=env)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr


@pytest.mark.slow
def test_workflow_search_killed_then_rerun_finishes_the_budget_once(tmp_path):
    proj = make_project(tmp_path, _search_workflow(6, 2, pruner=None, enqueue=[]))
    env = {"EXPFLOW_SIMULATED_GPUS": "2x81920", "EXPFLOW_LEASE_DIR": str(tmp_path / "leases")}
    full_env = dict(os.environ, PYTHONPATH=str(proj / "src"), **env)
    full_env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=2"], cwd=proj,
                            env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = storage_path(proj / "runs", "lr_width")
    deadline = time.monotonic() + 300
    try:
        # Killed once two trials are told and more are under way: the whole workflow at once.
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                states = [t.state.name for t in _study(proj).get_trials()] if journal.exists() else []
            except KeyError:  # the journal is there, the study not yet
                states = []
            if states.count("COMPLETE") >= 2 and "RUNNING" in states:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the workflow ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _study(proj).get_trials()
    assert any(t.state.name == "RUNNING" for t in before)
    # The same command again (Snakemake's lock, left by the SIGKILL, is removed: its holder is dead).
    assert list((proj / ".snakemake" / "locks").iterdir())
    again = snakemake(proj, "--cores", "2", "--resources", "gpu=2", env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "removed the lock of a Snakemake that was killed" in again.stderr
    trials = _study(proj).get_trials()
    assert len(trials) == 6 and [t.state.name for t in trials] == ["COMPLETE"] * 6
    run_ids = [t.user_attrs["run_id"] for t in trials]
    assert len(set(run_ids)) == 6
    pkgs = packages(proj)
    assert sorted(p.run_id for p in pkgs) == sorted(run_ids)  # no package without its trial
    assert all(p.status() is Status.COMPLETED for p in pkgs)
    # Trials told before the kill kept their values; the ones under way were continued.
    for t in before:
        if t.state.name == "COMPLETE":
            assert trials[t.number].value == t.value


@pytest.mark.slow
def test_search_runs_under_the_slurm_profile(slurm, tmp_path):  # noqa: F811
    """The same search on the test cluster: each slot is a Slurm job holding one trial's GPU;
    the slots on their nodes share the study's journal file."""
    from .test_slurm import run_on_slurm

    wf = _search_workflow(4, 2, pruner=None, enqueue=[])
    wf["slurm"] = {"partition": "debug", "account": "expflow"}
    wf["train"] = {"threads": 1, "mem_mb": 1000, "runtime": 10, "retries": 0}
    proj = make_project(tmp_path, wf)
    proc = run_on_slurm(proj, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = _study(proj).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    pkgs = packages(proj)
    assert sorted(p.run_id for p in pkgs) == sorted(t.user_attrs["run_id"] for t in trials)
    jobs = set()
    for p in pkgs:
        m = p.manifest()
        assert p.status() is Status.COMPLETED
        (job,) = m["scheduler_jobs"]
        granted = [int(g) for g in str(job["granted_gpus"]).split(",")]
        assert len(m["gpus"]) == 1 and m["gpus"][0] in granted
        jobs.add(job["job_id"])
    assert 1 <= len(jobs) <= 2  # the trials ran in the two slot jobs


def test_hydra_optuna_sweeper_gets_the_objective_one_package_per_trial(tmp_path):
    """`python -m expflow.train -m hydra/sweeper=optuna`: Hydra's own sweeper plugin drives the
    trials; train returns the objective (objective=<metric>); each trial is a package."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # .ci/run installs it (--no-deps)
    runs = tmp_path / "runs"
    proc = run_cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
                   "hydra.sweeper.direction=maximize", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0",
                   "optim.lr=tag(log, interval(1e-4, 1e-1))", "model.hidden=choice([16],[64])", "objective=val/acc",
                   f"paths.runs={runs}", *SMALL, module="expflow.train", env={"PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    pkgs = [SavePackage.open(p) for p in sorted(runs.iterdir()) if (p / "manifest.json").exists()]
    assert len(pkgs) == 3 and all(p.status() is Status.COMPLETED for p in pkgs)
    import yaml

    (results,) = runs.glob(".sweeps/*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())["best_value"]
    assert best == pytest.approx(max(last_values(p.scan_records().records)["val/acc"] for p in pkgs))
    # The objective names a metric; not a part of the run id (it changes no training).
    assert all(p.config().objective == "val/acc" for p in pkgs)


def test_unreachable_study_warns_once_and_the_run_trains_on(tmp_path, capsys):
    """A trial whose study cannot be reached (its journal gone, a broken storage): the run is
    not stopped by it; one warning, and no pruning from then on."""
    from expflow.search.trial import TrialReport

    report = TrialReport({"storage": str(tmp_path / "missing" / "study.journal"), "study": "s", "trial_id": 0,
                          "objective": "val/acc", "pruner": None})
    assert report.observe({"val/acc": 0.5}, 1) is False
    assert report.observe({"val/acc": 0.4}, 2) is False
    err = capsys.readouterr().err
    assert err.count("expflow: warning: search study 's'") == 1 and "no longer pruned" in err


def test_a_trial_stopped_on_a_signal_stays_for_the_next_slot():
    """A slot's run stopped on a signal (its error type the stop's reason: TIMEOUT, PREEMPTED,
    CANCELLED) has checkpointed: the slot is being stopped, and the trial is continued by the
    next slot rather than told FAIL."""
    from expflow.interrupt import REASONS
    from expflow.search.slot import INTERRUPTED

    assert set(REASONS) <= set(INTERRUPTED) and {"Terminated", "KeyboardInterrupt"} <= set(INTERRUPTED)


LOCK_HOLDER = """
import os, sys, threading
from expflow.search.study import claim_lock, journal_storage
os.chdir(sys.argv[2])  # the runs directory given relative, as the workflow gives it
if sys.argv[1] == "journal":
    journal_storage("runs/.search/s/study.journal")._backend._lock.acquire()  # as an append holds it
else:
    held = claim_lock("runs", "s")
    held.__enter__()
print("held", flush=True)
threading.Event().wait(300)  # until killed
"""
WAITER = """
import os, sys, threading
import optuna.storages.journal
from optuna.study import StudyDirection
from expflow.search.study import claim_lock, journal_storage
os.chdir(sys.argv[2])
before = os.times().user + os.times().system  # the wait alone counts, not the imports
if sys.argv[1] == "journal":
    storage = journal_storage("runs/.search/s/study.journal")
    threading.Thread(target=lambda: storage.create_new_study([StudyDirection.MAXIMIZE], "s"), daemon=True).start()
else:
    threading.Thread(target=lambda: claim_lock("runs", "s").__enter__(), daemon=True).start()
threading.Event().wait(1.5)
print(os.times().user + os.times().system - before)
"""


@pytest.mark.parametrize("which", ["journal", "claims"])
def test_a_lock_a_killed_slot_left_is_waited_on_asleep(tmp_path, which):
    """A slot killed (SIGKILL) while it held the study's journal or claim lock leaves the lock's
    symlink. The next slot waits out its grace period asleep: with a relative runs directory the
    link's target once resolved nowhere, and Optuna's lock then retried at once, at 100% CPU, for
    ever (the workflow rerun after a kill hung)."""
    (tmp_path / "runs" / ".search" / "s").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, which, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        assert holder.stdout.readline() == "held\n"
    finally:
        holder.kill()
        holder.wait()
    proc = subprocess.run([sys.executable, "-c", WAITER, which, str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    cpu = float(proc.stdout.split()[-1])
    assert cpu < 0.5, f"{cpu:.2f} s of CPU in 1.5 s of waiting: the waiter spins"
