"""`expflow new`: a project with expflow's layout that runs out of the box."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate

from expflow.config import compose_config
from expflow.package import SavePackage, Status
from expflow.scaffold import create_project

from .conftest import REPO, assert_one_line_error, run_cli

LAYOUT = ["Snakefile", "workflows/rules/common.smk", "workflows/rules/report.smk", "workflows/schemas/workflow.schema.yaml",
          "conf/config.yaml", "conf/workflow.yaml", "conf/freq/lr_sweep.yaml", "pyproject.toml", "README.md",
          ".gitignore"]


def test_digits_project_layout_and_configs(tmp_path, monkeypatch):
    proj = create_project(tmp_path / "Digits-Lab")
    for rel in [*LAYOUT, "src/digits_lab/digits.py", "src/digits_lab/__init__.py", "analysis/misclassified.py",
                "conf/model/mlp.yaml", "conf/model/cnn.yaml", "conf/dataset/digits.yaml"]:
        assert (proj / rel).is_file(), rel
    # Taken from expflow's own files, not a second copy.
    assert (proj / "Snakefile").read_text() == (REPO / "Snakefile").read_text()
    assert (proj / "src/digits_lab/digits.py").read_text() == (REPO / "src/expflow/examples/digits.py").read_text()
    assert not (proj / "conf/model/quadratic_mlp.yaml").exists() and not (proj / "conf/freq/regression.yaml").exists()
    cfg = compose_config(config_dir=proj / "conf")
    assert cfg.model._target_ == "digits_lab.digits.MLP" and cfg.dataset._target_ == "digits_lab.digits.DigitsData"
    monkeypatch.syspath_prepend(str(proj / "src"))
    model, data = instantiate(cfg.model), instantiate(cfg.dataset)
    assert type(model).__module__ == "digits_lab.digits" and len(data.val_set) == 359
    cnn = compose_config(["model=cnn"], config_dir=proj / "conf")
    assert cnn.model._target_ == "digits_lab.digits.CNN"
    workflow = yaml.safe_load((proj / "conf/workflow.yaml").read_text())
    assert workflow["analyze"]["scripts"] == ["accuracy", "learning_curves"] and workflow["report"]["enabled"]


def test_regression_project_takes_the_overlay_as_its_defaults(tmp_path):
    proj = create_project(tmp_path / "fit", example="regression", name="quad")
    assert (proj / "src/quad/regression.py").is_file() and (proj / "analysis/regression_fit.py").is_file()
    assert sorted(p.name for p in (proj / "conf/model").iterdir()) == ["quadratic_mlp.yaml"]
    cfg = compose_config(config_dir=proj / "conf")
    assert cfg.model._target_ == "quad.regression.QuadraticMLP" and cfg.dataset._target_ == "quad.regression.QuadraticData"
    # freq/regression.yaml's settings, folded into the project's own defaults (comments kept).
    assert cfg.optim.lr == 1e-2 and cfg.trainer.max_epochs == 20
    assert cfg.lifecycle.hold_best == "val/loss" and cfg.lifecycle.hold_mode == "min"
    assert "# Root config" in (proj / "conf/config.yaml").read_text()
    workflow = yaml.safe_load((proj / "conf/workflow.yaml").read_text())
    assert workflow["sweep"] == ["optim.lr=1e-2,3e-2 seed=range(2)"]
    assert workflow["analyze"]["scripts"] == ["learning_curves", "regression_fit"]


def _comments(text: str) -> list[str]:
    return [line[line.index("#"):] for line in text.splitlines() if "#" in line and "${" not in line]


@pytest.mark.parametrize("example", ["digits", "regression", "command"])
def test_scaffold_edits_keep_every_comment_and_change_only_what_they_set(tmp_path, example):
    """The conf/ files are edited with a round-trip YAML library: every comment of expflow's file
    stays, and a file differs only in the lines the example sets (keys added where an option
    leaves them at the schema's default)."""
    import difflib

    proj = create_project(tmp_path / "p", example=example, name="proj")
    changed = {}
    for path in sorted((proj / "conf").rglob("*.yaml")):
        rel = path.relative_to(proj / "conf")
        source, made = (REPO / "conf" / rel).read_text(), path.read_text()
        assert _comments(made) == _comments(source), rel  # a changed line keeps its comment too
        diff = [d for d in difflib.ndiff(source.splitlines(), made.splitlines()) if d[:2] in ("- ", "+ ")]
        if diff:
            changed[str(rel)] = diff
    if example == "regression":
        assert changed["trainer/default.yaml"] == ["+ ", "+ max_epochs: 20"]  # absent in the option: added
        assert changed["optim/adamw.yaml"] == ["+ lr: 1e-2"]
        assert changed["model/quadratic_mlp.yaml"] == [
            "- _target_: expflow.examples.regression.QuadraticMLP", "+ _target_: proj.regression.QuadraticMLP"]
    if example == "command":
        assert changed["runner/command.yaml"] == [
            "+ ", '+ argv: [python, train.py, --lr, "${optim.lr}"]', '+ resume_argv: [--resume, "${expflow:checkpoint}"]',
            "+ stop_signal: SIGUSR1"]
        assert changed["config.yaml"] == ["-   - model: mlp", "-   - dataset: digits", "-   - runner: supervised",
                                          "+   - runner: command"]
    for rel in ("checkpoint/default.yaml", "gpu/default.yaml", "tracker/swanlab.yaml"):
        assert rel not in changed
    if example != "digits":  # the sweep line and the analyses: the example's own
        workflow = changed["workflow.yaml"]
        assert len(workflow) == 4 and workflow[0].startswith('-   - "') and workflow[2].startswith("-   scripts: [")


def test_new_refuses_a_used_directory_and_a_bad_name(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("new", str(used)), "not an empty directory")
    assert (used / "notes.txt").read_text() == "mine" and len(list(used.iterdir())) == 1
    assert_one_line_error(run_cli("new", str(tmp_path / "x"), "--name", "torch"), "shadow")
    assert_one_line_error(run_cli("new", str(tmp_path / "y"), "--name", "class"), "not a valid Python package name")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def snakemake(proj: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=proj, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_new_project_runs_the_main_command(tmp_path):
    made = run_cli("new", str(tmp_path / "lab"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    proj = tmp_path / "lab"
    proc = snakemake(proj, "--cores", "2")  # the README's main command
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pkgs = [SavePackage.open(p) for p in sorted((proj / "runs").iterdir()) if (p / "manifest.json").is_file()]
    assert len(pkgs) == 4
    for pkg in pkgs:
        assert pkg.status() is Status.COMPLETED
        assert (pkg.code_dir / "src" / "lab" / "digits.py").is_file()  # the project's code, snapshotted
        for script, figure in (("accuracy", "confusion_matrix.png"), ("learning_curves", "learning_curves.png")):
            assert (pkg.analysis_dir / script / figure).is_file(), (pkg.path, script)
    html = (proj / "runs" / "report.html").read_text()
    assert html.count('class="curve"') >= 4 * 3 and all(p.run_id in html for p in pkgs)
    status = run_cli("status", cwd=proj)
    assert status.returncode == 0 and "4 COMPLETED" in status.stdout
    again = snakemake(proj, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_new_regression_project_runs(tmp_path):
    assert run_cli("new", str(tmp_path / "reg"), "--example", "regression").returncode == 0
    proj = tmp_path / "reg"
    proc = snakemake(proj, "--cores", "2", "--config", "sweep=seed=0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (pkg,) = [SavePackage.open(p) for p in (proj / "runs").iterdir() if (p / "manifest.json").is_file()]
    assert pkg.status() is Status.COMPLETED
    fit = (pkg.analysis_dir / "regression_fit" / "results.json").read_text()
    assert '"mae"' in fit and (pkg.analysis_dir / "regression_fit" / "fit.png").is_file()
    assert (proj / "runs" / "report.html").is_file()
