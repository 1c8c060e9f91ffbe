"""Shared fixtures: compose configs from the repo's conf/, write packages under tmp_path."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def small_overrides(runs: Path, *extra: str) -> list[str]:
    """A tiny CPU run writing into ``runs``."""
    return [
        "trainer=debug",
        "gpu=cpu",
        f"paths.runs={runs}",
        f"code.root={REPO}",
        "trainer.threads=1",
        *extra,
    ]


@pytest.fixture
def compose():
    from expflow.config import compose_config

    def _compose(overrides=(), **kw):
        return compose_config(list(overrides), config_dir=CONF, **kw)

    return _compose


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 300,
            module: str = "expflow.cli") -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` and capture its output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def tree_digest(root: Path, *, modes: bool = False) -> dict[str, str]:
    """Every path under ``root`` with its content hash (or kind), and its mode if asked:
    equal before and after means the tree is unchanged."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + (f":{p.stat().st_mode:o}" if modes else "")
    return out


def read_terminal(master: int, into: bytearray) -> None:
    """Append everything a child writes to its pseudo-terminal, until it closes it."""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return
        if not chunk:
            return
        into.extend(chunk)


def hold_one_gpu(env: dict) -> subprocess.Popen:
    """A process that leases one (simulated) GPU and holds it until killed; returned once it
    holds the lease (the caller kills it)."""
    code = ("import time; from expflow.gpu import lease_gpus; "
            "l = lease_gpus(1, 0, 1); print('leased', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != "leased":
        holder.kill()
        holder.wait()
        pytest.fail("the GPU holder did not get its lease")
    return holder


def lease_peak(spans: list[tuple[float, float, int]], devices: int = 4) -> int:
    """The most leases held at once among ``spans`` (acquired, released, device), after
    checking that no device was held by two at once."""
    for device in range(devices):
        mine = sorted((s, e) for s, e, d in spans if d == device)
        for (_, e1), (s2, _) in zip(mine, mine[1:], strict=False):
            assert s2 >= e1, f"device {device} held by two jobs at once"
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])  # an end sorts first
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def single_process_val_acc(pkg) -> float:
    """The accuracy of the package's final checkpoint on the whole validation set, evaluated
    in this one process (what a DDP run's reduced val/acc must equal)."""
    import torch
    from hydra.utils import instantiate

    cfg = pkg.config()
    data, model = instantiate(cfg.dataset), instantiate(cfg.model)
    model.load_state_dict(pkg.checkpoints().load(pkg.checkpoints().latest())["runner"]["model"])
    model.eval()
    x, y = data.val_set.tensors
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()
