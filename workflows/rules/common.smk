# No rules here: config validation, the planned runs, and the input functions.
from snakemake.utils import validate

from expflow.workflow import plan_workflow, workflow_settings


validate(config, schema="../schemas/workflow.schema.yaml")
config.update(workflow_settings(config))

RUNS_DIR = config["runs_dir"]
# Hydra's parser expands the sweep here, at DAG-build time: every run id is known up front.
RUNS = plan_workflow(config)
WORKFLOW_DIR = f"{RUNS_DIR}/.workflow"


wildcard_constraints:
    run=r"[0-9a-f]{12}",
    script=r"[A-Za-z0-9_.-]+",


def run_overrides(wildcards):
    """The run's overrides, quoted for the shell."""
    return RUNS[wildcards.run].override_line


def run_gpus(wildcards):
    """The run's GPU count (its gpu.count), for the gpu resource."""
    return RUNS[wildcards.run].gpus


# Most sweeps give every run the same GPU count: a constant spares Snakemake a function
# call per job at DAG-build time.
_GPU_COUNTS = {spec.gpus for spec in RUNS.values()}
GPU_RESOURCE = _GPU_COUNTS.pop() if len(_GPU_COUNTS) == 1 else run_gpus


def all_targets():
    """Every run trained, and every listed analysis of it."""
    targets = expand(rules.train.output.done, run=sorted(RUNS))
    targets += expand(rules.analyze.output.done, run=sorted(RUNS), script=config["analyze"]["scripts"])
    return targets
