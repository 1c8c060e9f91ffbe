"""The training loop: where a runner (:mod:`expflow.runner`) plugs in.

The loop owns the epochs and steps, asks the lifecycle what to do next (validate, save, hold,
stop), records metrics, mirrors them to the tracker, and writes and restores checkpoints. The
runner owns what a step, a validation pass and a visualization do. One :class:`Loop` per rank;
:func:`expflow.rank.execute` builds it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from expflow.client import as_number
from expflow.errors import CheckpointError, ConfigError
from expflow.package import SavePackage
from expflow.package.records import RecordWriter
from expflow.runner import SUPERVISED, RunContext, Runner

# 1: the supervised loop's own keys (model, optimizer, scheduler); 2: a runner's state_dict.
CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)


def build_runner(cfg: DictConfig, ctx: RunContext) -> Runner:
    """The config's runner (``runner._target_``, the supervised one without a ``runner``), built."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = OmegaConf.select(cfg, "runner", default=None)
    if node is None:
        node = OmegaConf.create({"_target_": SUPERVISED})
    try:
        runner = instantiate(node)
    except InstantiationException as e:
        raise ConfigError(f"runner: cannot build {node.get('_target_')!r}: {str(e).splitlines()[0]}") from None
    for method in ("build", "train_data", "train_step"):
        if not callable(getattr(runner, method, None)):
            raise ConfigError(f"runner: {type(runner).__module__}.{type(runner).__qualname__} has no "
                              f"{method}() (a runner subclasses expflow.runner.Runner)")
    runner.ctx = ctx
    runner.build(ctx)
    return runner


