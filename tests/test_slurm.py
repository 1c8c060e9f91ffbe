"""The unchanged workflow on a real Slurm cluster (scripts/slurm/up.sh), through
snakemake-executor-plugin-slurm. CI starts the cluster in .ci/run; these tests never skip there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expflow.package import SavePackage, Status, effective_metrics

from .conftest import REPO, lease_peak, run_cli, single_process_val_acc
from .test_workflow import CRASHY, make_project

pytestmark = pytest.mark.slow
UP, DOWN = REPO / "scripts" / "slurm" / "up.sh", REPO / "scripts" / "slurm" / "down.sh"


def cluster_idle() -> bool:
    if not shutil.which("sinfo"):
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.strip().startswith("idle")


@pytest.fixture(scope="module")
def slurm():
    import importlib.util

    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        if os.environ.get("CI"):
            pytest.fail("snakemake-executor-plugin-slurm is missing: .ci/run installs expflow[slurm]")
        pytest.skip("the Slurm executor plugin is not installed (pip install -e '.[slurm]')")
    started = False
    if not cluster_idle():
        if os.environ.get("EXPFLOW_START_SLURM") == "1" and os.geteuid() == 0:
            # Opt-in: up.sh installs Debian packages and starts daemons.
            subprocess.run(["bash", str(UP)], check=True, timeout=600)
            started = True
        elif os.environ.get("CI"):
            pytest.fail("no Slurm test cluster: .ci/run starts one with scripts/slurm/up.sh")
        else:
            pytest.skip("no Slurm test cluster: start one with scripts/slurm/up.sh (root), "
                        "or set EXPFLOW_START_SLURM=1 to let the tests do it")
    assert cluster_idle()
    yield
    if started:
        subprocess.run(["bash", str(DOWN)], timeout=120)


def slurm_env(proj: Path, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(proj / "src"), EXPFLOW_SIMULATED_GPUS="4x81920",
               EXPFLOW_LEASE_DIR=str(tmp_path / "leases"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def run_on_slurm(proj: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--workflow-profile", str(REPO / "workflows/profiles/slurm"), *extra],
        cwd=proj, env=slurm_env(proj, tmp_path), capture_output=True, text=True, timeout=900,
    )


def start_on_slurm(proj: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--workflow-profile", str(REPO / "workflows/profiles/slurm"), *extra],
        cwd=proj, env=slurm_env(proj, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def start_reference(proj: Path, tmp_path: Path, overrides: list[str]) -> subprocess.Popen:
    """The same run uninterrupted, outside Slurm (trained meanwhile on the other core), into
    ``tmp_path/reference/reference``."""
    return subprocess.Popen(
        [sys.executable, "-m", "expflow.train", "trainer=debug", "trainer.threads=1", *overrides, "gpu=cpu",
         f"paths.runs={tmp_path / 'reference'}", "run_id=reference", "trainer.progress=none"],
        cwd=proj, env=dict(os.environ, PYTHONPATH=str(proj / "src")), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)


def step_values(pkg: SavePackage) -> list:
    return [(r["step"], r["values"]) for r in effective_metrics(pkg.scan_records().records)]


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True)
    return out.stdout.strip().split("\n")[0]


def packages(proj: Path) -> dict[str, SavePackage]:
    return {p.name: SavePackage.open(p) for p in (proj / "runs").iterdir() if (p / "manifest.json").exists()}


# Epochs of at least `epoch_s` each: a run that a signal must catch before its end lasts
# long enough on any machine (its metrics are those of the default lifecycle's run).
PACED = '''
import time

from expflow.lifecycle import Lifecycle


class Paced(Lifecycle):
    def __init__(self, epoch_s, **kwargs):
        super().__init__(**kwargs)
        self.epoch_s = float(epoch_s)

    def after_epoch(self, state):
        time.sleep(self.epoch_s)
'''


def paced(epoch_s: float) -> list[str]:
    return ["lifecycle._target_=paced.Paced", f"+lifecycle.epoch_s={epoch_s}"]


def workflow(sweep: list[str], common: list[str], retries: int = 0) -> dict:
    return {
        "sweep": sweep,
        "common": ["trainer=debug", "trainer.threads=1", *common],
        "train": {"threads": 1, "mem_mb": 1000, "runtime": 10, "retries": retries},
        # The account comes from the workflow config, as a user's would.
        "slurm": {"partition": "debug", "account": "expflow"},
    }


def test_sweep_runs_on_slurm_with_granted_gpus_two_runs_per_allocation(slurm, tmp_path):
    """A run's train and analyze jobs are one group; --group-components runs=2 puts two runs
    in one Slurm allocation (many tiny runs). Inside it, each run leases a device Slurm
    granted, never one another run holds."""
    wf = workflow(["seed=range(6)"], ["trainer.max_epochs=2", "gpu.count=1"])
    wf["analyze"] = {"scripts": ["accuracy"]}
    proj = make_project(tmp_path, wf)
    proc = run_on_slurm(proj, tmp_path, "--group-components", "runs=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pkgs = packages(proj)
    assert len(pkgs) == 6
    spans = []
    allocations: dict[str, int] = {}
    for pkg in pkgs.values():
        m = pkg.manifest()
        assert pkg.status() is Status.COMPLETED
        assert (pkg.analysis_dir / "accuracy" / "analysis.done").is_file()  # in the run's allocation
        (job,) = m["scheduler_jobs"]
        assert job["scheduler"] == "slurm" and job["node"] and sacct_state(job["job_id"]) == "COMPLETED"
        allocations[job["job_id"]] = allocations.get(job["job_id"], 0) + 1
        # expflow leased a device Slurm granted (the run's job step gets its own), and recorded it.
        granted = [int(g) for g in str(job["granted_gpus"]).split(",")]
        assert len(m["gpus"]) == 1 and m["gpus"][0] in granted, (m["gpus"], granted)
        (lease,) = m["leases"]
        spans.append((lease["acquired"], lease["released"], m["gpus"][0]))
    assert sorted(allocations.values()) == [2, 2, 2], allocations  # three allocations of two runs
    assert lease_peak(spans) >= 2, "runs trained one at a time; each allocation holds two"
    # The same workflow config, locally: nothing to do.
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=proj, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(proj / "src")))
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_failure_is_reported_and_a_retry_continues(slurm, tmp_path):
    wf = workflow(["seed=7 lifecycle._target_=crashy.CrashOnce", "seed=8 optim=sgd optim.optimizer.momentum=-1"],
                  ["trainer.max_epochs=4", "gpu.count=1"], retries=1)
    proj = make_project(tmp_path, wf, {"src/crashy.py": CRASHY})
    marker = tmp_path / "crashed"
    os.environ["CRASH_MARKER"] = str(marker)
    try:
        proc = run_on_slurm(proj, tmp_path)
    finally:
        os.environ.pop("CRASH_MARKER")
    # The bad run fails the workflow (keep-going finishes the other).
    assert proc.returncode != 0
    assert "Error in rule train" in proc.stdout + proc.stderr
    by_seed = {p.config().seed: p for p in packages(proj).values()}

    retried = by_seed[7]
    assert marker.exists() and retried.status() is Status.COMPLETED
    m = retried.manifest()
    assert [a["kind"] for a in m["attempts"]] == ["train", "continue"]
    assert m["attempts"][1]["from_step"] == 2 * 23
    # The killed job failed in Slurm; Snakemake resubmitted it, and the new job continued.
    first, second = m["scheduler_jobs"]
    assert first["job_id"] != second["job_id"]
    assert sacct_state(first["job_id"]) == "FAILED" and sacct_state(second["job_id"]) == "COMPLETED"
    steps = [r["step"] for r in effective_metrics(retried.scan_records().records) if "val/acc" in r["values"]]
    assert steps == [23, 46, 69, 92]

    failed = by_seed[8]
    assert failed.status() is Status.CRASHED
    jobs = failed.manifest()["scheduler_jobs"]
    assert len(jobs) == 2 and len({j["job_id"] for j in jobs}) == 2  # one attempt per Slurm job
    assert all(sacct_state(j["job_id"]) == "FAILED" for j in jobs)
    board = run_cli("status", "--runs", str(proj / "runs"), "--json")
    assert board.returncode == 0, board.stderr
    statuses = {row["run_id"]: row["status"] for row in json.loads(board.stdout)}
    assert statuses == {failed.path.name: "CRASHED", retried.path.name: "COMPLETED"}
    shown = run_cli("show", str(failed.path))
    assert "CRASHED" in shown.stdout and "ValueError" in shown.stdout and "momentum" in shown.stdout



def test_a_time_limit_warning_stops_the_run_and_the_resubmitted_job_continues_it(slurm, tmp_path):
    """A 1-minute time limit with the warning 30 s before it (train.signal_s): the run, in
    its Slurm job, warns itself (SIGUSR1) then, checkpoints at the step it is in and stops
    (TIMEOUT); the job fails, Snakemake resubmits it and the new job continues from that step
    until the run completes. Its metrics equal an uninterrupted run's, sacct shows one job per
    attempt and the manifest each stop with its reason and step."""
    # 300 paced epochs: at least 36 s of training, past the warning 30 s into the 1-minute job.
    overrides = ["trainer.max_epochs=300", "trainer.log_every_n_steps=1", "gpu.count=1", "seed=3", *paced(0.12)]
    wf = workflow([""], overrides, retries=6)
    wf["train"].update(runtime=1, signal_s=30)
    proj = make_project(tmp_path, wf, {"src/paced.py": PACED})
    # The uninterrupted reference, trained meanwhile on the other core.
    reference = start_reference(proj, tmp_path, overrides)
    proc = run_on_slurm(proj, tmp_path)
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (pkg,) = packages(proj).values()
    m = pkg.manifest()
    assert pkg.status() is Status.COMPLETED
    attempts = m["attempts"]
    stops = [a["stopped"] for a in attempts if a.get("stopped")]
    assert stops, "the run finished before Slurm's warning"
    assert all((s["reason"], s["signal"]) == ("TIMEOUT", "SIGUSR1") for s in stops), stops
    # Each stop's checkpoint is where the next attempt continued.
    assert [a.get("from_step") for a in attempts[1:]] == [s["step"] for s in stops]
    jobs = m["scheduler_jobs"]
    assert len(jobs) == len(attempts) and len({j["job_id"] for j in jobs}) == len(jobs)
    assert [sacct_state(j["job_id"]) for j in jobs] == ["FAILED"] * len(stops) + ["COMPLETED"]
    assert step_values(pkg) == step_values(SavePackage.open(tmp_path / "reference" / "reference"))
    board = run_cli("status", "--runs", str(proj / "runs"), "--json")
    (row,) = json.loads(board.stdout)
    assert row["stops"] == {"TIMEOUT": len(stops)}


def test_a_run_across_two_nodes_completes_and_every_rank_logs(slurm, tmp_path):
    """trainer.nodes=2 under the Slurm profile: the train job gets two nodes of partition
    `multi` (two slurmd in network namespaces, scripts/slurm/up.sh) with gpu.count=2 simulated
    GPUs on each, and runs one torchrun on each, 2 ranks per node, gloo (no CUDA here),
    rendezvous at the allocation's first host. Rank 0 writes
    the package; every rank, on either node, writes its log there. The validation metrics the
    4 ranks reduced equal a single-process evaluation of the final model."""
    if "multi" not in subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout:
        pytest.fail("no partition `multi` on the test cluster (scripts/slurm/up.sh makes it)")
    wf = workflow([""], ["trainer.max_epochs=2", "gpu.count=2", "trainer.nodes=2", "trainer.processes=2"])
    wf["slurm"]["partition"] = "multi"
    proj = make_project(tmp_path, wf)
    proc = run_on_slurm(proj, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (pkg,) = packages(proj).values()
    m = pkg.manifest()
    assert pkg.status() is Status.COMPLETED and m["world_size"] == 4
    # Ranks are numbered node by node: 0 and 1 on the first host, 2 and 3 on the second.
    assert m["rank_hosts"] == ["node1", "node1", "node2", "node2"]
    (job,) = m["scheduler_jobs"]
    nodes = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job["job_id"], "-o", "NodeList,AllocNodes"],
                           capture_output=True, text=True).stdout.split()[0]
    assert nodes == "node[1-2]|2" and sacct_state(job["job_id"]) == "COMPLETED"
    # The torchrun step (the job's second, after the plugin's own) got gpu.count GPUs on each node.
    tres = subprocess.run(["sacct", "-n", "-P", "-j", f"{job['job_id']}.1", "-o", "NodeList,AllocTRES"],
                          capture_output=True, text=True).stdout.split()[0]
    assert tres.startswith("node[1-2]|") and "gres/gpu=4" in tres, tres
    for rank in range(4):
        # Each node's ranks see that node's 2 GPUs (and train on the CPU: no CUDA here).
        assert (f"rank {rank} of 4 on node{rank // 2 + 1} (local rank {rank % 2}, cpu, CUDA_VISIBLE_DEVICES=0,1)"
                in pkg.log_path(rank, "out").read_text())
    # Rank 0 alone reported progress.
    assert " epoch " in pkg.log_path(0, "out").read_text()
    assert all(" epoch " not in pkg.log_path(r, "out").read_text() for r in (1, 2, 3))
    records = [r for r in effective_metrics(pkg.scan_records().records) if "val/acc" in r["values"]]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["values"]["val/acc"] == pytest.approx(single_process_val_acc(pkg), abs=1e-12)


def test_a_requeued_then_cancelled_job_checkpoints_each_time_and_the_run_completes(slurm, tmp_path):
    """A running train job is requeued (`scontrol requeue`: Slurm ends it with SIGTERM and queues
    it again under the same id), then, in its second start, cancelled (`scancel`). Each time the
    run checkpoints at its step and records why (REQUEUED, CANCELLED); the requeued job's next
    start continues the run, and after the cancel Snakemake resubmits the job (train.retries),
    whose run continues and completes, bit-identical to an uninterrupted run. sacct lists every
    start; the manifest every stop with its reason."""
    # Paced: the run is still going when each signal comes (at epochs ~5 and ~10 of 400), on any machine.
    overrides = ["trainer.max_epochs=400", "trainer.log_every_n_steps=1", "gpu.count=1", "seed=4", *paced(0.02)]
    proj = make_project(tmp_path, workflow([""], overrides, retries=1), {"src/paced.py": PACED})
    # Accounting outlives a cluster restarted with fresh state, whose job ids start again:
    # only this test's records.
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    reference = start_reference(proj, tmp_path, overrides)
    workflow_proc = start_on_slurm(proj, tmp_path)

    def running_past(step: int, attempts: int) -> SavePackage:
        """Wait (no verdict on time) until the run's attempt `attempts` is past `step`."""
        for _ in range(2400):
            found = packages(proj) if (proj / "runs").is_dir() else {}
            if found:
                (pkg,) = found.values()
                m = pkg.manifest()
                if (pkg.status() is Status.RUNNING and len(m.get("attempts") or []) == attempts
                        and ((m.get("progress") or {}).get("step") or 0) >= step):
                    return pkg
            assert workflow_proc.poll() is None, workflow_proc.communicate()
            time.sleep(0.25)
        pytest.fail(f"the run's attempt {attempts} never got past step {step}")

    pkg = running_past(100, attempts=1)
    (job,) = pkg.manifest()["scheduler_jobs"]
    subprocess.run(["scontrol", "requeue", job["job_id"]], check=True)
    # Slurm holds a requeued job for two minutes (its BeginTime); this test need not wait them.
    for _ in range(600):
        state = subprocess.run(["squeue", "-h", "-j", job["job_id"], "-o", "%T"], capture_output=True,
                               text=True).stdout.strip()
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job['job_id']}", "StartTime=now"], check=True)
            break
        time.sleep(0.2)
    first_stop = pkg.manifest()["attempts"][0]["stopped"]["step"]
    running_past(first_stop + 100, attempts=2)
    subprocess.run(["scancel", job["job_id"]], check=True)
    out, err = workflow_proc.communicate(timeout=900)
    assert workflow_proc.returncode == 0, out[-3000:] + err[-3000:]
    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    m = pkg.manifest()
    assert pkg.status() is Status.COMPLETED
    stops = [a["stopped"] for a in m["attempts"] if a.get("stopped")]
    assert [(s["reason"], s["signal"]) for s in stops] == [("REQUEUED", "SIGTERM"), ("CANCELLED", "SIGTERM")]
    assert [a["kind"] for a in m["attempts"]] == ["train", "continue", "continue"]
    assert [a.get("from_step") for a in m["attempts"][1:]] == [s["step"] for s in stops]
    # The requeued job started twice under its id; the resubmitted one is a job of its own.
    ids = [j["job_id"] for j in m["scheduler_jobs"]]
    assert ids[:2] == [job["job_id"]] * 2 and len(ids) == 3 and ids[2] != job["job_id"]
    states = lambda job_id: subprocess.run(  # noqa: E731
        ["sacct", "-n", "-X", "-D", "-P", "-S", since, "-j", job_id, "-o", "State"],
        capture_output=True, text=True).stdout.splitlines()
    assert states(job["job_id"]) == ["REQUEUED", "CANCELLED by 0"]
    assert states(ids[2]) == ["COMPLETED"]
    assert step_values(pkg) == step_values(SavePackage.open(tmp_path / "reference" / "reference"))
    board = run_cli("status", "--runs", str(proj / "runs"), "--json")
    (row,) = json.loads(board.stdout)
    assert row["stops"] == {"REQUEUED": 1, "CANCELLED": 1}
