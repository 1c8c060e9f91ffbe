"""The cost of the Runner API: (1) per training step, the digits MLP through expflow's loop and
the shipped supervised runner vs a hand-written PyTorch loop doing the same steps; (2) the
start-up of a command run (``runner=command``: package + GPU lease + supervised launch) vs
launching the same tiny script bare. Both sides of each are measured in the same run.

    python benchmarks/runner_overhead.py [--quick] [--repeats 7] [--epochs 40] [--launches 5]
                                         [--pairing epoch|run] [--skip 1|2]

Part 1. Both arms train ``expflow.examples.digits.MLP`` with the default config (conf/: hidden
[128, 64], dropout 0.1), the digits train split, batch size 64, AdamW (lr 1e-3) with the
per-epoch cosine schedule, on CPU with ``torch.set_num_threads(1)``, for ``--epochs`` epochs.

* expflow: the real thing, ``expflow.launch.train(cfg)`` in this process (package, lease,
  ``rank.execute``, ``Loop.run``) with the default config composed from conf/ plus
  ``trainer.max_epochs=N trainer.progress=none trainer.threads=1 gpu=cpu``,
  ``lifecycle.validate_every=0 lifecycle.save_every=0`` and ``lifecycle._target_`` set to
  :class:`EpochTimer`, a ``Lifecycle`` subclass (the documented way to hook the loop) whose
  ``before_epoch``/``after_epoch`` hooks read the clock. What is timed is therefore each
  epoch's training part exactly as ``Loop.one_epoch`` runs it: ``ctx.set_epoch``,
  ``train_mode``, ``runner.train_data`` (sampler reshuffle), every step with its lifecycle
  hooks, ``train_step`` (to_device, zero_grad, forward, loss, ``ctx.step``, the epoch-loss
  accumulators), the metric records every ``log_every_n_steps`` (10) steps through the
  background ``RecordWriter``, the progress call, then ``runner.end_epoch`` (scheduler step,
  the epoch loss). Validation is off (``validate_every=0``); the checkpoint the lifecycle
  still writes after the last epoch, the manifest update after each epoch and the package's
  creation all fall outside the timed span (they are per epoch or per run, not per step).
  Timing inside the hooks, rather than ``Loop.one_epoch`` from outside, is what keeps that
  checkpoint out without subtracting anything.
* hand: what one writes without a framework: ``model.train()``, a ``DataLoader(shuffle=True)``
  over the same train set, ``zero_grad`` / forward / ``cross_entropy`` / ``backward`` /
  ``step``, ``loss.item()`` (the loss and lr) every 10 steps as a print or a logger would take
  them, the epoch's sample-weighted loss, ``scheduler.step()`` per epoch. Timed over the same
  span (the epoch's training part).
* runner.train_step alone (a diagnostic, no goal): the same ``SupervisedRunner`` built
  directly and its ``train_step`` called in a bare ``for`` loop: the difference to "expflow"
  is the loop's own cost, the difference to "hand" is the runner's step.
* hand loop again (A/A control): a second, identical hand loop; its ratio to the first is
  the noise floor (load, cache and position effects) under which the others are read.

Interleaving (``--pairing epoch``, the default): each expflow run's ``after_epoch`` hook,
after its clock has stopped, trains one epoch of each of the other arms (their order rotating),
so every expflow epoch has a hand epoch a few tens of milliseconds away: a change of load on
this (shared, 2-core) machine hits the pairs alike. ``--pairing run`` instead runs whole
repetitions one after the other (expflow, hand, runner, hand again; order rotating). One
untimed warm-up repetition first; the first epoch of each repetition is dropped (first AdamW
step, allocator warm-up). The table shows per arm the median and the min over repetitions of
the time per step (a repetition's epochs' time / their steps), the ratio of the medians, and
the median and p10..p90 of the per-epoch ratios to the paired hand epoch. The goal is read on
the median of those paired per-epoch ratios (drift-robust; the ratio of the medians is shown).
Goal (the Runner API issue): expflow / hand <= 1.05 per step.

Two more numbers, no goal: the loop's own per-step cost, measured exactly with a null runner
(:class:`NullRunner`: a step that only returns the supervised runner's two metrics) through
``expflow.launch.train`` vs the same null steps in a bare loop; and the loop's bookkeeping
between two epochs (the time from one ``after_epoch`` to the next ``before_epoch``: the epoch's
records and the manifest update; not in the per-step times), also given amortized per step.

Part 2. A temporary project (``python -m expflow.cli new <dir> --example command``) with a
``tiny.py`` that prints one line; ``python -m expflow.train runner=command
runner.argv=[python,tiny.py]`` (the project's default ``gpu``: one GPU leased when there is one,
the CPU otherwise) vs ``python tiny.py`` bare, interleaved, medians. Then the same command run
once more per repetition, instrumented (wrappers around the functions ``expflow.train`` calls),
for a breakdown: interpreter start, imports (Hydra, OmegaConf, expflow), Hydra's config
composition, packaging (``create_package``: validation, code snapshot), GPU lease, the
supervisor's own imports and set-up, the program (Popen to exit, seeding hook included), the
wind-down (logs, records, status) and interpreter exit. No goal: the numbers are reported.

Prints PASS/MISS per goal; exits non-zero only on an error.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

GOAL_RATIO = 1.05

# -- part 1: per-step time ------------------------------------------------------------------
from expflow.lifecycle import Lifecycle  # noqa: E402

Epoch = tuple[int, int, int]  # (epoch number, ns, steps)
EPOCHS: list[Epoch] = []  # the expflow run in progress
BETWEEN: list[Any] = []  # called after each expflow epoch (outside its timed span): the other arms' epochs


GAPS: list[int] = []  # ns from one epoch's after_epoch to the next one's before_epoch (the loop's bookkeeping)


class EpochTimer(Lifecycle):
    """The stock lifecycle, plus a clock around each epoch's training part."""

    _t_end: int | None = None

    def before_epoch(self, state: Any) -> str | None:
        self._t0, self._step0 = time.perf_counter_ns(), state.step
        if self._t_end is not None:
            GAPS.append(self._t0 - self._t_end)
        return super().before_epoch(state)

    def after_epoch(self, state: Any) -> None:
        EPOCHS.append((state.epoch, time.perf_counter_ns() - self._t0, state.step - self._step0))
        for fn in BETWEEN:
            fn(state.epoch)
        self._t_end = time.perf_counter_ns()
        return super().after_epoch(state)


