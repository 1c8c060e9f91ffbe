"""`expflow analyze`: scripts run over a package from its code snapshot, with results and
figures written into <package>/analysis/<script>/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from expflow.analysis import available_scripts
from expflow.package import SavePackage, effective_metrics

from .conftest import assert_one_line_error, hold_one_gpu, run_cli
from .test_status import curve, fake_package
from .test_train_e2e import make_project, only_package

PNG = b"\x89PNG\r\n\x1a\n"


def results(pkg: SavePackage, script: str) -> dict:
    return json.loads((pkg.analysis_dir / script / "results.json").read_text())


def record(pkg: SavePackage, script: str) -> dict:
    return json.loads((pkg.analysis_dir / script / "analysis.json").read_text())


def recorded(pkg: SavePackage, metric: str) -> dict[int, float]:
    return {r["step"]: r["values"][metric] for r in effective_metrics(pkg.scan_records().records)
            if metric in r["values"]}


# -- without training ---------------------------------------------------------------------
def test_learning_curves_of_any_run_and_bad_input_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    pkg = fake_package(runs, "r1", points=curve(0.8))
    proc = run_cli("analyze", str(pkg.path), "learning_curves")
    assert proc.returncode == 0, proc.stderr
    out = results(pkg, "learning_curves")
    assert out["val/acc"]["last"] == pytest.approx(0.8) and out["val/acc"]["goal"] == "max"
    assert out["val/loss"]["best"] == pytest.approx(0.7 / 3) and out["val/loss"]["best_step"] == 30
    assert (pkg.analysis_dir / "learning_curves" / "learning_curves.png").read_bytes().startswith(PNG)
    rec = record(pkg, "learning_curves")
    assert rec["checkpoint"] is None and rec["device"] is None  # records only: no model, no torch
    assert sorted(rec["files"]) == ["learning_curves.png", "results.json"]

    assert_one_line_error(run_cli("analyze", str(pkg.path), "nope"),
                          "unknown analysis script 'nope'", "accuracy", "compare_checkpoints", "learning_curves")
    assert_one_line_error(run_cli("analyze", str(pkg.path), "accuracy", "--checkpoint", "7"), "has no checkpoint")
    assert_one_line_error(run_cli("analyze", str(tmp_path / "missing"), "accuracy"), "no such directory")
    empty = fake_package(runs, "r2")
    assert_one_line_error(run_cli("analyze", str(empty.path), "learning_curves"), "no metric records yet")
    assert not (empty.analysis_dir / "learning_curves").exists()
    assert [p.name for p in empty.analysis_dir.iterdir()] == []  # no staging folder left behind


FAILING = '''
def analyze(ctx):
    raise ZeroDivisionError("no luck")
'''

NOT_APPLICABLE = '''
from expflow.analysis import NotApplicable

def analyze(ctx):
    raise NotApplicable("only for images")
'''

FIGURES = '''
from expflow.analysis import AnalysisOutput

PNG = b"\\x89PNG\\r\\n\\x1a\\n" + b"0" * 16

def analyze(ctx):
    (ctx.out_dir / "table.csv").write_text("step,value\\n1,2\\n")
    return AnalysisOutput({"run": ctx.run_id, "records": len(ctx.records)}, {"raw": PNG})
'''


def test_project_scripts_failures_and_replacement(tmp_path):
    proj = tmp_path / "proj"
    (proj / "analysis").mkdir(parents=True)
    (proj / "analysis" / "mine.py").write_text(FIGURES)
    (proj / "analysis" / "learning_curves.py").write_text("def analyze(ctx):\n    return {'project': True}\n")
    pkg = fake_package(tmp_path / "runs", "r1", points=curve(0.5))
    scripts = available_scripts(proj, pkg)
    assert scripts["mine"].origin == "project" and scripts["accuracy"].origin == "shipped"
    assert scripts["learning_curves"].origin == "project"  # the project's own shadows the shipped one

    listed = run_cli("analyze", str(pkg.path), "--list", "--project", str(proj))
    assert "mine" in listed.stdout and "project" in listed.stdout
    proc = run_cli("analyze", str(pkg.path), "script=mine", "--project", str(proj))
    assert proc.returncode == 0, proc.stderr
    folder = pkg.analysis_dir / "mine"
    assert results(pkg, "mine") == {"run": "r1", "records": 6}
    assert sorted(p.name for p in folder.iterdir()) == ["analysis.json", "raw.png", "results.json", "table.csv"]

    # A failing script: one line naming its traceback, the previous results kept.
    (proj / "analysis" / "mine.py").write_text(FAILING)
    failed = run_cli("analyze", str(pkg.path), "mine", "--project", str(proj))
    assert_one_line_error(failed, "analysis mine", "ZeroDivisionError: no luck", "analysis-mine.err")
    assert "ZeroDivisionError" in (pkg.logs_dir / "analysis-mine.err").read_text()
    assert (folder / "table.csv").exists() and [p.name for p in pkg.analysis_dir.iterdir()].count("mine") == 1

    # A script that does not apply to the run is recorded so, not failed (a mixed sweep's workflow goes on).
    (proj / "analysis" / "other.py").write_text(NOT_APPLICABLE)
    skipped = run_cli("analyze", str(pkg.path), "other", "--project", str(proj))
    assert skipped.returncode == 0 and "does not apply: only for images" in skipped.stdout, skipped.stderr
    assert record(pkg, "other")["applicable"] is False
    assert "other: does not apply (only for images)" in run_cli("show", str(pkg.path)).stdout
    shutil.rmtree(pkg.analysis_dir / "other")

    # A new result replaces the folder whole: nothing of the previous one is left.
    (proj / "analysis" / "mine.py").write_text("def analyze(ctx):\n    return {'second': 2}\n")
    assert run_cli("analyze", str(pkg.path), "mine", "--project", str(proj)).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == ["analysis.json", "results.json"]
    assert results(pkg, "mine") == {"second": 2}
    assert sorted(p.name for p in pkg.analysis_dir.iterdir()) == ["mine"]


# -- on trained packages --------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A copy of this project and a 2-epoch digits package trained from it."""
    tmp = tmp_path_factory.mktemp("analyze")
    proj = make_project(tmp)
    env = {"PYTHONPATH": str(proj / "src")}
    proc = run_cli("+freq=smoke", "trainer.max_epochs=2", "trainer.threads=1", cwd=proj, env=env,
                   module="expflow.train")
    assert proc.returncode == 0, proc.stderr
    return proj, env, only_package(proj / "runs")


