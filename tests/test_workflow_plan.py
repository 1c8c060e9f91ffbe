"""Sweep planning: deterministic run ids from composed configs, at DAG-build speed."""

from __future__ import annotations

import json
import shutil

import pytest

from expflow.errors import ConfigError
from expflow.planning import Planner, composed_id
from expflow.workflow import (
    check_config_file,
    config_errors_exit,
    plan_workflow,
    validate_workflow_config,
    workflow_settings,
)

from .conftest import CONF, REPO


@pytest.fixture(scope="module")
def planner():
    return Planner(CONF)


def test_sweep_line_expands_like_multirun(planner):
    runs = planner.expand("optim.lr=1e-3,3e-3 seed=range(3)")
    assert len(runs) == 6 and len({r.run_id for r in runs}) == 6
    assert runs[0].overrides == ("optim.lr=0.001", "seed=0")


@pytest.mark.parametrize("line", [
    "optim.lr=1e-3,3e-3 seed=range(2)",
    "+freq=lr_sweep",
    "model=mlp,cnn trainer.max_epochs=2",
    "+freq=regression seed=1,2",
    "model.hidden=[32],[64,32] optim=sgd",
    "+lifecycle.extra=5 checkpoint.persistent_keep=null",
])
def test_planned_id_is_the_composed_config_id(planner, line):
    for spec in planner.expand(line, ["trainer=debug"]):
        assert spec.run_id == composed_id(spec.overrides, CONF)


def test_same_config_same_id_any_change_new_id(planner):
    a = planner.expand("optim.lr=1e-3")[0].run_id
    assert planner.expand("optim.lr=0.001")[0].run_id == a  # same value, other spelling
    assert planner.expand("")[0].run_id == a  # the default lr is 1e-3
    assert planner.expand("optim.lr=2e-3")[0].run_id != a
    assert planner.expand("model=cnn")[0].run_id != a


def test_duplicate_runs_across_lines_are_one(planner):
    runs = planner.plan(["optim.lr=1e-3,3e-3", "+freq=lr_sweep"])
    assert len(runs) == 3  # lr_sweep's 1e-3 and 3e-3 are the first line's runs


def test_gpu_count_comes_from_the_config(planner):
    assert planner.expand("gpu.count=2")[0].gpus == 2
    assert planner.expand("gpu=cpu")[0].gpus == 0


@pytest.mark.parametrize("line, needle", [
    ("optim.lr=abc", "optim.lr"),
    ("trainer.nope=1", "trainer.nope"),
    ("model=nope", "cnn, mlp"),
    ("optim.lr=[1", "bad override"),
    ("trainer.max_epochs=0", ">= 1"),
])
def test_bad_sweep_is_one_line_error(planner, line, needle):
    with pytest.raises(ConfigError) as info:
        planner.expand(line)
    assert needle in info.value.one_line()


def test_command_line_sweep_string_is_normalized():
    s = workflow_settings({"sweep": "optim.lr=1e-3,3e-3 seed=range(2)", "common": "trainer=debug gpu=cpu"})
    assert s["sweep"] == ["optim.lr=1e-3,3e-3 seed=range(2)"] and s["common"] == ["trainer=debug", "gpu=cpu"]


def test_ten_thousand_runs_plan(planner):
    """10k runs plan to 10k distinct ids (how fast: benchmarks/dag_scale.py)."""
    lrs = ",".join(f"{i}e-4" for i in range(1, 11))
    wds = ",".join(f"0.{i}" for i in range(10))
    runs = planner.plan([f"optim.lr={lrs} optim.weight_decay={wds} seed=range(100)"])
    assert len(runs) == 10_000


# -- the workflow config, checked at Snakefile parse time (one line each) --------------
SCHEMA = REPO / "workflows" / "schemas" / "workflow.schema.yaml"


def test_workflow_config_defaults_are_filled():
    config = {"sweep": "seed=1", "train": {"retries": 0}}
    validate_workflow_config(config, SCHEMA)
    assert config["train"] == {"retries": 0, "threads": 1, "mem_mb": 2000, "runtime": 60, "signal_s": 60,
                               "estimate": None}
    assert config["align"] == {"enabled": False, "spec": "conf/align/workflow.yaml", "out": None, "strict": False}
    assert config["runs_dir"] == "runs" and config["sync"]["target"] is None


