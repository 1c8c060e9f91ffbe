"""Runs across nodes (trainer.nodes > 1): the checks and commands that need no cluster. The
run itself on two nodes of the test cluster is tests/test_slurm.py."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from expflow import nodes
from expflow.errors import ConfigError
from expflow.runid import RunSpec
from expflow.workflow import plan_workflow, train_gpus, train_gres

from .conftest import REPO, assert_one_line_error, run_cli, small_overrides


@pytest.fixture
def scontrol(tmp_path, monkeypatch):
    """A stand-in `scontrol` on PATH: `show job -o` prints the NodeList of $FAKE_NODELIST,
    `show hostnames` expands node[1-3]-style lists."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import os, re, sys\n"
        "a = [x for x in sys.argv[1:] if x != '-o']\n"
        "if a[:2] == ['show', 'job']:\n"
        "    print(f\"JobId={a[-1]} JobState=RUNNING NodeList={os.environ['FAKE_NODELIST']} NumNodes=2\")\n"
        "elif a[:2] == ['show', 'hostnames']:\n"
        "    m = re.fullmatch(r'(\\w+)\\[(\\d+)-(\\d+)\\]', a[2])\n"
        "    print('\\n'.join(f'{m[1]}{i}' for i in range(int(m[2]), int(m[3]) + 1)) if m else a[2])\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return monkeypatch


def test_outside_slurm_a_run_across_nodes_is_one_line_and_makes_no_package(tmp_path):
    runs = tmp_path / "runs"
    env = {k: "" for k in ("SLURM_JOB_ID", "SLURM_JOBID")}
    proc = run_cli(*small_overrides(runs, "trainer.nodes=2"), module="expflow.train", env=env)
    assert_one_line_error(proc, "trainer.nodes=2", "Slurm allocation of 2 nodes", "salloc -N 2")
    assert not list(runs.rglob("manifest.json"))  # Hydra made its output dir; no package


def test_nodes_must_be_a_positive_integer(tmp_path):
    proc = run_cli(*small_overrides(tmp_path / "runs", "trainer.nodes=0"), module="expflow.train")
    assert_one_line_error(proc, "trainer.nodes")


def test_the_allocation_comes_from_the_controller_not_the_step(scontrol):
    # In the train job's step SLURM_JOB_NODELIST names the step's one node; the job has two.
    scontrol.setenv("FAKE_NODELIST", "gpu[7-8]")
    alloc = nodes.allocation(2, {"SLURM_JOB_ID": "41", "SLURM_JOB_NODELIST": "gpu7", "SLURMD_NODENAME": "gpu7"})
    assert alloc.hosts == ("gpu7", "gpu8") and alloc.master == "gpu7" and alloc.this_node == "gpu7"
    with pytest.raises(ConfigError, match=r"trainer.nodes=3: Slurm job 41 has 2 node\(s\) \(gpu\[7-8\]\)"):
        nodes.allocation(3, {"SLURM_JOB_ID": "41"})


def test_srun_starts_one_agent_per_node_with_the_first_host_as_endpoint(scontrol):
    scontrol.setenv("FAKE_NODELIST", "node[1-2]")
    alloc = nodes.allocation(2, {"SLURM_JOB_ID": "1234", "SLURMD_NODENAME": "elsewhere"})
    cmd = nodes.srun_command(alloc, 2, 4, 8, ["/runs/abc", "--resume", "latest"])
    assert cmd[:2] == ["srun", "--overlap"]
    assert {"--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--nodelist=node1,node2", "--gpus-per-node=8",
            "--kill-on-bad-exit=1"} <= set(cmd)
    agent = cmd[cmd.index("expflow.nodes") + 1:]
    # Not on the first host: a port derived from the job id, the same on every try.
    assert agent == ["--nodes=2", "--processes=4", "--master=node1", "--port=21234", "--",
                     "/runs/abc", "--resume", "latest"]
    assert "--gpus-per-node=0" not in nodes.srun_command(alloc, 2, 1, 0, ["/runs/abc"])


def test_the_step_settings_of_the_train_job_do_not_reach_the_new_step():
    env = nodes.srun_env({"SLURM_JOB_ID": "9", "SLURM_NTASKS": "1", "SLURM_NNODES": "1", "SLURM_STEP_ID": "0",
                          "SRUN_CPUS_PER_TASK": "1", "SLURM_CONF": "/etc/slurm/slurm.conf", "PATH": "/bin"})
    assert env == {"SLURM_JOB_ID": "9", "SLURM_CONF": "/etc/slurm/slurm.conf", "PATH": "/bin"}


def test_the_agent_runs_torchrun_for_its_node_rank(monkeypatch, tmp_path):
    seen: dict = {}

    class Child:
        pid, returncode = os.getpid(), 0

        def __init__(self, cmd, **kw):
            seen["cmd"] = cmd

        def wait(self):
            return 0

    monkeypatch.setattr(nodes.subprocess, "Popen", Child)
    monkeypatch.setenv("SLURM_NODEID", "1")
    assert nodes.main(["--nodes=2", "--processes=2", "--master=node1", "--port=29555", "--", "/runs/abc"]) == 0
    cmd = seen["cmd"]
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node-rank=1", "--master-addr=node1", "--master-port=29555",
            "--nproc-per-node=2"} <= set(cmd)
    assert cmd[-3:] == ["-m", "expflow.worker", "/runs/abc"]


def test_the_workflow_asks_for_the_nodes_and_the_gpus_per_node(tmp_path):
    plain = RunSpec("a" * 12, (), 2, 0)
    across = RunSpec("b" * 12, (), 2, 0, nodes=3)
    assert (train_gpus(plain), train_gres(plain)) == (2, "")
    assert (train_gpus(across), train_gres(across)) == (0, "gpu:2")
    assert train_gres(RunSpec("c" * 12, (), 0, 0, nodes=2)) == ""
    runs = plan_workflow({"sweep": ["trainer.nodes=1,2"], "config_dir": str(REPO / "conf")},
                         cache=tmp_path / "plan.json")
    assert sorted(spec.nodes for spec in runs.values()) == [1, 2]
    # The cache keeps it.
    again = plan_workflow({"sweep": ["trainer.nodes=1,2"], "config_dir": str(REPO / "conf")},
                          cache=tmp_path / "plan.json")
    assert again == runs and Path(tmp_path / "plan.json").is_file()
