"""``runner=command``: programs that know nothing of expflow run as save-packages.

Each test makes a project with ``expflow new --example command`` and puts a program in it:
seed 004's ``train.py`` exactly as written (unseeded ``torch.rand``, ``swanlab.init/log/finish``),
a script that writes only TensorBoard events, one that calls ``expflow.log``, the scaffold's
own resumable script, and a ``torchrun`` program.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from expflow.package import SavePackage, Status, effective_metrics

pytestmark = pytest.mark.slow

PROGRAMS = Path(__file__).with_name("programs")


def make_project(tmp_path: Path, train_py: str | None = None, name: str = "proj") -> Path:
    proj = tmp_path / name
    subprocess.run([sys.executable, "-m", "expflow.cli", "new", str(proj), "--example", "command"],
                   check=True, capture_output=True, text=True)
    if train_py is not None:
        (proj / "train.py").write_text(train_py)
    return proj


def env_for(proj: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("EXPFLOW_METRICS_SOCKET", None)
    return env


def train(proj: Path, *overrides: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "expflow.train", "trainer.progress=plain", *overrides],
                          cwd=proj, env=env or env_for(proj), capture_output=True, text=True, timeout=timeout)


def cli(proj: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "expflow.cli", *args], cwd=proj, env=env or env_for(proj),
                          capture_output=True, text=True, timeout=timeout)


def points(pkg: SavePackage) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in effective_metrics(pkg.scan_records().records):
        for name, value in rec["values"].items():
            out.setdefault(name, []).append((rec["step"], value))
    return out


def only_package(proj: Path) -> SavePackage:
    (path,) = [p for p in (proj / "runs").iterdir() if (p / "manifest.json").exists()]
    return SavePackage.open(path)


def test_seed004_script_as_written_runs_reruns_bit_identically(tmp_path):
    proj = make_project(tmp_path, (PROGRAMS / "seed004_train.py").read_text())
    proc = train(proj, "runner.argv=[python,train.py]", "run_id=seed004")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    pkg = SavePackage.open(proj / "runs" / "seed004")
    assert pkg.status() is Status.COMPLETED
    got = points(pkg)
    assert [s for s, _ in got["loss"]] == list(range(0, 8000, 5))
    assert [s for s, _ in got["GroundTruth"]] == list(range(101))
    assert [s for s, _ in got["PredictFunc"]] == list(range(101))
    # GroundTruth is (2x - 1)^2 on linspace(0, 1, 101), computed in float32 by the script.
    import torch

    x = torch.linspace(0, 1, 101).unsqueeze(1)
    assert [v for _, v in got["GroundTruth"]] == [v.item() for v in ((2 * x - 1) ** 2)]
    # The program's output went to the package's logs, and ran from the code snapshot.
    assert "Iter [1/8000]" in pkg.log_path(0, "out").read_text()
    assert pkg.manifest()["command"]["cwd"] == str(pkg.code_dir.resolve())

    rerun = cli(proj, "rerun", str(pkg.path))
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "bit-identical" in rerun.stdout + rerun.stderr


def test_sweep_of_command_runs_leases_each_its_own_device(tmp_path):
    proj = make_project(tmp_path, (PROGRAMS / "seed004_train.py").read_text())
    workflow = yaml.safe_load((proj / "conf" / "workflow.yaml").read_text())
    workflow["sweep"] = ["seed=range(4)"]
    workflow["common"] = ["runner.argv=[python,train.py]", "trainer.progress=plain", "gpu.count=1",
                          "gpu.max_jobs_per_gpu=1", "gpu.allow_cpu=true"]
    workflow["train"]["retries"] = 0
    (proj / "conf" / "workflow.yaml").write_text(yaml.safe_dump(workflow))
    env = env_for(proj, EXPFLOW_SIMULATED_GPUS="2x81920", EXPFLOW_LEASE_DIR=str(tmp_path / "leases"))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "4", "--resources", "gpu=2"],
                          cwd=proj, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pkgs = [SavePackage.open(p) for p in sorted((proj / "runs").iterdir()) if (p / "manifest.json").exists()]
    assert len(pkgs) == 4
    spans = []
    for pkg in pkgs:
        m = pkg.manifest()
        assert pkg.status() is Status.COMPLETED
        assert len(m["gpus"]) == 1 and m["gpus"][0] in (0, 1)
        (lease,) = m["leases"]
        spans.append((lease["acquired"], lease["released"], m["gpus"][0]))
        # The program saw its lease (a simulated device: CUDA_VISIBLE_DEVICES names it).
        assert m["command"]["pid"] > 0
        assert len(points(pkg)["loss"]) == 1600
    for device in (0, 1):
        mine = sorted((s, e) for s, e, d in spans if d == device)
        for (_, e1), (s2, _) in zip(mine, mine[1:], strict=False):
            assert s2 >= e1, f"device {device} ran two command runs at once"
    assert (proj / "runs" / "report.html").exists()


TENSORBOARD_ONLY = '''
import math
import os
from torch.utils.tensorboard import SummaryWriter

w = SummaryWriter(os.path.join("runs", "tb"))
for step in range(0, 50, 5):
    w.add_scalar("loss", 1.0 / (step + 3), step)
    w.add_scalar("lr", 0.1 * math.cos(step), step)
w.close()
'''

EXPFLOW_LOG = '''
import numpy as np
import torch

import expflow

for step in range(20):
    expflow.log({"a": step / 7, "b": np.float32(step) / np.float32(3)}, step=step)
expflow.log({"t": torch.tensor(0.1, dtype=torch.float64)})  # step: the next one (20)
'''


def test_tensorboard_only_and_expflow_log_programs_end_in_the_records(tmp_path):
    proj = make_project(tmp_path, TENSORBOARD_ONLY)
    (proj / "log_it.py").write_text(EXPFLOW_LOG)
    proc = train(proj, "runner.argv=[python,train.py]", "run_id=tb")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    got = points(SavePackage.open(proj / "runs" / "tb"))
    f32 = lambda v: struct.unpack("f", struct.pack("f", v))[0]  # noqa: E731  (TensorBoard stores float32)
    import math

    assert got["loss"] == [(s, f32(1.0 / (s + 3))) for s in range(0, 50, 5)]
    assert got["lr"] == [(s, f32(0.1 * math.cos(s))) for s in range(0, 50, 5)]

    proc = train(proj, "runner.argv=[python,log_it.py]", "run_id=log")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    got = points(SavePackage.open(proj / "runs" / "log"))
    import numpy as np

    assert got["a"] == [(s, s / 7) for s in range(20)]
    assert got["b"] == [(s, float(np.float32(s) / np.float32(3))) for s in range(20)]
    assert got["t"] == [(20, 0.1)]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_sigkill_shows_crashed_and_continue_resumes_from_the_last_checkpoint(tmp_path):
    proj = make_project(tmp_path)  # the scaffold's train.py: checkpoints every 200 steps, --resume
    overrides = ["trainer.progress=plain", "runner.argv=[python,train.py,--steps,4000,--save-every,200]",
                 "run_id=killed"]
    proc = subprocess.Popen([sys.executable, "-m", "expflow.train", *overrides], cwd=proj, env=env_for(proj),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckdir = proj / "runs" / "killed" / "checkpoints" / "program"
    try:
        wait_for(lambda: ckdir.is_dir() and len([p for p in ckdir.glob("step_*.pt")]) >= 2, 120,
                 "two program checkpoints")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # expflow and the program, at once
        proc.wait()
    pkg = SavePackage.open(proj / "runs" / "killed")
    wait_for(lambda: pkg.status(heartbeat_timeout=60) is Status.CRASHED, 30, "CRASHED")
    last = max(int(p.stem.split("_")[1]) for p in ckdir.glob("step_*.pt"))

    cont = cli(proj, "continue", str(pkg.path))
    assert cont.returncode == 0, cont.stdout[-2000:] + cont.stderr[-2000:]
    assert pkg.status() is Status.COMPLETED
    m = pkg.manifest()
    attempt = m["attempts"][-1]
    assert attempt["kind"] == "continue" and attempt["checkpoint"].endswith(f"step_{last:06d}.pt")
    assert f"resumed from {attempt['checkpoint']} at step {last}" in pkg.log_path(0, "out").read_text()
    loss = points(pkg)["train/loss"]
    assert [s for s, _ in loss] == list(range(10, 4001, 10))  # rolled back to the checkpoint, no duplicates

    # The continued run equals an uninterrupted one, value for value (seeded, RNG state in the checkpoint).
    fresh = train(proj, *overrides[:-1], "run_id=fresh")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert points(SavePackage.open(proj / "runs" / "fresh")) == points(pkg)


def test_a_time_limit_warning_reaches_a_program_that_declares_it_and_continue_finishes_it(tmp_path):
    """`runner.stop_signal: SIGUSR1` (the scaffold's script checkpoints and exits on it): a
    SIGUSR1 to expflow (what Slurm sends before the time limit) is passed on; the run is
    CRASHED with reason TIMEOUT at the program's checkpoint step, and `expflow continue`
    finishes it equal to an uninterrupted run."""
    proj = make_project(tmp_path)
    overrides = ["trainer.progress=plain", "runner.argv=[python,train.py,--steps,4000,--save-every,500]",
                 "run_id=warned"]
    proc = subprocess.Popen([sys.executable, "-m", "expflow.train", *overrides], cwd=proj, env=env_for(proj),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckdir = proj / "runs" / "warned" / "checkpoints" / "program"
    wait_for(lambda: ckdir.is_dir() and any(ckdir.glob("step_*.pt")), 120, "a program checkpoint")
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "interrupted: TIMEOUT (SIGUSR1)" in err, err[-2000:]
    pkg = SavePackage.open(proj / "runs" / "warned")
    m = pkg.manifest()
    stopped = m["attempts"][-1]["stopped"]
    last = max(int(p.stem.split("_")[1]) for p in ckdir.glob("step_*.pt"))
    assert pkg.status() is Status.CRASHED and m["error"]["type"] == "TIMEOUT"
    assert (stopped["reason"], stopped["signal"], stopped["step"]) == ("TIMEOUT", "SIGUSR1", last) and last < 4000
    cont = cli(proj, "continue", str(pkg.path))
    assert cont.returncode == 0, cont.stdout[-2000:] + cont.stderr[-2000:]
    assert pkg.status() is Status.COMPLETED
    fresh = train(proj, *overrides[:-1], "run_id=fresh")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert points(SavePackage.open(proj / "runs" / "fresh")) == points(pkg)


TORCHRUN_CHILD = '''
import os
import signal
import sys
import time
from pathlib import Path

marks = Path(os.environ["MARKS"])
rank = os.environ["RANK"]


def stop(signum, frame):
    (marks / f"rank{rank}.{signal.Signals(signum).name}").write_text(str(os.getpid()))
    sys.exit(0)


signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
(marks / f"rank{rank}.ready").write_text(str(os.getpid()))
while True:
    time.sleep(0.1)
'''


def test_ctrl_c_reaches_every_child_of_a_torchrun_command(tmp_path):
    proj = make_project(tmp_path, TORCHRUN_CHILD)
    marks = tmp_path / "marks"
    marks.mkdir()
    argv = f"runner.argv=[{sys.executable},-m,torch.distributed.run,--standalone,--nproc-per-node,2,train.py]"
    proc = subprocess.Popen([sys.executable, "-m", "expflow.train", "trainer.progress=plain", argv, "run_id=ddp",
                             "runner.stop_grace_s=30"],
                            cwd=proj, env=env_for(proj, MARKS=str(marks)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(list(marks.glob("*.ready"))) == 2, 120, "both torchrun workers")
        proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends expflow
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = sorted(p.name for p in marks.iterdir() if not p.name.endswith(".ready"))
    # torchrun forwards the SIGINT it gets; each worker also receives it from the process group.
    assert {n.split(".")[0] for n in stopped} == {"rank0", "rank1"}, stopped
    assert proc.returncode != 0
    pkg = SavePackage.open(proj / "runs" / "ddp")
    assert pkg.status() is Status.CRASHED
    assert "interrupted" in json.dumps(pkg.manifest()["error"])
    # The program's own stderr (torchrun's traceback) passes through; expflow's word is one last line.
    assert err.strip().splitlines()[-1].startswith("expflow: error: run ddp interrupted")


def test_a_failing_command_is_crashed_with_its_last_error_line(tmp_path):
    proj = make_project(tmp_path, "import sys\nprint('working')\nsys.exit('bad data in shard 3')\n")
    proc = train(proj, "runner.argv=[python,train.py]", "run_id=fails")
    assert proc.returncode != 0
    assert "bad data in shard 3" in proc.stderr and "Traceback" not in proc.stderr
    pkg = SavePackage.open(proj / "runs" / "fails")
    assert pkg.status() is Status.CRASHED
    assert "exit status 1: bad data in shard 3" in pkg.manifest()["error"]["message"]
    missing = train(proj, "runner.argv=[no-such-program-xyz]", "run_id=missing")
    assert missing.returncode != 0 and "runner.argv" in missing.stderr and "no-such-program-xyz" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_command_project_scaffold_runs_its_workflow(tmp_path):
    proj = make_project(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=proj, env=env_for(proj),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pkgs = [SavePackage.open(p) for p in sorted((proj / "runs").iterdir()) if (p / "manifest.json").exists()]
    assert len(pkgs) == 4 and all(p.status() is Status.COMPLETED for p in pkgs)
    for pkg in pkgs:
        assert (pkg.analysis_dir / "learning_curves").is_dir()
        assert points(pkg)["val/loss"]
    status = cli(proj, "status")
    assert status.returncode == 0 and "COMPLETED" in status.stdout
    shutil.rmtree(proj / "runs")


LEFT_OVER = '''
import os
import signal
import time
from pathlib import Path

events = Path(os.environ["EVENTS"])
if (events.parent / "first.pid").exists():  # the run's second program: it writes once and ends
    with events.open("a") as f:
        f.write(f"second {os.getpid()}\\n")
    raise SystemExit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # deaf to the SIGTERM its expflow's death sends
(events.parent / "first.pid").write_text(str(os.getpid()))
while True:
    with events.open("a") as f:
        f.write(f"first {os.getpid()}\\n")
    time.sleep(0.05)
'''


def running(pid: int) -> bool:
    """A live process (a zombie, which an init that reaps nothing keeps, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_program_left_running_by_a_killed_expflow_is_stopped_before_the_run_continues(tmp_path):
    """expflow killed with SIGKILL, its program deaf to SIGTERM: `expflow continue` stops that
    program's group (one warning line) before it starts the program again, so two programs
    never write into one package."""
    proj = make_project(tmp_path, LEFT_OVER)
    events = tmp_path / "events.log"
    env = env_for(proj, EVENTS=str(events))
    overrides = ["trainer.progress=plain", "runner.argv=[python,train.py]", "runner.stop_grace_s=1",
                 "run_id=orphan"]
    proc = subprocess.Popen([sys.executable, "-m", "expflow.train", *overrides], cwd=proj, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pkg_dir = proj / "runs" / "orphan"
    wait_for(lambda: events.exists() and events.read_text().count("first") >= 3, 120, "the program to run")
    pkg = SavePackage.open(pkg_dir)
    program = pkg.manifest()["command"]["pid"]
    with open(f"/proc/{program}/stat") as f:
        supervisor = int(f.read().rsplit(")", 1)[1].split()[1])  # the program's parent: its expflow
    os.kill(supervisor, signal.SIGKILL)
    proc.wait(timeout=60)
    try:
        assert running(program)  # the program outlived its expflow
        wait_for(lambda: pkg.status(heartbeat_timeout=60) is Status.CRASHED, 60, "CRASHED")
        cont = cli(proj, "continue", str(pkg_dir), env=env)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(program, signal.SIGKILL)  # whatever the verdict, no program outlives the test
    assert cont.returncode == 0, cont.stdout[-2000:] + cont.stderr[-2000:]
    warnings = [line for line in cont.stderr.splitlines() if f"(process group {program}) still runs" in line]
    assert len(warnings) == 1 and warnings[0].startswith("expflow: warning: "), cont.stderr[-2000:]
    lines = events.read_text().splitlines()
    second = [i for i, line in enumerate(lines) if line.startswith("second")]
    assert len(second) == 1 and second[0] == len(lines) - 1, lines[-5:]  # nothing of the first after it
    assert pkg.status() is Status.COMPLETED
    assert not running(program)
