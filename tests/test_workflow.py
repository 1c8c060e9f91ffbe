"""The Snakemake workflow end to end, in a copy of the project."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from expflow.package import SavePackage, Status, effective_metrics

from .conftest import REPO, lease_peak

pytestmark = pytest.mark.slow


def make_project(tmp_path: Path, workflow: dict, extra_files: dict[str, str] | None = None) -> Path:
    proj = tmp_path / "proj"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "conf", "workflows"):
        shutil.copytree(REPO / name, proj / name, ignore=ignore)
    shutil.copy(REPO / "Snakefile", proj / "Snakefile")
    (proj / "conf" / "workflow.yaml").write_text(yaml.safe_dump(workflow))
    for rel, text in (extra_files or {}).items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(text)
    return proj


def snakemake(proj: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(proj / "src"), **(env or {}))
    full_env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=proj, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def packages(proj: Path) -> list[SavePackage]:
    runs = proj / "runs"
    return [SavePackage.open(p) for p in sorted(runs.iterdir()) if (p / "manifest.json").exists()]


BARRIER = '''
import os
import time
from pathlib import Path

from expflow.lifecycle import Lifecycle


class MeetAtBarrier(Lifecycle):
    """Keeps its run (and its GPU lease) at the start of training until BARRIER_MIN runs
    have arrived there, so that many runs hold their leases at once by construction."""

    def before_run(self, state):
        root = Path(os.environ["BARRIER_DIR"])
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{os.getpid()}-{time.time_ns()}").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        need, patience = int(os.environ["BARRIER_MIN"]), float(os.environ["BARRIER_TIMEOUT"])
        deadline = time.monotonic() + patience
        while len(os.listdir(root)) < need:
            if time.monotonic() > deadline:
                raise RuntimeError(f"barrier: {len(os.listdir(root))} of {need} runs arrived in {patience:g} s; "
                                   "the workflow does not run GPU jobs concurrently")
            time.sleep(0.05)
        return None
'''


def test_twelve_runs_on_four_simulated_gpus(tmp_path):
    workflow = {
        "sweep": ["seed=range(12)"],
        "common": ["trainer=debug", "trainer.max_epochs=2", "trainer.threads=1", "gpu.count=1",
                   "gpu.max_jobs_per_gpu=1", "gpu.allow_cpu=true", "lifecycle._target_=barrier.MeetAtBarrier"],
        "train": {"threads": 1, "retries": 0},
    }
    proj = make_project(tmp_path, workflow, {"src/barrier.py": BARRIER})
    barrier = tmp_path / "barrier"
    # Each run waits, holding its lease, until 2 runs have arrived: 2 leases at once are
    # a fact of the run, whatever the load of the machine (the wait has a generous limit
    # and fails the run with a clear message).
    env = {"EXPFLOW_SIMULATED_GPUS": "4x81920", "EXPFLOW_LEASE_DIR": str(tmp_path / "leases"),
           "BARRIER_DIR": str(barrier), "BARRIER_MIN": "2", "BARRIER_TIMEOUT": "300"}
    proc = snakemake(proj, "--cores", "8", "--resources", "gpu=4", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pkgs = packages(proj)
    assert len(pkgs) == 12
    assert len(list(barrier.iterdir())) == 12  # every run went through the barrier
    spans = []
    for pkg in pkgs:
        m = pkg.manifest()
        assert pkg.status() is Status.COMPLETED
        assert len(m["gpus"]) == 1 and m["gpus"][0] in range(4)
        (lease,) = m["leases"]  # logged inside the lease: after it was taken, before its release
        spans.append((lease["acquired"], lease["released"], m["gpus"][0]))
    # At least 2 leases at once (the barrier), never more than 4, never two on one device.
    peak = lease_peak(spans)
    assert 2 <= peak <= 4, peak

    # Re-running the workflow does nothing ...
    dry = snakemake(proj, "-n", env=env)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    # ... and changing one sweep value reruns only that run (the barrier is open by now).
    before = {p.path.name: p.manifest_path.stat().st_mtime_ns for p in pkgs}
    new_sweep = "seed=" + ",".join(str(s) for s in [*range(11), 99])
    dry = snakemake(proj, "-n", "--config", f"sweep={new_sweep}", env=env)
    assert dry.returncode == 0
    assert re.search(r"^train\s+1$", dry.stdout, re.M) and re.search(r"^package\s+1$", dry.stdout, re.M), dry.stdout
    real = snakemake(proj, "--cores", "2", "--config", f"sweep={new_sweep}", env=env)
    assert real.returncode == 0, real.stderr[-3000:]
    after = packages(proj)
    assert len(after) == 13
    for p in after:
        if p.path.name in before:
            assert p.manifest_path.stat().st_mtime_ns == before[p.path.name]


CRASHY = '''
import os
import signal
from pathlib import Path

from expflow.lifecycle import Lifecycle


class CrashOnce(Lifecycle):
    """SIGKILLs its own process right after the epoch-2 checkpoint, the first time only."""

    def after_save(self, state):
        marker = Path(os.environ["CRASH_MARKER"])
        if state.epoch == 2 and not marker.exists():
            marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
'''


def test_killed_train_job_is_retried_and_continues_from_its_checkpoint(tmp_path):
    workflow = {
        "sweep": ["seed=7"],
        "common": ["trainer=debug", "trainer.max_epochs=4", "gpu=cpu", "lifecycle._target_=crashy.CrashOnce"],
        "train": {"retries": 2},
    }
    proj = make_project(tmp_path, workflow, {"src/crashy.py": CRASHY})
    marker = tmp_path / "crashed"
    proc = snakemake(proj, "--cores", "2", env={"CRASH_MARKER": str(marker)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert marker.exists()  # the job really was killed once
    (pkg,) = packages(proj)
    assert pkg.status() is Status.COMPLETED
    attempts = pkg.manifest()["attempts"]
    assert [a["kind"] for a in attempts] == ["train", "continue"]
    assert attempts[1]["from_step"] == 2 * 23  # the epoch-2 checkpoint
    steps = [r["step"] for r in effective_metrics(pkg.scan_records().records) if "val/acc" in r["values"]]
    assert steps == [23, 46, 69, 92]


def test_lint_is_clean_and_dry_run_works_from_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    if not (clone / "Snakefile").exists():
        pytest.fail("the Snakefile is not committed")
    lint = snakemake(clone, "--lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations" in lint.stdout + lint.stderr
    dry = snakemake(clone, "-n")
    assert dry.returncode == 0, dry.stderr
    assert "train" in dry.stdout
    assert not (clone / "runs").exists() or not any((clone / "runs").glob("*/manifest.json"))


def test_bad_workflow_config_fails_before_running(tmp_path):
    proj = make_project(tmp_path, {"sweep": ["optim.lr=abc"]})
    proc = snakemake(proj, "-n")
    assert proc.returncode != 0
    assert "optim.lr" in proc.stdout + proc.stderr
    proj2 = make_project(tmp_path / "b", {"sweep": ["seed=1"], "bogus": 1})
    proc = snakemake(proj2, "-n")
    assert proc.returncode != 0 and "bogus" in proc.stdout + proc.stderr