def per_step(epochs: list[Epoch]) -> float:
    """Seconds per step over the epochs after the first."""
    kept = [(ns, n) for e, ns, n in epochs if e > 1] or [(ns, n) for _, ns, n in epochs]
    return sum(ns for ns, _ in kept) / 1e9 / sum(n for _, n in kept)


def compose(epochs: int, runs: Path) -> Any:
    from expflow.config import compose_config

    return compose_config([
        f"trainer.max_epochs={epochs}", "trainer.progress=none", "trainer.threads=1", "gpu=cpu",
        f"paths.runs={runs}", f"code.root={REPO}",
        "lifecycle.validate_every=0", "lifecycle.save_every=0", f"lifecycle._target_={__name__}.EpochTimer",
    ], config_dir=REPO / "conf")


def expflow_run(cfg: Any, run_id: str, between: Any = None) -> list[Epoch]:
    """The real thing: ``expflow.launch.train(cfg)`` in this process; its epochs' timings."""
    from expflow.launch import train

    EPOCHS.clear()
    BETWEEN[:] = [between] if between else []
    cfg = cfg.copy()
    cfg.run_id = run_id
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = train(cfg)
    finally:
        BETWEEN.clear()
    assert result.status.value == "COMPLETED", result.status
    assert len(EPOCHS) == int(cfg.trainer.max_epochs), EPOCHS
    return list(EPOCHS)


