"""A run across the nodes of a Slurm allocation (``trainer.nodes > 1``): one torchrun per node.

The launcher (:func:`expflow.launch.launch`, in the run's train job on one node of the
allocation) starts ``srun --overlap --nodes=N --ntasks-per-node=1 python -m expflow.nodes ...``;
on each node this module's agent starts torchrun for that node's ``trainer.processes`` ranks
with a static rendezvous: ``--nnodes=N --node-rank=$SLURM_NODEID`` and the first host of the
allocation (the job's NodeList from ``scontrol show job``, expanded by ``scontrol show
hostnames``) as the endpoint,
where node rank 0's torchrun holds the store. Ranks are numbered node by node (rank 0 on the
first host); gloo on CPU, nccl on GPU (:mod:`expflow.distributed`). Rank 0 alone writes the
package; every rank writes its own log there (``logs/rank<N>.out``/``.err``).

A stop signal given to the launcher goes to srun, which passes it to every node's agent,
which passes it to its ranks (not to torchrun, which would end them). In a Slurm job each
rank also arms its own warning before the job's end (:func:`expflow.interrupt.arm_time_limit_warning`).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from expflow.errors import ConfigError

# The launcher's environment without what the train job's own step set (its task count,
# CPUs, node list of one node...): srun would take those as defaults for the new step.
_KEEP_SLURM = {"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CLUSTER_NAME", "SLURM_CONF", "SLURM_SUBMIT_DIR",
               "SLURM_SUBMIT_HOST"}


@dataclass(frozen=True)
class Allocation:
    job_id: str
    hosts: tuple[str, ...]  # in the allocation's order: the first is the rendezvous endpoint
    this_node: str | None

    @property
    def master(self) -> str:
        return self.hosts[0]


def allocation(nodes: int, environ: dict[str, str] | None = None) -> Allocation:
    """The Slurm allocation this process runs in, checked to have ``nodes`` nodes; one line
    naming ``trainer.nodes`` when there is none or it is smaller."""
    environ = os.environ if environ is None else environ
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job_id:
        raise ConfigError(f"trainer.nodes={nodes}: a run across nodes needs a Slurm allocation of {nodes} nodes "
                          f"(the Slurm profile asks for one; or run it inside `salloc -N {nodes}`); "
                          "this process is in none (valid here: trainer.nodes=1)")
    # The job's nodes from the controller: in a job step (the executor plugin runs the train
    # job in one of a single node) SLURM_JOB_NODELIST names the step's nodes only.
    from expflow.interrupt import job_fields

    nodelist = job_fields(job_id).get("NodeList")
    nodelist = nodelist if nodelist and nodelist != "(null)" else environ.get("SLURM_JOB_NODELIST")
    hosts = _expand(nodelist) if nodelist else ()
    if len(hosts) < nodes:
        raise ConfigError(f"trainer.nodes={nodes}: Slurm job {job_id} has {len(hosts)} node(s) "
                          f"({nodelist or 'none'}); ask for {nodes} (sbatch/salloc -N {nodes})")
    return Allocation(job_id, hosts[:nodes], environ.get("SLURMD_NODENAME"))


def srun_command(alloc: Allocation, nodes: int, processes: int, gpus_per_node: int,
                 worker_args: Sequence[str]) -> list[str]:
    """The launcher's command: one agent per node of ``alloc`` (its first ``nodes`` hosts)."""
    port = rendezvous_port(alloc)
    cmd = ["srun", "--overlap", f"--jobid={alloc.job_id}", f"--nodes={nodes}", f"--ntasks={nodes}",
           "--ntasks-per-node=1", f"--nodelist={','.join(alloc.hosts)}", "--kill-on-bad-exit=1",
           "--export=ALL"]
    if gpus_per_node > 0:
        cmd.append(f"--gpus-per-node={gpus_per_node}")
    return cmd + [sys.executable, "-m", "expflow.nodes", f"--nodes={nodes}", f"--processes={processes}",
                  f"--master={alloc.master}", f"--port={port}", "--", *worker_args]


def srun_env(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` without the train job step's own Slurm settings (see ``_KEEP_SLURM``)."""
    return {k: v for k, v in environ.items()
            if not ((k.startswith("SLURM_") and k not in _KEEP_SLURM) or k.startswith(("SRUN_", "SBATCH_")))}


def rendezvous_port(alloc: Allocation) -> int:
    """A free port on the first host when this process runs there; else one derived from the
    job id (the same on every try of the job, in 20000..39999)."""
    if alloc.this_node == alloc.master:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return int(s.getsockname()[1])
    digits = "".join(c for c in alloc.job_id if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000


def _expand(nodelist: str) -> tuple[str, ...]:
    """Slurm's host list (``node[1-2],gpu7``) as host names, by ``scontrol show hostnames``."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ConfigError(f"trainer.nodes: cannot expand the Slurm node list {nodelist!r} with "
                          f"`scontrol show hostnames`: {e}") from None
    return tuple(h for h in out.split() if h)


# -- the agent on each node ------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m expflow.nodes --nodes N --processes P --master HOST --port PORT -- <worker args>``:
    started by srun on each node; runs torchrun for this node's ranks and waits on it."""
    parser = argparse.ArgumentParser(prog="python -m expflow.nodes")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--processes", type=int, required=True)
    parser.add_argument("--master", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("worker", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    worker = args.worker[1:] if args.worker[:1] == ["--"] else args.worker
    node_rank = os.environ.get("SLURM_NODEID")
    if node_rank is None:
        return ConfigError("python -m expflow.nodes: SLURM_NODEID is not set (srun starts this, one per node)").report()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={args.nodes}", f"--node-rank={node_rank}",
           f"--master-addr={args.master}", f"--master-port={args.port}", f"--nproc-per-node={args.processes}",
           "-m", "expflow.worker", *worker]
    from expflow.interrupt import Forwarder, prepare_training_child

    child = subprocess.Popen(cmd, preexec_fn=prepare_training_child)
    with Forwarder(child.pid, through_torchrun=True):  # a stop signal: to this node's ranks
        child.wait()
    code = child.returncode
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
