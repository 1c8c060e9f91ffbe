"""End to end: the real commands on tiny configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from expflow.package import SavePackage, Status, effective_metrics

from .conftest import REPO, assert_one_line_error, read_terminal, run_cli, small_overrides

pytestmark = pytest.mark.slow

PACKAGE_FILES = ["manifest.json", "config.yaml", "code.json", ".hydra/config.yaml", ".hydra/hydra.yaml",
                 ".hydra/overrides.yaml", "checkpoints/index.json", "metrics/records.log",
                 "logs/rank0.out", "logs/rank0.err", "code/src/expflow/launch.py",
                 "code/conf/config.yaml", "heartbeat.json"]


def only_package(runs: Path) -> SavePackage:
    dirs = [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(dirs) == 1, dirs
    return SavePackage.open(dirs[0])


def make_project(tmp_path: Path) -> Path:
    """A copy of this project, so a test can edit its 'working tree'."""
    proj = tmp_path / "proj"
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, proj / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return proj


def metric_values(pkg: SavePackage) -> list[tuple[int, str, float]]:
    return [(r["step"], k, v) for r in effective_metrics(pkg.scan_records().records) for k, v in r["values"].items()]


def test_one_epoch_run_yields_a_complete_package_and_reruns_bit_identically(tmp_path):
    proj = make_project(tmp_path)
    env = {"PYTHONPATH": str(proj / "src")}
    proc = run_cli("+freq=smoke", "trainer.threads=1", cwd=proj, env=env, module="expflow.train")
    assert proc.returncode == 0, proc.stderr
    pkg = only_package(proj / "runs")
    for f in PACKAGE_FILES:
        assert (pkg.path / f).exists(), f
    assert pkg.status() is Status.COMPLETED
    m = pkg.manifest()
    assert m["seed"] == 0 and m["overrides"] == ["+freq=smoke", "trainer.threads=1"]
    assert m["versions"]["torch"] and m["versions"]["python"]
    assert [h["status"] for h in m["status_history"]] == ["QUEUED", "PREPARING", "RUNNING", "COMPLETED"]

    show = run_cli("show", str(pkg.path), "--json", cwd=proj, env=env)
    assert show.returncode == 0, show.stderr
    info = json.loads(show.stdout)
    for key in ("run_id", "status", "seed", "fingerprint", "overrides", "checkpoints", "metrics_last",
                "started", "finished"):
        assert key in info, key
    assert info["status"] == "COMPLETED" and info["run_id"] == pkg.path.name
    assert info["checkpoints"] and {"step", "tracks"} <= set(info["checkpoints"][0])
    assert 0.0 < info["metrics_last"]["val/acc"] <= 1.0

    first = run_cli("rerun", str(pkg.path), cwd=proj, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "bit-identical" in first.stdout

    # Edit the working tree's model code: a rerun still reproduces (the snapshot is used) ...
    digits = proj / "src" / "expflow" / "examples" / "digits.py"
    digits.write_text(digits.read_text().replace("return self.net(x.flatten(1))", "return 3 * self.net(x.flatten(1))"))
    second = run_cli(str(pkg.path), "--ignore", "nothing*", cwd=proj, env=env, module="expflow.rerun")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "bit-identical" in second.stdout
    # ... while a fresh run of the edited working tree really differs.
    fresh = run_cli("+freq=smoke", "trainer.threads=1", "paths.runs=runs2", cwd=proj, env=env, module="expflow.train")
    assert fresh.returncode == 0, fresh.stderr
    assert metric_values(only_package(proj / "runs2")) != metric_values(pkg)


def test_lr_sweep_makes_one_package_per_value(tmp_path):
    runs = tmp_path / "runs"
    proc = run_cli("-m", *small_overrides(runs, "+freq=lr_sweep"), module="expflow.train")
    assert proc.returncode == 0, proc.stderr
    pkgs = [SavePackage.open(p) for p in runs.iterdir() if (p / "manifest.json").exists()]
    assert len(pkgs) == 3
    assert sorted(p.config().optim.lr for p in pkgs) == [1e-3, 3e-3, 1e-2]
    assert all(p.status() is Status.COMPLETED for p in pkgs)
    assert len({p.manifest()["fingerprint"] for p in pkgs}) == 3


def test_single_run_with_freq_makes_one_package(tmp_path):
    runs = tmp_path / "runs"
    proc = run_cli(*small_overrides(runs, "+freq=lr_sweep"), module="expflow.train")
    assert proc.returncode == 0, proc.stderr
    assert only_package(runs).config().optim.lr == 3e-3


def test_regression_example_learns(tmp_path):
    runs = tmp_path / "runs"
    proc = run_cli(*small_overrides(runs), "model=quadratic_mlp", "dataset=quadratic", "optim.lr=0.05",
                   "trainer.max_epochs=5", module="expflow.train")
    assert proc.returncode == 0, proc.stderr
    pkg = only_package(runs)
    losses = [v for _, k, v in metric_values(pkg) if k == "val/loss"]
    assert len(losses) == 5 and losses[-1] < losses[0]


@pytest.mark.parametrize("target, needle", [("missing", "no such directory"), ("foreign", "not a save-package")])
@pytest.mark.parametrize("command", ["show", "continue", "rerun"])
def test_bad_package_path_is_one_line(tmp_path, command, target, needle):
    path = tmp_path / target
    if target == "foreign":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    proc = run_cli(command, str(path))
    assert_one_line_error(proc, str(path), needle)
    if target == "foreign":
        assert (path / "notes.txt").read_text() == "hello"


def test_corrupt_checkpoint_is_one_line_and_keeps_the_package(tmp_path):
    runs = tmp_path / "runs"
    proc = run_cli(*small_overrides(runs, "trainer.max_epochs=2"), module="expflow.train")
    assert proc.returncode == 0, proc.stderr
    pkg = only_package(runs)
    latest = pkg.checkpoints().latest()
    ck = pkg.checkpoints_dir / latest.file
    ck.write_bytes(ck.read_bytes()[:1000])
    before = pkg.records_path.read_bytes()
    proc = run_cli("continue", str(pkg.path), "--checkpoint", str(latest.step))
    assert_one_line_error(proc, latest.file, "corrupt checkpoint")
    assert pkg.records_path.read_bytes().startswith(before)
    proc = run_cli("continue", str(pkg.path), "--checkpoint", "12345")
    assert_one_line_error(proc, "no checkpoint at step 12345", "valid steps")


def test_crash_in_training_code_marks_crashed_and_show_prints_it(tmp_path):
    runs = tmp_path / "runs"
    # A negative momentum passes the config schema and fails inside torch: a crash of "user code".
    proc = run_cli(*small_overrides(runs, "optim=sgd", "optim.optimizer.momentum=-1"), module="expflow.train")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "crashed" in proc.stderr
    pkg = only_package(runs)
    assert pkg.status() is Status.CRASHED
    shown = run_cli("show", str(pkg.path))
    assert shown.returncode == 0
    assert "CRASHED" in shown.stdout and "ValueError" in shown.stdout
    assert "Traceback" in pkg.log_path(0, "err").read_text()


def test_progress_bar_on_a_terminal_plain_lines_in_the_log(tmp_path):
    import os
    import pty
    import subprocess
    import sys

    runs = tmp_path / "runs"
    master, slave = pty.openpty()
    cmd = [sys.executable, "-m", "expflow.train",
           *small_overrides(runs, "trainer.progress=auto", "trainer.max_epochs=2", "run_id=tty")]
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="100")
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = bytearray()
    read_terminal(master, out)
    os.close(master)
    assert proc.wait(timeout=120) == 0, out.decode(errors="replace")[-2000:]
    terminal = out.decode(errors="replace")
    assert "━" in terminal  # rich's bar, drawn on the terminal
    log = (runs / "tty" / "logs" / "rank0.out").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log
    assert "━" not in log and "\x1b[" not in log  # the log holds plain lines only
