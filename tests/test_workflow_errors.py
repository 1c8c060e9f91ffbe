"""Workflow config errors at Snakefile parse time: one `expflow: error:` line on stderr,
no traceback, a non-zero exit (dry runs of a copy of the workflow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, assert_one_line_error

pytestmark = pytest.mark.slow

WORKFLOW = {"sweep": ["seed=range(2)"], "common": ["trainer=debug", "gpu=cpu"], "analyze": {"scripts": []}}


def dry_run(tmp_path: Path, workflow_yaml: str | None, *args: str) -> subprocess.CompletedProcess:
    proj = tmp_path / "proj"
    shutil.copytree(REPO / "conf", proj / "conf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "workflows", proj / "workflows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "Snakefile", proj / "Snakefile")
    target = proj / "conf" / "workflow.yaml"
    if workflow_yaml is None:
        target.unlink()
    else:
        target.write_text(workflow_yaml)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *args], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=300)


GOOD = yaml.safe_dump(WORKFLOW)


@pytest.mark.parametrize("workflow_yaml, args, needles", [
    # the case: a bad key in a command-line sweep
    (GOOD, ["--config", "sweep=optim.lrr=1e-3"], ["unknown key 'optim.lrr'", "valid keys under 'optim'"]),
    # a bad value type, in conf/workflow.yaml's sweep
    (yaml.safe_dump({**WORKFLOW, "sweep": ["optim.lr=abc"]}), [], ["optim.lr", "could not be converted to Float"]),
    # a sweep syntax the workflow cannot expand
    (GOOD, ["--config", "sweep=optim.lr=interval(0,1)"], ["interval sweeps need an optimizing sweeper"]),
    # keys the workflow.yaml schema refuses
    (yaml.safe_dump({**WORKFLOW, "bogus": 1}), [], ["workflow config: unknown key 'bogus'"]),
    (yaml.safe_dump({**WORKFLOW, "train": {"threads": "abc"}}), [], ["'train.threads'", "not of type 'integer'"]),
    # no conf/workflow.yaml, or one that is not YAML
    (None, [], ["no workflow config at conf/workflow.yaml"]),
    (GOOD + "common: [a\n", [], ["conf/workflow.yaml: line", "not valid YAML"]),
    # the search's settings, at DAG-build time (before any slot job)
    (yaml.safe_dump({**WORKFLOW, "search": {"enabled": True, "params": {"optim.lr": "tag(log, interval(0, 1))"}}}), [],
     ["search.params.optim.lr: a log scale needs bounds above 0"]),
    (yaml.safe_dump({**WORKFLOW, "search": {"enabled": True, "params": {"optim.lr": "interval(0, 1)"},
                                            "pruner": {"_target_": "optuna.pruners.Nope"}}}), [],
     ["search.pruner: cannot build 'optuna.pruners.Nope'"]),
    (yaml.safe_dump({**WORKFLOW, "search": {"enabled": True, "direction": "up"}}), [],
     ["'search.direction'", "'up' is not one of"]),
], ids=["cli-bad-key", "bad-value-type", "interval-sweep", "unknown-yaml-key", "bad-yaml-type", "missing-conf",
        "malformed-yaml", "search-space", "search-pruner", "search-direction"])
def test_workflow_config_error_is_one_line(tmp_path, workflow_yaml, args, needles):
    proc = dry_run(tmp_path, workflow_yaml, *args)
    assert_one_line_error(proc, "expflow: error:", *needles)
    assert proc.returncode == 1


def test_a_configfile_replaces_a_missing_workflow_yaml(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(GOOD)
    proc = dry_run(tmp_path, None, "--configfile", str(other))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "train" in proc.stdout