class HandLoop:
    """The same training, written by hand; ``epoch()`` trains one epoch and times it."""

    def __init__(self, cfg: Any, epochs: int):
        import torch
        from torch.utils.data import DataLoader

        from expflow.examples.digits import MLP, DigitsData

        torch.manual_seed(0)
        d, m, o = cfg.dataset, cfg.model, cfg.optim
        data = DigitsData(batch_size=int(d.batch_size), val_fraction=float(d.val_fraction),
                          split_seed=int(d.split_seed))
        self.model = MLP(in_features=int(m.in_features), hidden=list(m.hidden), num_classes=int(m.num_classes),
                         dropout=float(m.dropout))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=float(o.lr), weight_decay=float(o.weight_decay))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs)
        self.loader = DataLoader(data.train_set, batch_size=data.batch_size, shuffle=True,
                                 generator=torch.Generator().manual_seed(0))
        self.log_every = int(cfg.trainer.log_every_n_steps)
        self.step, self.n, self.last = 0, 0, {}

    def epoch(self) -> Epoch:
        import torch.nn.functional as F

        model, optimizer, log_every = self.model, self.optimizer, self.log_every
        t0, step0 = time.perf_counter_ns(), self.step
        model.train()
        total, count = 0.0, 0
        for x, y in self.loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            self.step += 1
            total += loss.item() * len(y)
            count += len(y)
            if self.step % log_every == 0:
                self.last = {"train/loss": loss.item(), "train/lr": optimizer.param_groups[0]["lr"]}
        self.scheduler.step()
        self.last["train/epoch_loss"] = total / max(count, 1)
        self.n += 1
        return self.n, time.perf_counter_ns() - t0, self.step - step0


class RunnerAlone:
    """The shipped SupervisedRunner, built directly; its train_step in a bare loop."""

    def __init__(self, cfg: Any, epochs: int):
        import torch

        from expflow.lifecycle import TrainState
        from expflow.runner import RunContext
        from expflow.runner.supervised import SupervisedRunner

        torch.manual_seed(0)
        self.runner = SupervisedRunner()
        ctx = RunContext(cfg=cfg, device=torch.device("cpu"), seed=int(cfg.seed))
        self.runner.ctx = ctx
        self.runner.build(ctx)
        self.state = TrainState(config=cfg, max_epochs=epochs)

    def epoch(self) -> Epoch:
        runner, state = self.runner, self.state
        train_step = runner.train_step
        t0, step0 = time.perf_counter_ns(), state.step
        runner.train_mode(True)
        for b, batch in enumerate(runner.train_data(state.epoch)):
            state.batch = b
            train_step(batch, state)
            state.step += 1
        runner.end_epoch(state)
        state.epoch += 1
        return state.epoch, time.perf_counter_ns() - t0, state.step - step0


from expflow.runner import Runner  # noqa: E402

NULL_STEPS = 5000  # steps per epoch of the null runner


class NullRunner(Runner):
    """A step that does nothing but return the supervised runner's metrics (a 0-d tensor loss
    and the lr): what is left of a step through the Loop is the loop's own cost."""

    def build(self, ctx: Any) -> None:
        import torch

        self.batches = list(range(NULL_STEPS))
        self.loss = torch.tensor(0.5)

    def train_data(self, epoch: int) -> Any:
        return self.batches

    def train_step(self, batch: Any, state: Any) -> dict[str, Any]:
        return {"train/loss": self.loss, "train/lr": 1e-3}


def null_loop(args: argparse.Namespace, runs: Path) -> dict[str, float]:
    """The loop's own per-step cost: the null runner through ``expflow.launch.train`` vs the
    same null steps in a bare loop (reading the loss every 10 steps, as the loop logs it)."""
    from expflow.lifecycle import TrainState

    epochs = 4 if args.quick else 8
    cfg = compose(epochs, runs)
    cfg.runner._target_ = f"{__name__}.NullRunner"
    cfg.dataset = None
    cfg.model = None
    loop_ns: list[float] = []
    bare_ns: list[float] = []
    runner = NullRunner()
    runner.build(None)
    state = TrainState(config=cfg, max_epochs=epochs)

    def bare(epoch: int) -> None:
        step, log_every = runner.train_step, 10
        t0 = time.perf_counter_ns()
        for b in runner.train_data(epoch):
            state.batch = b
            metrics = step(b, state)
            state.step += 1
            if state.step % log_every == 0:
                {k: float(v) for k, v in metrics.items()}
        bare_ns.append((time.perf_counter_ns() - t0) / NULL_STEPS)

    for i in range(2):
        e = expflow_run(cfg, f"null{i}", bare)
        loop_ns += [ns / n for k, ns, n in e if k > 1]
    return {"loop": statistics.median(loop_ns) / 1e3, "bare": statistics.median(bare_ns[2:]) / 1e3,
            "loop_min": min(loop_ns) / 1e3, "bare_min": min(bare_ns) / 1e3}