@pytest.mark.parametrize("config, needles", [
    ({"sweep": [], "bogus": 1}, ["unknown key 'bogus'", "valid: align, analyze"]),
    ({"sweep": [], "train": {"threads": "abc"}}, ["'train.threads'", "'abc' is not of type 'integer'"]),
    ({"sweep": [], "train": {"threads": 0}}, ["'train.threads'", "minimum of 1"]),
    ({"sweep": [], "sync": {"target": "wandb"}}, ["'sync.target'", "not one of: swanlab, mlflow, null"]),
    ({"sweep": 5}, ["'sweep'", "5 is not valid (expected sweep lines"]),
    ({"common": []}, ["'sweep' is a required property"]),
])
def test_bad_workflow_config_is_one_line(config, needles):
    with pytest.raises(ConfigError) as info:
        validate_workflow_config(config, SCHEMA)
    line = info.value.one_line()
    assert str(info.value) == line
    for needle in needles:
        assert needle in line, line


def test_workflow_config_file_must_be_a_yaml_mapping(tmp_path):
    path = tmp_path / "workflow.yaml"
    with pytest.raises(ConfigError, match="no workflow config at"):
        check_config_file(path)
    check_config_file(path, optional=True)  # --configfile given instead
    path.write_text("sweep: [a\n")
    with pytest.raises(ConfigError, match=r"line 2, column 1: not valid YAML: expected ','"):
        check_config_file(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        check_config_file(path)
    path.write_text("sweep: [seed=1]\n")
    check_config_file(path)


def test_config_errors_exit_is_one_line_and_status_1():
    with pytest.raises(SystemExit) as info, config_errors_exit():
        raise ConfigError("unknown key 'optim.lrr';\n  valid keys under 'optim': lr")
    assert info.value.code == "expflow: error: unknown key 'optim.lrr'; valid keys under 'optim': lr"
    with pytest.raises(KeyError), config_errors_exit():  # not a config error: left alone
        raise KeyError("x")


# -- the plan kept between parses ---------------------------------------------------------
@pytest.fixture
def project_conf(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    return conf


def _no_planning(monkeypatch):
    """Planning from here on fails the test: the plan must come from the cache."""
    import expflow.planning

    def refuse(*args, **kwargs):
        raise AssertionError("planned again")

    monkeypatch.setattr(expflow.planning, "Planner", refuse)


def test_an_unchanged_project_loads_its_kept_plan(project_conf, tmp_path, monkeypatch):
    cache = tmp_path / "runs" / ".workflow" / "plan.json"
    config = {"sweep": ["optim.lr=1e-3,3e-3 seed=range(2)"], "config_dir": str(project_conf),
              "train": {"estimate": "trainer.max_epochs"}}
    planned = plan_workflow(config, families=True, cache=cache)
    assert cache.is_file() and len(planned) == 4
    with monkeypatch.context() as m:
        _no_planning(m)
        assert plan_workflow(config, families=True, cache=cache) == planned  # ids, overrides, families, estimates
    # Families are planned whether asked or not: the first train times change no key.
    with monkeypatch.context() as m:
        _no_planning(m)
        assert plan_workflow(config, cache=cache) == planned
    # Anything the plan depends on is a new key: the sweep, the estimate key, a config file.
    assert len(plan_workflow({**config, "sweep": ["seed=range(3)"]}, cache=cache)) == 3
    assert {s.estimate for s in plan_workflow({**config, "train": {"estimate": "seed"}}, cache=cache).values()} == {0, 1}
    before = plan_workflow(config, cache=cache)
    (project_conf / "optim" / "adamw.yaml").write_text((project_conf / "optim" / "adamw.yaml").read_text() + "\n# edited\n")
    with open(project_conf / "config.yaml", "a") as f:
        f.write("notes: null\n")  # a new top-level key: every run's config (and id) changes
    with pytest.raises(ConfigError):  # planned again, so the composed config is checked again
        plan_workflow(config, cache=cache)
    (project_conf / "config.yaml").write_text((CONF / "config.yaml").read_text())
    assert plan_workflow(config, cache=cache) == before


def test_a_damaged_or_unwritable_plan_cache_only_costs_a_planning(project_conf, tmp_path):
    config = {"sweep": ["seed=range(2)"], "config_dir": str(project_conf)}
    cache = tmp_path / "plan.json"
    planned = plan_workflow(config, cache=cache)
    for damage in (b"", b"{not json", b'{"format": 1, "key": 3}', b"[1, 2]", cache.read_bytes()[:40],
                   cache.read_bytes().replace(b'"runs":[[', b'"runs":[["x"],[')):
        cache.write_bytes(damage)
        assert plan_workflow(config, cache=cache) == planned
        assert json.loads(cache.read_text())["runs"]  # rewritten whole
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert plan_workflow(config, cache=blocked / "plan.json") == planned


def test_a_config_with_extra_search_paths_is_planned_every_time(project_conf, tmp_path):
    with open(project_conf / "config.yaml", "a") as f:
        f.write("# hydra:\n#   searchpath: [pkg://elsewhere]\n")
    cache = tmp_path / "plan.json"
    plan_workflow({"sweep": ["seed=1"], "config_dir": str(project_conf)}, cache=cache)
    assert not cache.exists()


def test_stale_snakemake_lock_is_removed_only_when_its_holder_died(tmp_path):
    """Snakemake killed by SIGKILL leaves .snakemake/locks/; the workflow removes it when every
    recorded holder is a dead process, and never while one lives or when none is recorded."""
    import json
    import subprocess
    import sys

    from expflow.package.status import process_identity
    from expflow.workflow import clear_stale_lock, record_lock_owner

    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("x")
    owners = tmp_path / "owners.json"
    assert clear_stale_lock(tmp_path / ".snakemake", owners) is None  # no holder recorded: left for --unlock
    record_lock_owner(owners)  # this process: alive
    assert clear_stale_lock(tmp_path / ".snakemake", owners) is None and (locks / "0.input.lock").exists()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    dead = process_identity(child.pid)
    child.kill()
    child.wait()
    owners.write_text(json.dumps([dead]))
    line = clear_stale_lock(tmp_path / ".snakemake", owners)
    assert line and f"pid {child.pid}" in line
    assert not list(locks.iterdir()) and not owners.exists()
    owners.write_text("{damaged")
    (locks / "0.input.lock").write_text("x")
    assert clear_stale_lock(tmp_path / ".snakemake", owners) is None  # unreadable record: the lock stays


def test_train_jobs_ask_for_a_warning_before_their_time_limit():
    """train.signal_s becomes the train command's EXPFLOW_STOP_BEFORE_END_S (a Slurm job's run
    warns itself that long before the job's end); null asks for none."""
    from expflow.workflow import train_signal

    config = {"sweep": "seed=1", "train": {}}
    validate_workflow_config(config, SCHEMA)
    assert train_signal(config) == "EXPFLOW_STOP_BEFORE_END_S=60 "
    assert train_signal({"train": {"signal_s": 20}}) == "EXPFLOW_STOP_BEFORE_END_S=20 "
    assert train_signal({"train": {"signal_s": None}}) == ""


def test_the_train_command_runs_the_package_of_its_config_with_the_warning(tmp_path):
    """The train rule's command, filled in as Snakemake fills it, gives `expflow run` the
    config's directory (spaces and all) and the warning in its environment."""
    import shlex
    import subprocess

    from expflow.workflow import train_command

    log = tmp_path / "train.log"
    command = (train_command({"train": {"signal_s": 60}})
               .replace("{input.config:q}", shlex.quote(str(tmp_path / "my runs" / "abc" / "config.yaml")))
               .replace("{log}", shlex.quote(str(log))).replace("{{", "{").replace("}}", "}"))
    fake = 'expflow() { printf "%s|" "$EXPFLOW_STOP_BEFORE_END_S" "$@"; }; '
    subprocess.run(["bash", "-euo", "pipefail", "-c", fake + command], check=True, timeout=30)
    assert log.read_text() == f"60|run|{tmp_path / 'my runs' / 'abc'}|"


def test_the_time_limit_warning_is_armed_from_the_jobs_end_time(monkeypatch):
    """In a Slurm job the warning fires signal_s before the end time scontrol reports; not in
    a job, without the variable, or with the end nearer than that, no timer."""
    import signal
    import time
    from datetime import datetime

    from expflow import interrupt

    end = time.time() + 100
    monkeypatch.setattr(interrupt, "_scontrol_job", lambda job: [
        "JobId=7", f"EndTime={datetime.fromtimestamp(end).strftime('%Y-%m-%dT%H:%M:%S')}", "JobState=RUNNING"])
    armed = []

    class Timer:
        def __init__(self, delay, fn, args):
            armed.append((delay, fn, args))

        def start(self):
            pass

    monkeypatch.setattr("threading.Timer", Timer)
    job = {"SLURM_JOB_ID": "7", "EXPFLOW_STOP_BEFORE_END_S": "30"}
    assert interrupt.arm_time_limit_warning(job) is not None
    ((delay, fn, args),) = armed
    assert 68 < delay <= 70 and args[1] == signal.SIGUSR1
    assert interrupt.arm_time_limit_warning({"EXPFLOW_STOP_BEFORE_END_S": "30"}) is None
    assert interrupt.arm_time_limit_warning({"SLURM_JOB_ID": "7"}) is None
    assert interrupt.arm_time_limit_warning({**job, "EXPFLOW_STOP_BEFORE_END_S": "200"}) is None
    assert len(armed) == 1


@pytest.mark.parametrize(("fields", "restart_count", "reason"), [
    (["JobState=PREEMPTED", "Restarts=1"], None, "PREEMPTED"),
    (["JobState=TIMEOUT", "Restarts=0"], None, "TIMEOUT"),
    (["JobState=CANCELLED", "Restarts=2"], "1", "CANCELLED"),  # a cancel after a requeue
    # `scontrol requeue`: COMPLETING, with one restart more than this start of the job began with
    (["JobState=COMPLETING", "Restarts=1"], None, "REQUEUED"),
    (["JobState=COMPLETING", "Restarts=2"], "1", "REQUEUED"),
    (["JobState=COMPLETING", "Restarts=1"], "1", None),
    (["JobState=RUNNING", "Restarts=x"], None, None),
])
def test_the_stop_reason_is_what_slurm_says_of_the_job(monkeypatch, fields, restart_count, reason):
    from expflow import interrupt

    monkeypatch.setattr(interrupt, "_STARTED_RESTARTS", None)
    monkeypatch.setattr(interrupt, "_scontrol_job", lambda job: ["JobId=7", *fields])
    if restart_count is None:
        monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    else:
        monkeypatch.setenv("SLURM_RESTART_COUNT", restart_count)
    assert interrupt.slurm_job_state("7") == reason


def test_without_slurm_restart_count_the_restarts_seen_at_the_start_decide(monkeypatch):
    """In the executor plugin's job step SLURM_RESTART_COUNT is gone: the run remembers the
    job's restarts when it starts. A cancel in the second start of a requeued job is CANCELLED."""
    from expflow import interrupt

    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.setattr(interrupt, "_STARTED_RESTARTS", None)  # put back after the test
    fields = ["JobId=7", "JobState=RUNNING", "Restarts=1", "EndTime=Unknown"]
    monkeypatch.setattr(interrupt, "_scontrol_job", lambda job: fields)
    assert interrupt.arm_time_limit_warning({"SLURM_JOB_ID": "7"}) is None  # no warning asked for
    assert interrupt._STARTED_RESTARTS == 1
    assert interrupt.slurm_job_state("7") is None  # then CANCELLED (reason_for's default)
    fields[2] = "Restarts=2"  # requeued again while this start runs
    assert interrupt.slurm_job_state("7") == "REQUEUED"