@pytest.mark.slow
def test_accuracy_and_confusion_matrix_come_from_the_snapshot(trained):
    proj, env, pkg = trained
    proc = run_cli("analyze", str(pkg.path), "accuracy", cwd=proj, env=env)
    assert proc.returncode == 0, proc.stderr
    first = results(pkg, "accuracy")
    latest = pkg.checkpoints().latest()
    # The rebuilt model and dataset give exactly what training recorded at that checkpoint.
    assert first["accuracy"] == pytest.approx(recorded(pkg, "val/acc")[latest.step], abs=1e-12)
    assert first["metrics"]["val/loss"] == pytest.approx(recorded(pkg, "val/loss")[latest.step], rel=1e-6)
    assert first["total"] == 359 and sum(map(sum, first["confusion_matrix"])) == 359
    assert len(first["per_class"]) == 10
    png = (pkg.analysis_dir / "accuracy" / "confusion_matrix.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 10_000
    assert record(pkg, "accuracy")["checkpoint"]["step"] == latest.step
    assert f"accuracy={first['accuracy']:.6g}" in proc.stdout

    # Break the working tree's model (negated logits: accuracy near zero) ...
    digits = proj / "src" / "expflow" / "examples" / "digits.py"
    original = digits.read_text()
    digits.write_text(original.replace("return self.net(x.flatten(1))", "return -self.net(x.flatten(1))"))
    try:
        # ... the package's analysis still uses the code that trained it ...
        again = run_cli("analyze", str(pkg.path), "accuracy", cwd=proj, env=env)
        assert again.returncode == 0, again.stderr
        assert results(pkg, "accuracy")["accuracy"] == first["accuracy"]
        # ... while the edited working tree really would differ.
        edited = run_cli("analyze", str(pkg.path), "accuracy", "--working-tree", cwd=proj, env=env)
        assert edited.returncode == 0, edited.stderr
        assert results(pkg, "accuracy")["accuracy"] < first["accuracy"] / 2
    finally:
        digits.write_text(original)


@pytest.mark.slow
def test_checkpoint_choice_and_comparison(trained):
    proj, env, pkg = trained
    steps = sorted(c.step for c in pkg.checkpoints().list())
    assert len(steps) == 2
    accs = recorded(pkg, "val/acc")
    proc = run_cli("analyze", str(pkg.path), "accuracy", "--checkpoint", str(steps[0]), cwd=proj, env=env)
    assert proc.returncode == 0, proc.stderr
    assert results(pkg, "accuracy")["accuracy"] == pytest.approx(accs[steps[0]], abs=1e-12)
    assert record(pkg, "accuracy")["checkpoint"]["step"] == steps[0]
    assert_one_line_error(run_cli("analyze", str(pkg.path), "accuracy", "--checkpoint", "3", cwd=proj, env=env),
                          "no checkpoint at step 3", "valid steps")

    # `python -m expflow.analyze <package> script=<name>`, the spec's form.
    proc = run_cli(str(pkg.path), "script=compare_checkpoints", cwd=proj, env=env, module="expflow.analyze")
    assert proc.returncode == 0, proc.stderr
    out = results(pkg, "compare_checkpoints")
    assert [r["step"] for r in out["checkpoints"]] == steps
    for row in out["checkpoints"]:
        assert row["val/acc"] == pytest.approx(accs[row["step"]], abs=1e-12)
    assert out["metric"] == "val/acc" and out["best"] == max(accs[s] for s in steps)
    assert (pkg.analysis_dir / "compare_checkpoints" / "checkpoints.png").read_bytes().startswith(PNG)


@pytest.mark.slow
def test_analysis_waits_for_its_own_gpu_lease(trained, tmp_path):
    proj, env, pkg = trained
    gpu_env = dict(os.environ, **env, EXPFLOW_SIMULATED_GPUS="1x1000", EXPFLOW_LEASE_DIR=str(tmp_path / "leases"))
    holder = hold_one_gpu(gpu_env)
    analysis = None
    try:
        analysis = subprocess.Popen([sys.executable, "-m", "expflow.cli", "analyze", str(pkg.path), "learning_curves",
                                     "--gpus", "1"], cwd=proj, env=gpu_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        first = ""
        while "waiting for a GPU lease" not in first:  # the only device is taken: it waits
            line = analysis.stderr.readline()  # blocks until it says something, or exits
            assert line, first
            first += line
        assert analysis.poll() is None
        holder.kill()
        holder.wait()
        out, err = analysis.communicate(timeout=120)
        assert analysis.returncode == 0, first + err
    finally:
        for p in (holder, analysis):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_scripts_of_the_project_and_shipped_are_listed(tmp_path):
    pkg = fake_package(tmp_path / "runs", "r1")
    repo_scripts = available_scripts(Path(__file__).resolve().parents[1], pkg)
    assert {"accuracy", "learning_curves", "compare_checkpoints", "misclassified", "regression_fit"} <= set(repo_scripts)


# -- several scripts, one analysis process ------------------------------------------------
def test_several_scripts_run_in_one_process_and_each_failure_is_its_own(tmp_path, monkeypatch):
    from expflow.analysis import runner

    runs = tmp_path / "runs"
    pkg = fake_package(runs, "r1", points=curve(0.8))
    project = tmp_path / "proj"
    (project / "analysis").mkdir(parents=True)
    (project / "analysis" / "failing.py").write_text(FAILING)
    (project / "analysis" / "not_applicable.py").write_text(NOT_APPLICABLE)
    calls = []
    real = runner._worker

    def counted(cmd, *a, **k):
        calls.append(cmd)
        return real(cmd, *a, **k)

    monkeypatch.setattr(runner, "_worker", counted)
    records = runner.run_analyses(pkg, ["learning_curves", "not_applicable", "learning_curves"],
                                  project_dir=project, working_tree=True)
    assert len(calls) == 1  # one interpreter for all of them (the repeated name runs once)
    assert [r["script"] for r in records] == ["learning_curves", "not_applicable"]
    assert records[0]["applicable"] and not records[1]["applicable"]
    assert results(pkg, "learning_curves")["val/acc"]["last"] == pytest.approx(0.8)

    # A failing script does not stop the ones after it; the error names it alone.
    shutil.rmtree(pkg.analysis_dir / "learning_curves")
    calls.clear()
    with pytest.raises(runner.AnalysisError, match=r"analysis failing of .* failed \(exit code 1\)"):
        runner.run_analyses(pkg, ["failing", "learning_curves"], project_dir=project, working_tree=True)
    assert len(calls) == 1
    assert record(pkg, "learning_curves")["script"] == "learning_curves"  # ran after the failure
    assert not (pkg.analysis_dir / "failing").exists()
    assert "ZeroDivisionError" in (pkg.logs_dir / "analysis-failing.err").read_text()

    # On the command line: one line for the failing script, exit status 1, the others' results kept.
    shutil.rmtree(pkg.analysis_dir / "learning_curves")
    proc = run_cli("analyze", str(pkg.path), "failing", "learning_curves", "--project", str(project))
    assert_one_line_error(proc, "analysis failing of", "ZeroDivisionError: no luck")
    assert "analysis learning_curves ->" in proc.stdout
    assert results(pkg, "learning_curves")["val/acc"]["last"] == pytest.approx(0.8)