class Loop:
    """The objects of one rank's run (runner, lifecycle, tracker, state) and its loop."""

    def __init__(self, pkg: SavePackage, cfg: DictConfig, env: Any, device: Any,
                 writer: RecordWriter | None, logs: Any, heartbeat: Any = None, stop: Any = None):
        from hydra.utils import instantiate

        from expflow.lifecycle import TrainState
        from expflow.runlog import ProgressReporter
        from expflow.tracking import build_tracker

        self.pkg, self.cfg, self.env, self.device, self.writer = pkg, cfg, env, device, writer
        self.heartbeat = heartbeat
        from expflow.interrupt import StopRequest

        self.stop = stop if stop is not None else StopRequest()  # a signal asks the loop to stop at a step
        self.saved_step = -1  # the step of the last checkpoint this process wrote or resumed from
        self.epoch_rng: Any = None  # the RNG state this epoch's data iterator was made with
        self.resume: dict[str, Any] | None = None  # a mid-epoch checkpoint's place in its epoch
        self.state = TrainState(config=cfg, max_epochs=int(cfg.trainer.max_epochs), rank=env.rank)
        self.in_step = False  # inside train_step: what it logs belongs to the step being taken
        self.ctx = RunContext(cfg=cfg, device=device, rank=env.rank, local_rank=env.local_rank,
                              world_size=env.world_size, package_dir=pkg.path, seed=int(cfg.seed),
                              _log=lambda values: self.log_now(values, None))
        self.runner = build_runner(cfg, self.ctx)
        self.lifecycle = instantiate(cfg.lifecycle)
        # Rank 0 only (a NullTracker elsewhere); a failing tracker never stops training.
        self.tracker = build_tracker(cfg.tracker, is_main=env.is_main, run_dir=pkg.tracker_dir, run_id=pkg.run_id)
        if env.is_main:
            self.tracker.log_config(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))  # type: ignore[arg-type]
        self.steps_per_epoch = _length(self.runner.train_data(0))
        total = self.steps_per_epoch * self.state.max_epochs if self.steps_per_epoch is not None else 0
        self.reporter = ProgressReporter(str(cfg.trainer.progress), logs, total, pkg.path.name, enabled=env.is_main)
        self.log_every = int(cfg.trainer.log_every_n_steps)
        # A search trial's run (a slot set EXPFLOW_TRIAL): rank 0 reports the objective as it
        # is recorded; once the study's pruner says stop, the run ends after that epoch.
        from expflow.search.trial import TRIAL_ENV, TrialReport

        self.in_trial = bool(os.environ.get(TRIAL_ENV))
        self.trial = TrialReport.from_env() if self.in_trial and env.is_main else None

    # -- checkpoints -------------------------------------------------------------
    def restore(self, checkpoint: tuple[Any, dict[str, Any]] | None) -> None:
        """Load a verified checkpoint (None: none yet, start over) and roll the records back."""
        from expflow.seeding import restore_rng_state

        store = self.pkg.checkpoints()
        if checkpoint is None:
            start = -1  # killed before the first checkpoint: start over, drop its records
            self.reporter.line(f"[{self.pkg.path.name}] no checkpoint yet: starting from the beginning")
        else:
            info, ck = checkpoint
            if ck["format"] == 1:
                runner_state = {k: ck.get(k) for k in ("model", "optimizer", "scheduler")}
            else:
                runner_state = ck["runner"]
            self.runner.load_state_dict(runner_state)
            self.lifecycle.load_state_dict(ck.get("lifecycle") or {})
            rng = ck["rng"]
            restore_rng_state(rng[self.env.rank] if len(rng) == self.env.world_size else rng[0])
            self.state.epoch, self.state.step = int(ck["epoch"]), int(ck["step"])
            self.state.metrics = dict(ck.get("metrics") or {})
            if ck.get("batch"):  # taken mid-epoch: the epoch resumes after its ck["batch"] batches
                rank = self.env.rank if len(ck["epoch_rng"]) == self.env.world_size else 0
                self.resume = {"batch": int(ck["batch"]), "rng": ck["epoch_rng"][rank],
                               "runner": (ck.get("epoch_state") or [{}] * (rank + 1))[rank]}
            start = self.saved_step = info.step
            self.reporter.line(f"[{self.pkg.path.name}] continuing from checkpoint at step {info.step} (epoch {info.epoch})")
        if self.env.is_main:
            store.truncate_after(start)
            assert self.writer is not None
            self.writer.rollback(start)
            self.pkg.update_manifest(lambda m: m.setdefault("attempts", []).append(
                {"kind": "continue", "from_step": start, "time": _now()}))

    def save(self, hold: bool, batch: int = 0, interim: bool = False) -> None:
        """A checkpoint at the current step (every rank takes part). ``batch``: taken after that
        many batches of the current epoch, with what resuming there needs: the RNG state the
        epoch's data iterator was made with and the runner's epoch state. ``interim``: a stop's
        checkpoint, which the next regular one replaces (expflow.package.checkpoints)."""
        from expflow import distributed
        from expflow.seeding import capture_rng_state

        rng = distributed.gather_objects(capture_rng_state())
        within = {}
        if batch:
            within = {"batch": batch, "epoch_rng": distributed.gather_objects(self.epoch_rng),
                      "epoch_state": distributed.gather_objects(self.runner.epoch_state())}
        if self.env.is_main:
            assert self.writer is not None
            self.writer.flush()  # a checkpoint never exists before the records it covers are on disk
            state = {
                "format": CHECKPOINT_FORMAT,
                "runner": self.runner.state_dict(),
                "lifecycle": self.lifecycle.state_dict(),
                "rng": rng,
                "world_size": self.env.world_size,
                "step": self.state.step,
                "epoch": self.state.epoch,
                "metrics": dict(self.state.metrics),
                "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
                **within,
            }
            self.pkg.checkpoints().save(state, step=self.state.step, epoch=self.state.epoch, hold=hold,
                                        interim=interim)
        distributed.barrier()
        self.saved_step = self.state.step

    # -- stopping on a signal ------------------------------------------------------
    def stop_requested(self) -> bool:
        """A stop was asked for, on any rank (with DDP every rank agrees, at the same step)."""
        if not self.env.distributed:
            return self.stop.requested
        import torch

        from expflow import distributed

        flag = torch.tensor(1.0 if self.stop.requested else 0.0, device=self.device)
        return bool(distributed.all_reduce_sum(flag).item() > 0)

    def interrupt(self, batch: int = 0) -> None:
        """Checkpoint at this step (unless one is there already) and stop: Interrupted."""
        from expflow.interrupt import Interrupted

        if self.state.step != self.saved_step:
            self.save(hold=False, batch=batch, interim=True)
        if self.env.is_main:
            self.pkg.update_manifest(lambda m: m.__setitem__("progress", self.progress()))
        raise Interrupted(self.stop.reason() if self.stop.requested else "CANCELLED", self.state.step,
                          self.stop.signame or "another rank's signal")

    # -- metrics ---------------------------------------------------------------
    def log(self, values: dict[str, Any], epoch: int | None) -> None:
        """Record ``values`` at the current step (rank 0): queued for the package's record
        writer (microseconds; acknowledged at the next checkpoint or ``flush``), then mirrored
        to the tracker."""
        values = {k: as_number(k, v) for k, v in values.items()}
        self.state.metrics.update(values)
        if self.writer is not None:
            self.writer.log(values, step=self.state.step, epoch=epoch)
            self.tracker.log(values, self.state.step)
        if self.trial is not None and self.trial.observe(values, self.state.step):
            self.state.stop = True

    def log_now(self, values: dict[str, Any], epoch: int | None) -> None:
        """``ctx.log`` and ``expflow.log`` from the runner's code: inside ``train_step``, at the
        step being taken (where its returned metrics go); elsewhere at the last step taken."""
        state = self.state
        epoch = epoch if epoch is not None else state.epoch + 1
        if not self.in_step:
            self.log(values, epoch)
            return
        state.step += 1
        try:
            self.log(values, epoch)
        finally:
            state.step -= 1

    def _ranks_mean(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """A step's metrics averaged over the ranks (every rank must return the same keys)."""
        if not self.env.distributed:
            return metrics
        import torch

        from expflow import distributed

        keys = sorted(metrics)
        stacked = torch.stack([torch.as_tensor(_detached(metrics[k]), dtype=torch.float64, device=self.device).reshape(())
                               for k in keys])
        mean = distributed.all_reduce_sum(stacked) / self.env.world_size
        return dict(zip(keys, mean.tolist(), strict=True))

    def _epoch_batches(self, resume: dict[str, Any] | None) -> tuple[Iterator[Any], int]:
        """This epoch's batches, and the index of the first. Resuming mid-epoch: the data
        iterator is made again with the RNG state of the epoch's start (so it draws its order
        and worker seeds as it did), its first ``batch`` batches are read and dropped (what
        they drew from the RNG too), the runner's epoch state is put back, and then the RNG
        state of the checkpoint: the rest of the epoch is what it would have been."""
        from expflow.seeding import capture_rng_state, restore_rng_state

        if resume is None:
            self.epoch_rng = capture_rng_state()
            return iter(self.runner.train_data(self.state.epoch)), 0
        at_stop = capture_rng_state()
        restore_rng_state(resume["rng"])
        self.epoch_rng = resume["rng"]
        batches = iter(self.runner.train_data(self.state.epoch))
        for _ in range(resume["batch"]):
            next(batches)
        self.runner.load_epoch_state(resume["runner"])
        restore_rng_state(at_stop)
        return batches, resume["batch"]

    def progress(self) -> dict[str, Any]:
        return {"epoch": self.state.epoch, "step": self.state.step, "max_epochs": self.state.max_epochs,
                "steps_per_epoch": self.steps_per_epoch}

    # -- the loop ------------------------------------------------------------------
    def run(self) -> None:
        from expflow.client import activate
        from expflow.lifecycle import SKIP

        lc, state = self.lifecycle, self.state
        # expflow.log() anywhere in the runner's code records at the current step.
        with activate(lambda values, step, epoch: self.log_now(values, epoch)):
            try:
                if lc.before_run(state) != SKIP:
                    while lc.need_continue(state):
                        if self.stop_requested():
                            self.interrupt()
                        self.one_epoch()
                lc.after_run(state)
            finally:
                self.reporter.close()

    def one_epoch(self) -> None:
        from expflow.lifecycle import SKIP
        from expflow.runlog import format_metrics

        runner, lc, state = self.runner, self.lifecycle, self.state
        epoch_no = state.epoch + 1
        epoch_values: dict[str, Any] = {}
        resume, self.resume = self.resume, None
        # A mid-epoch checkpoint's epoch began before it (its before_epoch ran then).
        if resume is not None or lc.before_epoch(state) != SKIP:
            self.ctx.set_epoch(state.epoch)
            runner.train_mode(True)
            log_every, log, mean = self.log_every, self.log, self._ranks_mean
            before, after, advance = lc.before_train_step, lc.after_train_step, self.reporter.advance
            train_step = runner.train_step
            stop_requested = self.stop_requested
            description = f"epoch {epoch_no}/{state.max_epochs}"
            batches, first = self._epoch_batches(resume)
            for b, batch in enumerate(batches, start=first):
                state.batch = b
                if before(state) == SKIP:
                    after(state)
                    continue
                self.in_step = True
                metrics = train_step(batch, state)
                self.in_step = False
                state.step += 1
                if metrics and state.step % log_every == 0:
                    log(mean(metrics), epoch_no)
                after(state)
                advance(state.step, description)
                if stop_requested():
                    self.interrupt(batch=b + 1)
            epoch_values.update(runner.end_epoch(state) or {})
        state.epoch = epoch_no
        state.batch = 0
        lc.after_epoch(state)
        if lc.need_validation(state):
            if lc.before_validation(state) != SKIP:
                runner.train_mode(False)
                try:
                    epoch_values.update(runner.validate(state) or {})
                    runner.visualize(state)
                finally:
                    runner.train_mode(True)
            lc.after_validation(state)
        if epoch_values:
            self.log(epoch_values, epoch_no)
        if self.in_trial and self.env.distributed:  # rank 0's pruning decision stops every rank
            from expflow import distributed

            self.state.stop = any(distributed.gather_objects(self.state.stop))
        self.reporter.line(
            f"[{self.pkg.path.name}] epoch {epoch_no}/{state.max_epochs} step {state.step} {format_metrics(epoch_values)}"
        )
        if lc.need_save(state):
            if lc.before_save(state) != SKIP:
                self.save(hold=bool(lc.hold_checkpoint(state)))
                if self.env.is_main:  # the manifest's progress is the last checkpoint's (a locked,
                    # fsync'd write: ~2.5 ms, too dear for every epoch); the heartbeat has the rest
                    self.pkg.update_manifest(lambda m: m.__setitem__("progress", self.progress()))
            lc.after_save(state)
        if self.heartbeat is not None:
            self.heartbeat.fields = {"step": state.step, "epoch": state.epoch}


def checkpoint_to_resume(pkg: SavePackage, resume: str | int) -> tuple[Any, dict[str, Any]] | None:
    """The verified checkpoint to continue from (None: ``latest`` and none yet)."""
    store = pkg.checkpoints()
    if resume == "latest" and not store.list():
        return None
    info = store.find(None if resume == "latest" else int(resume))
    ck = store.load(info, map_location="cpu")
    if ck.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{store.dir / info.file}: unknown checkpoint format {ck.get('format')!r}")
    if ck["format"] == 2 and not isinstance(ck.get("runner"), dict):
        raise CheckpointError(f"{store.dir / info.file}: key 'runner': expected the runner's state (a mapping)")
    return info, ck


def model_state(ck: dict[str, Any]) -> Any:
    """A checkpoint's ``model`` state (the supervised runner's, or a runner's ``model`` attribute)."""
    if ck.get("format") == 1:
        return ck["model"]
    runner = ck.get("runner") or {}
    if "model" not in runner:
        raise CheckpointError(f"the checkpoint holds no 'model' state (the runner saved: {', '.join(sorted(runner)) or 'nothing'})")
    return runner["model"]


def _length(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def _detached(value: Any) -> Any:
    detach = getattr(value, "detach", None)
    return detach() if callable(detach) else value


def _now() -> str:
    from expflow.package import utc_now

    return utc_now()
