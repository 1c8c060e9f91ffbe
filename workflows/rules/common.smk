# No rules here: config validation, the planned runs, and the input functions.
import os
import shlex
import sys

from expflow.workflow import (
    clear_stale_lock,
    cluster_resources,
    train_gpus,
    train_gres,
    train_command,
    config_errors_exit,
    plan_workflow,
    run_priorities,
    train_seconds,
    search_settings,
    validate_workflow_config,
    workflow_settings,
)


# Killed by SIGKILL, Snakemake leaves its lock behind; the workflow removes it when the
# Snakemake that took it is dead (recorded in onstart, Snakefile), so the same command runs again.
if not workflow.remote_exec:
    _unlocked = clear_stale_lock()
    if _unlocked:
        print(_unlocked, file=sys.stderr)


# A bad key, value or sweep line is one `expflow: error:` line and exit status 1.
with config_errors_exit():
    # The schema's defaults are filled in (as snakemake.utils.validate would).
    validate_workflow_config(config, workflow.source_path("../schemas/workflow.schema.yaml"))
    config.update(workflow_settings(config))
    RUNS_DIR = config["runs_dir"]
    WORKFLOW_DIR = f"{RUNS_DIR}/.workflow"
    # Train times of earlier runs (the train rule's benchmark files), for packing.
    TRAIN_SECONDS = train_seconds(f"{WORKFLOW_DIR}/benchmarks/train")
    # Hydra's parser expands the sweep here, at DAG-build time: every run id is known up front
    # (kept for the next parse of an unchanged project, e.g. every job on a cluster).
    RUNS = plan_workflow(config, families=bool(TRAIN_SECONDS), cache=".snakemake/expflow/plan.json")
    # Longer runs first (LPT order) through Snakemake's job priorities, when a duration is
    # known: train.estimate, or the train times of earlier runs of the same family.
    PRIORITIES = run_priorities(RUNS, TRAIN_SECONDS)
    # search.enabled: the adaptive search's slots (search.smk); None when off.
    SEARCH = search_settings(config)


def on_failure(rule_name):
    """Appended to a rule's command: a failed job prints its log's last line (the one-line
    error) on the terminal, not only Snakemake's "check log file(s)"."""
    return f' || {{{{ echo "$(tail -n 1 {{log}})  [{rule_name} log: {{log}}]" >&2; exit 1; }}}}'

# report.out: the workflow's HTML page of every run (default: <runs_dir>/report.html).
REPORT_HTML = config["report"]["out"] or f"{RUNS_DIR}/report.html"
# slurm_partition / slurm_account for every rule (from the config or the environment).
CLUSTER = cluster_resources(config)
# The train jobs' command, with their warning before the time limit (train.signal_s) in its environment.
TRAIN_COMMAND = train_command(config)
# Retries belong to the main Snakemake process (it resubmits the job, which continues the
# package). A rule's `retries:` also applies inside a cluster job step, which would retry
# a failing run again within the same allocation: none there.
TRAIN_RETRIES = 0 if workflow.remote_exec else config["train"]["retries"]


wildcard_constraints:
    run=r"[0-9a-f]{12}",
    slot=r"[0-9]+",
    stamp=r"[0-9]+",


def run_overrides(wildcards):
    """The run's overrides, quoted for the shell."""
    return RUNS[wildcards.run].override_line


def run_priority(wildcards):
    """The run's packing priority (higher starts first), for its package and train jobs."""
    return PRIORITIES.get(wildcards.run, 0)


# Without any estimate every job keeps priority 0, and Snakemake is spared a call per job.
RUN_PRIORITY = run_priority if PRIORITIES else 0


# A run's train and analyze jobs form one group: on a cluster, one allocation per run, and
# `--group-components runs=N` puts N runs in one allocation (many tiny runs). Not the
# package job: when a group fails, Snakemake removes the outputs of all its jobs, and a
# package's config.yaml is not a marker to redo. Groups change nothing in a local run.
RUN_GROUP = "runs"


def run_gpus(wildcards):
    """The run's GPU count (its gpu.count), for the gpu resource."""
    return train_gpus(RUNS[wildcards.run])


# Most sweeps give every run the same GPU count: a constant spares Snakemake a function
# call per job at DAG-build time.
_GPU_COUNTS = {train_gpus(spec) for spec in RUNS.values()}
GPU_RESOURCE = _GPU_COUNTS.pop() if len(_GPU_COUNTS) == 1 else run_gpus


def run_nodes(wildcards):
    return RUNS[wildcards.run].nodes


def run_gres(wildcards):
    return train_gres(RUNS[wildcards.run])


# Runs across nodes (trainer.nodes > 1): their train job asks for that many nodes, one task
# on each (expflow starts a torchrun per node), and its GPUs per node. None: no resource added.
NODE_RESOURCES = (
    {"nodes": run_nodes, "tasks": run_nodes, "tasks_per_gpu": 0, "gres": run_gres}
    if any(spec.nodes > 1 for spec in RUNS.values()) else {}
)


# analyze.scripts, all of them in one job per run: one analysis process (one interpreter and
# one torch import for every script) on one GPU lease. Each script keeps its own output.
ANALYSES = list(dict.fromkeys(config["analyze"]["scripts"]))


def analysis_targets(runs):
    """Every listed analysis of each of ``runs`` (none when analyze.scripts is empty)."""
    return [f"{RUNS_DIR}/{run}/analysis/{script}/analysis.done" for run in runs for script in ANALYSES]


if SEARCH:
    SEARCH_DIR = f"{RUNS_DIR}/.search/{SEARCH['name']}"
    SEARCH_SLOTS = [f"{SEARCH_DIR}/slots/{SEARCH['n_trials']}-{slot}.done" for slot in range(SEARCH["slots"])]
    SEARCH_ROUNDS = -(-SEARCH["n_trials"] // SEARCH["slots"])  # trials a slot may run, for its runtime
else:
    SEARCH_SLOTS = []


def all_targets():
    """Every run trained, and every listed analysis of it (and the search, when enabled)."""
    targets = expand(rules.train.output.done, run=sorted(RUNS))
    targets += analysis_targets(sorted(RUNS))
    if SEARCH:
        targets.append(rules.search_results.output.html)
    if SYNC_TARGET != "off":
        targets += [sync_target(run) for run in sorted(RUNS)]
    if config["report"]["enabled"]:
        targets.append(rules.report.output.html)
    if config["align"]["enabled"]:
        targets.append(rules.align.output.check)
    return targets


# sync.target: upload every trained package at the end (swanlab | mlflow), or off (null).
SYNC_TARGET = config["sync"]["target"] or "off"


def sync_target(run):
    """The run's sync marker; or, where that marker says a sync was deferred (no network or
    credentials), a retry named after the marker's time: that job runs again and rewrites
    the marker. Planning only reads the marker, so `snakemake -n` and `--lint` change no file."""
    marker = expand(rules.sync.output.done, run=run)[0]
    try:
        with open(marker, "rb") as f:
            deferred = f.readline().strip() == b"deferred"
            stamp = os.fstat(f.fileno()).st_mtime_ns
    except OSError:
        return marker
    return expand(rules.sync_retry.output.retry, run=run, stamp=stamp)[0] if deferred else marker


def sync_options():
    """`expflow sync` options from the workflow config's sync section, quoted for the shell."""
    sync = config["sync"]
    options = ["--target", SYNC_TARGET, "--id", sync["id"]]
    for key in ("uri", "project"):
        if sync.get(key):
            options += [f"--{key}", sync[key]]
    if sync.get("strict"):
        options.append("--strict")
    return " ".join(shlex.quote(str(o)) for o in options)