ARMS = ("hand", "expflow", "runner", "hand2")
LABELS = {"hand": "hand-written PyTorch loop", "expflow": "expflow (Loop + runner)",
          "runner": "runner.train_step alone", "hand2": "hand loop again (A/A)"}


def part1(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # the expflow runs set it too (trainer.threads=1)
    runs = tmp / "runs"
    cfg = compose(args.epochs, runs)
    how = ("each expflow epoch followed by one epoch of each other arm (their order rotating)"
           if args.pairing == "epoch" else "whole runs one after the other (their order rotating)")
    print(f"part 1: digits MLP, {args.epochs} epochs per repetition, {args.repeats} repetitions (+1 warm-up), "
          f"interleaved: {how} ...", flush=True)
    times: dict[str, list[float]] = {k: [] for k in ARMS}
    ratios: dict[str, list[float]] = {k: [] for k in ARMS}  # per epoch, paired with the hand epoch
    steps = 0
    GAPS.clear()
    t_start = time.perf_counter()
    for i in range(-1, args.repeats):  # -1: the warm-up, not recorded
        n = 2 if i < 0 else args.epochs
        arms = {"hand": HandLoop(cfg, n), "runner": RunnerAlone(cfg, n), "hand2": HandLoop(cfg, n)}
        got: dict[str, list[Epoch]] = {k: [] for k in arms}
        run_cfg = compose(n, runs) if i < 0 else cfg
        if args.pairing == "epoch":
            def between(epoch: int, arms: dict[str, Any] = arms, got: dict[str, list[Epoch]] = got) -> None:
                names = list(arms)
                k = epoch % len(names)
                for name in names[k:] + names[:k]:
                    got[name].append(arms[name].epoch())
            gaps_before = len(GAPS)
            e = expflow_run(run_cfg, f"rep{i + 1:02d}", between)
            if i < 0:
                del GAPS[gaps_before:]
        else:
            order = list(ARMS)
            k = max(i, 0) % len(order)
            for name in order[k:] + order[:k]:
                if name == "expflow":
                    gaps_before = len(GAPS)
                    e = expflow_run(run_cfg, f"rep{i + 1:02d}")
                    if i < 0:
                        del GAPS[gaps_before:]
                else:
                    got[name] = [arms[name].epoch() for _ in range(n)]
        if i < 0:
            continue
        got["expflow"] = e
        for name in ARMS:
            times[name].append(per_step(got[name]))
            ratios[name] += [a[1] / a[2] / (b[1] / b[2]) for a, b in zip(got[name], got["hand"], strict=True)
                             if a[0] > 1]
        steps = sum(s for _, _, s in e)
        assert all(sum(s for _, _, s in got[k]) == steps for k in ARMS), "the arms took different steps"
    null = null_loop(args, runs)
    return {"times": times, "ratios": ratios, "steps": steps, "wall": time.perf_counter() - t_start,
            "null": null, "gaps": list(GAPS)}


def report1(r: dict[str, Any], args: argparse.Namespace) -> bool:
    t, er = r["times"], r["ratios"]
    med = {k: statistics.median(v) for k, v in t.items()}
    hand = med["hand"]
    q = lambda xs, f: sorted(xs)[min(int(f * len(xs)), len(xs) - 1)]  # noqa: E731
    per_epoch = r["steps"] // args.epochs
    print(f"\npart 1: per-step time, {per_epoch} steps/epoch x {args.epochs} epochs, epoch 1 dropped, "
          f"{args.repeats} repetitions, pairing by {args.pairing} ({r['wall']:.1f} s)")
    print(f"{'':28}{'median':>9}{'min':>9}{'ratio of':>10}{'paired per-epoch ratio':>26}")
    print(f"{'':28}{'us/step':>9}{'us/step':>9}{'medians':>10}{'median':>10}{'p10..p90':>16}")
    for k in ARMS:
        print(f"{LABELS[k]:<28}{med[k] * 1e6:>9.1f}{min(t[k]) * 1e6:>9.1f}{med[k] / hand:>9.3f}x"
              f"{statistics.median(er[k]):>9.3f}x{q(er[k], 0.1):>9.3f}..{q(er[k], 0.9):.3f}")
    n = r["null"]
    loop_us = n["loop"] - n["bare"]
    print(f"the loop's own cost, with a null step ({NULL_STEPS} steps/epoch): {n['loop']:.2f} us/step through "
          f"expflow vs {n['bare']:.2f} in a bare loop -> {loop_us:+.2f} us/step = {loop_us / (hand * 1e6):.2%} "
          f"of a hand step")
    if r["gaps"]:
        gap = statistics.median(r["gaps"]) / 1e6
        print(f"between epochs (not in the per-step times): {gap:.2f} ms median of the loop's bookkeeping "
              f"(epoch records, reporter line, heartbeat fields; the last epoch's checkpoint excluded) = "
              f"{gap * 1e3 / per_epoch:.1f} us per step amortized over a {per_epoch}-step epoch")
        print(f"  counting it, expflow / hand per step (ratio of the medians): "
              f"{(med['expflow'] + gap / 1e3 / per_epoch) / hand:.3f}x")
    ratio = statistics.median(er["expflow"])
    noise = abs(statistics.median(er["hand2"]) - 1)
    print(f"A/A control: the same hand loop twice differs by {noise:.1%} (paired per-epoch median): the noise "
          f"floor of this machine right now")
    ok = ratio <= GOAL_RATIO
    print(f"  [{'PASS' if ok else 'MISS'}] per-step time through the Runner API <= {GOAL_RATIO:.2f}x the hand loop"
          f" (median of the paired per-epoch ratios: {ratio:.3f}x; ratio of the medians {med['expflow'] / hand:.3f}x)")
    return ok


# -- part 2: command-run start-up -----------------------------------------------------------
TINY = 'print("tiny: done")\n'

# Runs `python -m expflow.train ...` in-process with wrappers that read the clock (time.time(),
# comparable with the parent's); the marks go to $EXPFLOW_BENCH_MARKS as JSON.
PROBE = r'''
import json, os, sys, time
marks = {"start": time.time()}
def mark(name):
    marks[name] = time.time()
try:
    import expflow.train as entry
    mark("imported")
    import expflow.launch as launch, expflow.gpu as gpu, expflow.runner.command as command
    import contextlib, subprocess
    mark("imported_launch")
    # Config compositions: expflow's own pre-checks (check_argv, check_run_paths) and Hydra's.
    import expflow.config.argv as argv_mod, expflow.config.compose as compose_mod
    from hydra._internal.hydra import Hydra
    composes = marks["composes"] = {"expflow": [0, 0.0], "hydra": [0, 0.0]}
    inside = []
    def counted(fn, key):
        def wrapper(*a, **k):
            if inside:  # Hydra's compose inside one of expflow's: counted there
                return fn(*a, **k)
            inside.append(key)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                inside.pop()
                composes[key][0] += 1
                composes[key][1] += time.perf_counter() - t0
        return wrapper
    argv_mod.compose_config = counted(argv_mod.compose_config, "expflow")
    compose_mod.compose_config = counted(compose_mod.compose_config, "expflow")
    Hydra.compose_config = counted(Hydra.compose_config, "hydra")
    create_package = launch.create_package
    def timed_create(*a, **k):
        mark("package0")
        try:
            return create_package(*a, **k)
        finally:
            mark("package1")
    launch.create_package = timed_create
    place_job = gpu.place_job
    @contextlib.contextmanager
    def timed_place(*a, **k):
        mark("lease0")
        cm = place_job(*a, **k)
        p = cm.__enter__()
        mark("lease1")
        try:
            yield p
        except BaseException:
            mark("release0")
            if not cm.__exit__(*sys.exc_info()):
                raise
        else:
            mark("release0")
            cm.__exit__(None, None, None)
        finally:
            mark("release1")
    gpu.place_job = timed_place
    run_command = command.run_command
    def timed_run(*a, **k):
        mark("supervise0")
        import expflow.rank, expflow.runlog, expflow.runner.channel, expflow.runner.ingest, expflow.runner.pyseed
        mark("supervise_imported")
        try:
            return run_command(*a, **k)
        finally:
            mark("supervise1")
    command.run_command = timed_run
    class Sub:
        def __getattr__(self, name):
            return getattr(subprocess, name)
        def Popen(self, *a, **k):
            mark("popen")
            return subprocess.Popen(*a, **k)
    command.subprocess = Sub()
    wait = command._wait
    def timed_wait(*a, **k):
        try:
            return wait(*a, **k)
        finally:
            mark("exited")
    command._wait = timed_wait
    sys.argv = ["expflow.train", *sys.argv[1:]]
    try:
        entry.cli()
    except SystemExit as e:
        if e.code:
            raise
finally:
    mark("done")
    with open(os.environ["EXPFLOW_BENCH_MARKS"], "w") as f:
        json.dump(marks, f)
'''


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return dt


PHASES = [  # (label, from mark, to mark)
    ("interpreter start (to the first line)", "spawn", "start"),
    ("imports: Hydra, OmegaConf, expflow.train", "start", "imported"),
    ("imports: expflow.launch, gpu, command", "imported", "imported_launch"),
    ("Hydra: argv checks, compose, run dir", "imported_launch", "package0"),
    ("packaging: create_package (snapshot)", "package0", "package1"),
    ("run_package: checks, claim", "package1", "lease0"),
    ("GPU lease (place_job enter)", "lease0", "lease1"),
    ("lease recorded in the manifest", "lease1", "supervise0"),
    ("supervisor imports (ingest: pandas..)", "supervise0", "supervise_imported"),
    ("supervisor set-up: logs, status, channel", "supervise_imported", "popen"),
    ("the program: Popen to exit (+seeding)", "popen", "exited"),
    ("wind-down: tees, ingest, records, status", "exited", "supervise1"),
    ("lease release + manifest", "supervise1", "release1"),
    ("Hydra return, print, to the probe's end", "release1", "done"),
    ("interpreter exit", "done", "end"),
]


def part2(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    py = Path(sys.executable)
    env = dict(os.environ)
    env["PATH"] = f"{py.parent}{os.pathsep}{env.get('PATH', '')}"  # `python` is this interpreter
    env.pop("PYTHONPATH", None)
    env.pop("EXPFLOW_CONFIG_DIR", None)
    proj = tmp / "cmdproj"
    subprocess.run([sys.executable, "-m", "expflow.cli", "new", str(proj), "--example", "command"], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    (proj / "tiny.py").write_text(TINY)
    overrides = ["runner=command", "runner.argv=[python,tiny.py]"]
    expflow_cmd = ["python", "-m", "expflow.train", *overrides]
    bare_cmd = ["python", "tiny.py"]
    # The same script under the command run's seeding hook (its sitecustomize), bare otherwise.
    from expflow.runner.pyseed import seeded_env

    seeded = seeded_env(env, 0)
    print(f"part 2: `{' '.join(expflow_cmd)}` vs `{' '.join(bare_cmd)}`, {args.launches} interleaved "
          f"repetitions (+1 warm-up), then {args.launches} instrumented command runs ...", flush=True)
    _run(expflow_cmd, proj, env)
    _run(bare_cmd, proj, env)
    t: dict[str, list[float]] = {"bare": [], "seeded": [], "pass": [], "import": [], "expflow": []}
    for _ in range(args.launches):
        t["expflow"].append(_run(expflow_cmd, proj, env))
        t["bare"].append(_run(bare_cmd, proj, env))
        t["seeded"].append(_run(bare_cmd, proj, seeded))
        t["pass"].append(_run(["python", "-c", "pass"], proj, env))
        t["import"].append(_run(["python", "-c", "import expflow.train"], proj, env))
    phases: dict[str, list[float]] = {label: [] for label, _, _ in PHASES}
    probe_total = []
    composes: dict[str, list[tuple[int, float]]] = {}
    marks_path = tmp / "marks.json"
    for _ in range(args.launches):
        penv = dict(env, EXPFLOW_BENCH_MARKS=str(marks_path))
        spawn = time.time()
        _run(["python", "-c", PROBE, *overrides], proj, penv)
        end = time.time()
        marks = json.loads(marks_path.read_text())
        marks.update(spawn=spawn, end=end)
        for key, (n, secs) in marks.pop("composes").items():
            composes.setdefault(key, []).append((n, secs))
        missing = [m for _, a, b in PHASES for m in (a, b) if m not in marks]
        if missing:
            raise RuntimeError(f"instrumented run: marks missing {sorted(set(missing))} (the code it wraps moved?)")
        for label, a, b in PHASES:
            phases[label].append(marks[b] - marks[a])
        probe_total.append(end - spawn)
    packages = [p for p in (proj / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return {"times": t, "phases": phases, "probe_total": probe_total, "packages": len(packages),
            "composes": composes}


def report2(r: dict[str, Any], args: argparse.Namespace) -> None:
    t = {k: statistics.median(v) for k, v in r["times"].items()}
    print(f"\npart 2: command-run start-up, medians of {args.launches} ({r['packages']} packages made, all COMPLETED)")
    print(f"{'':52}{'median s':>10}{'min s':>8}")
    rows = [("python tiny.py (bare)", "bare"),
            ("python tiny.py under the seeding hook (bare)", "seeded"),
            ("python -c pass", "pass"),
            ("python -c 'import expflow.train'", "import"),
            ("python -m expflow.train runner=command ...", "expflow")]
    for label, k in rows:
        print(f"{label:<52}{t[k]:>10.3f}{min(r['times'][k]):>8.3f}")
    print(f"difference, command run - bare: {t['expflow'] - t['bare']:+.3f} s "
          f"({t['expflow'] / t['bare']:.0f}x the bare launch)")
    print(f"\nbreakdown (instrumented runs, medians; total {statistics.median(r['probe_total']):.3f} s vs "
          f"{t['expflow']:.3f} s uninstrumented):")
    total = 0.0
    for label, values in r["phases"].items():
        m = statistics.median(values)
        total += m
        print(f"  {label:<50}{m:>8.3f} s")
        if label.startswith("Hydra: argv"):
            for key, what, detail in (("expflow", "by expflow's pre-checks", "check_argv, check_run_paths"),
                                      ("hydra", "by Hydra itself", "@hydra.main: get_mode, run")):
                runs = r["composes"].get(key, [])
                n = statistics.median(c for c, _ in runs) if runs else 0
                secs = statistics.median(s for _, s in runs) if runs else 0.0
                print(f"    {f'{n:g} config compositions {what}':<48}{secs:>8.3f} s  ({detail})")
    print(f"  {'(sum of the medians)':<50}{total:>8.3f} s")
    print("  no goal for part 2: reported only")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="See the module docstring for what is measured and how.")
    ap.add_argument("--quick", action="store_true", help="fewer epochs and repetitions (a smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="part 1 repetitions per arm (default 7, quick 3)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per part-1 repetition (default 40, quick 10)")
    ap.add_argument("--launches", type=int, default=None, help="part 2 repetitions (default 5, quick 2)")
    ap.add_argument("--pairing", choices=("epoch", "run"), default="epoch",
                    help="part 1: interleave the arms epoch by epoch inside each expflow run (default), "
                         "or whole runs one after the other")
    ap.add_argument("--skip", choices=("1", "2"), default=None, help="skip part 1 or part 2")
    args = ap.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.epochs = args.epochs or (10 if args.quick else 40)
    args.launches = args.launches or (2 if args.quick else 5)
    if args.epochs < 2:
        ap.error("--epochs: at least 2 (the first epoch of each repetition is dropped)")

    tmp = Path(tempfile.mkdtemp(prefix="expflow-runner-bench-"))
    try:
        t0 = time.perf_counter()
        r1 = part1(args, tmp) if args.skip != "1" else None
        r2 = part2(args, tmp) if args.skip != "2" else None
        if r1 is not None:
            report1(r1, args)
        if r2 is not None:
            report2(r2, args)
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
