"""The terminal `align` rule: the workflow trains its runs, then aligns them (one series per
planned run) with the spec's other frameworks."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from .align_fixtures import write_package
from .test_workflow import make_project, snakemake

pytestmark = pytest.mark.slow


def test_align_rule_aligns_the_workflows_own_runs(tmp_path):
    workflow = {
        "sweep": ["seed=range(2)"],
        "common": ["trainer=debug", "trainer.max_epochs=1", "trainer.threads=1", "gpu=cpu"],
        "train": {"threads": 1, "retries": 0},
        "analyze": {"scripts": []},
        "report": {"enabled": False},
        "align": {"enabled": True},
    }
    proj = make_project(tmp_path, workflow)
    # a package the workflow did not plan: not aligned
    write_package(proj / "runs", "000000000000", [(1, {"train/loss": 9.0})])
    env = {"SWANLAB_ROOT": str(tmp_path / "swanlab-root")}
    dry = snakemake(proj, "-n", "--cores", "2", env=env)
    assert dry.returncode == 0 and "align" in dry.stdout, dry.stdout[-2000:] + dry.stderr[-2000:]
    proc = snakemake(proj, "--cores", "2", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    align_dir = proj / "runs" / ".align"
    report = json.loads((align_dir / "check.json").read_text())
    labels = sorted(report["frameworks"])
    assert len(labels) == 2 and all(label.startswith("expflow/") for label in labels)
    assert "expflow/000000000000" not in labels
    table = pd.read_csv(align_dir / "aligned.csv")
    assert set(table["framework"]) == set(labels)
    assert set(table[table["metric"] == "train/loss"]["framework"]) == set(labels)
    assert len(list((align_dir / "swanlab").glob("run-*"))) == 2
    # nothing changed: the rule is not run again
    again = snakemake(proj, "-n", "--cores", "2", env=env)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout[-2000:]
