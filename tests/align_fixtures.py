"""Source files for the alignment tests, written by the real libraries at test time:
a SLIME-like W&B offline run, a VERL-like SwanLab offline run, a ROLL-like TensorBoard
run, and expflow packages. Each writer documents the values the tests check."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SLIME_ROLLOUTS = 12
SLIME_STEPS_PER_ROLLOUT = 2
SLIME_MISSING_ROLLOUT = 5  # never logged: a gap in the rollout group
SLIME_NO_GRAD_NORM = 7  # train step without train/grad_norm
VERL_STEPS = range(1, 11)  # VERL logs from global step 1
VERL_MISSING_STEP = 4
VERL_NO_GRAD_NORM = 6
ROLL_STEPS = range(15)


@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wandb_env(root: Path) -> contextlib.AbstractContextManager[None]:
    return env(WANDB_MODE="offline", WANDB_DIR=str(root), WANDB_SILENT="true", WANDB_CONSOLE="off",
               WANDB_DISABLE_GIT="true", WANDB_CACHE_DIR=str(root / ".cache"), WANDB_CONFIG_DIR=str(root / ".config"))


# -- SLIME (W&B offline, SLIME's define_metric groups) -----------------------------------
def slime_reward(rollout: int) -> float:
    return 0.1 * rollout


def slime_perf(rollout: int) -> tuple[float, float, float]:
    """perf/actor_train_tok_per_s, perf/actor_train_time, perf/step_time."""
    return 1000.0 + 10 * rollout, 2.0 + 0.1 * rollout, 4.0 + 0.2 * rollout


def slime_pg_loss(step: int) -> float:
    return 99.0 if step == 3 else -0.01 * step  # step 3 is logged twice: the last value counts


def slime_grad_norm(step: int) -> float:
    return 0.5 + 0.01 * step


def write_slime(root: Path) -> Path:
    """SLIME logs train/* against train/step (rollout_id * steps_per_rollout + step_id),
    rollout/* and perf/* against rollout/step (here = the rollout's first train step, as with
    --wandb-always-use-train-step), eval/* against eval/step. Rollout 5 is missing, train
    step 7 has no grad_norm, step 3 is re-logged, step 6 is re-logged with a null."""
    import wandb

    root.mkdir(parents=True, exist_ok=True)
    with wandb_env(root):
        run = wandb.init(project="slime-demo", name="slime", dir=str(root), settings=wandb.Settings(x_disable_stats=True))
        run.define_metric("train/step")
        run.define_metric("train/*", step_metric="train/step")
        run.define_metric("rollout/step")
        run.define_metric("rollout/*", step_metric="rollout/step")
        run.define_metric("perf/*", step_metric="rollout/step")
        run.define_metric("eval/step")
        run.define_metric("eval/*", step_metric="eval/step")
        for rid in range(SLIME_ROLLOUTS):
            rstep = rid * SLIME_STEPS_PER_ROLLOUT
            if rid != SLIME_MISSING_ROLLOUT:
                tok, train_time, step_time = slime_perf(rid)
                run.log({"rollout/step": rstep, "rollout/raw_reward": slime_reward(rid),
                         "rollout/response_lengths": 100.0 + rid, "perf/actor_train_tok_per_s": tok,
                         "perf/actor_train_time": train_time, "perf/step_time": step_time})
            for sid in range(SLIME_STEPS_PER_ROLLOUT):
                step = rstep + sid
                values = {"train/step": step, "train/pg_loss": -0.01 * step, "train/entropy_loss": 1.0 - 0.02 * step}
                if step != SLIME_NO_GRAD_NORM:
                    values["train/grad_norm"] = slime_grad_norm(step)
                run.log(values)
                if step == 3:
                    run.log({"train/step": 3, "train/pg_loss": 99.0})
                if step == 6:
                    run.log({"train/step": 6, "train/pg_loss": float("nan")})
            if rid % 4 == 0:
                run.log({"eval/step": rstep, "eval/acc": 0.5 + 0.01 * rid, "eval/samples": {"text": "x"}})
        run.finish()
    return root / "wandb"


# -- VERL (SwanLab offline) ----------------------------------------------------------------
def verl_value(name: str, step: int) -> float:
    base = {"critic/score/mean": 0.2, "actor/pg_loss": -0.3, "actor/entropy": 1.5, "actor/grad_norm": 0.8,
            "perf/throughput": 2000.0, "timing_s/step": 30.0, "response_length/mean": 400.0}[name]
    return base + 0.01 * step


def write_verl(root: Path, swanlab_root: Path) -> Path:
    """VERL logs everything at step=global_steps (from 1); validation every 5 steps. Step 4
    was never logged; step 6 has no actor/grad_norm."""
    import swanlab

    root.mkdir(parents=True, exist_ok=True)
    with env(SWANLAB_ROOT=str(swanlab_root)), open(os.devnull, "w") as quiet, \
            contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        swanlab.init(mode="offline", log_dir=str(root), project="verl-demo", name="verl", reinit=True)
        for step in VERL_STEPS:
            if step == VERL_MISSING_STEP:
                continue
            values = {name: verl_value(name, step) for name in (
                "critic/score/mean", "actor/pg_loss", "actor/entropy", "actor/grad_norm",
                "perf/throughput", "timing_s/step", "response_length/mean")}
            if step == VERL_NO_GRAD_NORM:
                del values["actor/grad_norm"]
            swanlab.log(values, step=step)
            if step % 5 == 0:
                swanlab.log({"val-core/gsm8k/acc/mean@1": 0.3 + 0.01 * step}, step=step)
        swanlab.finish()
    return root


def write_swanlab_x_axes(root: Path, swanlab_root: Path) -> Path:
    """A SwanLab run with a define_metric group: rollout/* against rollout/step, logged
    every other global step; train metrics on the global step."""
    import swanlab

    root.mkdir(parents=True, exist_ok=True)
    with env(SWANLAB_ROOT=str(swanlab_root)), open(os.devnull, "w") as quiet, \
            contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        swanlab.init(mode="offline", log_dir=str(root), project="axes", name="axes", reinit=True)
        swanlab.define_metric("rollout/*", x_axis="rollout/step")
        for g in range(10):
            swanlab.log({"loss": float(g)}, step=g)
            if g % 2 == 1:
                swanlab.log({"rollout/step": g // 2, "rollout/reward": 10.0 * g}, step=g)
        swanlab.finish()
    return root


# -- ROLL (TensorBoard, torch's SummaryWriter as ROLL's tracker uses) ---------------------
def roll_value(name: str, step: int) -> float:
    base = {"critic/score/mean": 0.1, "actor/pg_loss": -0.2, "actor_train/grad_norm": 0.6,
            "tokens/response_length/mean": 350.0, "system/tps": 8000.0}[name]
    return base + 0.03 * step


def write_tensorboard(root: Path, series: dict[str, list[tuple[int, float]]]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    root.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(root))
    steps = sorted({s for points in series.values() for s, _ in points})
    by_step = {s: [(name, v) for name, points in series.items() for ps, v in points if ps == s] for s in steps}
    for s in steps:
        for name, v in by_step[s]:
            writer.add_scalar(name, v, s)
    writer.close()
    return root


def write_roll(root: Path) -> Path:
    names = ("critic/score/mean", "actor/pg_loss", "actor_train/grad_norm", "tokens/response_length/mean", "system/tps")
    return write_tensorboard(root, {n: [(s, roll_value(n, s)) for s in ROLL_STEPS] for n in names})


# -- expflow packages --------------------------------------------------------------------
def write_package(root: Path, run_id: str, points: list[tuple[int, dict[str, float]]]) -> Path:
    """A minimal save-package: manifest and checksummed metric records."""
    from expflow.package import FORMAT, RecordWriter

    pkg = root / run_id
    (pkg / "metrics").mkdir(parents=True)
    (pkg / "manifest.json").write_text(json.dumps({"format": FORMAT, "run_id": run_id}))
    with RecordWriter(pkg / "metrics" / "records.log") as w:
        for step, values in points:
            w.log(values, step=step)
    return pkg


# -- session fixture: write each source once -------------------------------------------
@pytest.fixture(scope="session", name="align_sources")
def align_sources_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.getbasetemp() / "align-sources"
    done = base / "done.json"
    if done.exists():
        return {k: Path(v) for k, v in json.loads(done.read_text()).items()}
    base.mkdir(exist_ok=True)
    sw_root = base / "swanlab-root"
    paths = {
        "slime": write_slime(base / "slime"),
        "verl": write_verl(base / "verl", sw_root),
        "axes": write_swanlab_x_axes(base / "axes", sw_root),
        "roll": write_roll(base / "roll"),
        "swanlab_root": sw_root,
    }
    done.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return paths
