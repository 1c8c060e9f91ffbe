"""The Runner API: bring your own training step (DLNest's Runner, in Python terms).

A runner owns what happens in a step; expflow owns everything around it: the save-package,
the lifecycle (when to validate, save, stop), checkpoints with every RNG state, metric
records, trackers, DDP set-up, GPU leases and status. Choose one from the config::

    runner:
      _target_: mypkg.runners.GanRunner   # constructed with the other keys as parameters
      critic_steps: 5

The protocol (subclass :class:`Runner`; only ``build``, ``train_data`` and ``train_step`` are
required)::

    class GanRunner(Runner):
        def build(self, ctx):                       # once per rank, before any checkpoint loads
            self.gen = ctx.wrap(Generator(...))     # on ctx.device, DDP-wrapped when distributed
            self.disc = ctx.wrap(Discriminator(...))
            self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=ctx.cfg.optim.lr)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=ctx.cfg.optim.lr)
            self.loader = ctx.loader(MyDataset(), batch_size=64, shuffle=True)

        def train_data(self, epoch):                # the batches of one epoch (any structure)
            return self.loader

        def train_step(self, batch, state):         # one step; returns its metrics
            real = self.ctx.to_device(batch["image"])
            ...
            return {"train/loss_d": loss_d, "train/loss_g": loss_g}   # floats or 0-d tensors

        def validate(self, state):                  # optional: metrics of a validation pass
            return {"val/fid": ...}

        def visualize(self, state):                 # optional: after each validation, every rank
            if self.ctx.is_main:                    # (write files from one rank)
                save_image(..., self.ctx.output_dir("samples") / f"epoch{state.epoch}.png")

        def state_dict(self):                       # optional: the default saves every module,
            return {**super().state_dict(), "ema": self.ema}  # optimizer and scheduler attribute

Metrics returned by ``train_step`` are averaged over the ranks and recorded every
``trainer.log_every_n_steps`` steps (only then are tensors read, so a step never waits for the
device); ``validate`` and ``end_epoch`` metrics are recorded once per epoch. ``state.step``
counts the calls of ``train_step`` (the loop increments it after each). A checkpoint holds
``state_dict()``, the lifecycle's state, the step and epoch, and every rank's Python, NumPy and
torch RNG states: a continued run takes exactly the steps the uninterrupted one would have.

``runner=command`` runs a whole program instead (:mod:`expflow.runner.command`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expflow.world import Ranked

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig
    from torch.utils.data import DataLoader, Dataset

    from expflow.lifecycle import TrainState

SUPERVISED = "expflow.runner.supervised.SupervisedRunner"
COMMAND = "expflow.runner.command.CommandRunner"


@dataclass
class RunContext(Ranked):
    """What a runner gets in ``build``: the config, where it runs, and helpers for the
    device, DDP, all-reduce and data sharding."""

    cfg: DictConfig
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    package_dir: Path | None = None
    seed: int = 0
    _samplers: list[Any] = field(default_factory=list, repr=False)
    _log: Any = field(default=None, repr=False)

    # -- models and tensors ----------------------------------------------------------
    def wrap(self, module: torch.nn.Module, **ddp_kwargs: Any) -> torch.nn.Module:
        """``module`` on the run's device; under DDP, wrapped in DistributedDataParallel
        (checkpoints save the unwrapped module, so a package continues at any world size)."""
        module = module.to(self.device)
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            ddp_kwargs.setdefault("device_ids", [self.device.index])
        return DistributedDataParallel(module, **ddp_kwargs)

    def to_device(self, batch: Any) -> Any:
        """``batch`` on the run's device, whatever its structure: tensors inside tuples, lists,
        dicts and dataclasses, and any object with a ``.to(device)`` method."""
        from expflow.data import to_device

        return to_device(batch, self.device)

    def step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, *, clip: float | None = None,
             parameters: Any = None, scheduler: Any = None) -> None:
        """``loss.backward()``, gradient-norm clipping to ``clip`` (of ``parameters``, default the
        optimizer's), ``optimizer.step()``, then ``scheduler.step()`` if given (a per-step schedule)."""
        loss.backward()
        if clip:
            from torch.nn.utils import clip_grad_norm_

            if parameters is None:
                parameters = [p for group in optimizer.param_groups for p in group["params"]]
            clip_grad_norm_(parameters, float(clip))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()

    def all_reduce(self, value: Any, op: str = "mean") -> torch.Tensor:
        """``value`` (a tensor or number) summed (``op="sum"``) or averaged (``"mean"``) over
        the ranks; itself when not distributed."""
        import torch

        from expflow import distributed

        if op not in ("mean", "sum"):
            raise ValueError(f"all_reduce: op {op!r} is not valid; valid: mean, sum")
        t = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value), device=self.device)
        total = distributed.all_reduce_sum(t)
        return total / self.world_size if op == "mean" else total

    # -- data ------------------------------------------------------------------------------
    def loader(self, dataset: Dataset, batch_size: int, *, shuffle: bool = True,
               drop_last: bool = False, **loader_kwargs: Any) -> DataLoader:
        """A DataLoader over this rank's shard of ``dataset``. Shuffled (``shuffle``) from the
        run's seed and the epoch number, which the loop sets each epoch: a continued run sees
        the same order, and every rank agrees on it. Without ``shuffle``, each rank takes every
        world_size-th sample, without padding (for validation: each sample counted once)."""
        from torch.utils.data import DataLoader, DistributedSampler, Subset

        if shuffle:
            sampler = DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank,
                                         shuffle=True, seed=self.seed, drop_last=drop_last)
            self._samplers.append(sampler)
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **loader_kwargs)
        indices = list(range(self.rank, len(dataset), self.world_size))  # type: ignore[arg-type]
        return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                          drop_last=drop_last, **loader_kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Called by the loop before each epoch: reshuffles every ``loader(shuffle=True)``."""
        for sampler in self._samplers:
            sampler.set_epoch(epoch)

    # -- outputs ---------------------------------------------------------------------------
    def output_dir(self, name: str) -> Path:
        """``<package>/outputs/<name>/`` (created): where a runner's own files go."""
        base = self.package_dir if self.package_dir is not None else Path(os.getcwd())
        path = base / "outputs" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, values: dict[str, Any]) -> None:
        """Record ``values`` now, at the current step (rank 0; a no-op on the other ranks)."""
        if self._log is not None and self.is_main:
            self._log(values)


class Runner:
    """Base class of runners: construct with the config's ``runner`` keys, then ``build``.

    The defaults: no validation, no visualization, no end-of-epoch metrics, and
    ``state_dict`` saves every attribute that is a torch module (unwrapped from DDP), an
    optimizer, an LR scheduler or a gradient scaler, by attribute name.
    """

    ctx: RunContext

    def __init__(self, **params: Any):
        if params:
            names = ", ".join(sorted(params))
            raise TypeError(f"{type(self).__name__} takes no parameters (got {names}); "
                            f"define __init__ to accept them")

    # -- required ----------------------------------------------------------------------
    def build(self, ctx: RunContext) -> None:
        raise NotImplementedError(f"{type(self).__name__}.build(ctx) is not defined")

    def train_data(self, epoch: int) -> Iterable[Any]:
        raise NotImplementedError(f"{type(self).__name__}.train_data(epoch) is not defined")

    def train_step(self, batch: Any, state: TrainState) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__}.train_step(batch, state) is not defined")

    # -- optional ----------------------------------------------------------------------
    def validate(self, state: TrainState) -> dict[str, Any]:
        return {}

    def epoch_state(self) -> dict[str, Any]:
        """What ``train_step`` has accumulated in the current epoch (e.g. the sums behind an
        epoch-mean metric), for a checkpoint taken mid-epoch (a stop on a time-limit or
        preemption signal); ``load_epoch_state`` puts it back after ``train_data`` of that
        epoch is called again. Default: nothing."""
        return {}

    def load_epoch_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`epoch_state` (the default keeps nothing)."""

    def visualize(self, state: TrainState) -> None:
        return None

    def end_epoch(self, state: TrainState) -> dict[str, Any]:
        """Metrics of the epoch just trained (e.g. a sample-weighted mean loss)."""
        return {}

    def train_mode(self, training: bool) -> None:
        """Put every module in train (``True``) or eval mode; called around validation."""
        for _, module in self._stateful("module"):
            module.train(training)

    def state_dict(self) -> dict[str, Any]:
        return {name: obj.state_dict() for name, obj in self._stateful()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, obj in self._stateful():
            if name in state and state[name] is not None:
                obj.load_state_dict(state[name])

    def _stateful(self, only: str | None = None) -> Iterator[tuple[str, Any]]:
        import torch

        kinds: list[tuple[str, tuple[type, ...]]] = [
            ("module", (torch.nn.Module,)),
            ("optimizer", (torch.optim.Optimizer,)),
            ("scheduler", (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)),
            ("scaler", (torch.amp.GradScaler,)),
        ]
        for name in sorted(vars(self)):
            if name.startswith("_") or name == "ctx":
                continue
            obj = vars(self)[name]
            for kind, types in kinds:
                if isinstance(obj, types) and (only is None or kind == only):
                    yield name, (getattr(obj, "module", obj) if kind == "module" else obj)
                    break


def runner_target(cfg: Any) -> str:
    """The config's runner class path (the supervised runner when there is no ``runner``);
    ``cfg`` is a config or a plain mapping (a package's config.yaml as read)."""
    runner = cfg.get("runner") if hasattr(cfg, "get") else None
    target = runner.get("_target_") if hasattr(runner, "get") else None
    return str(target or SUPERVISED)


def is_command(cfg: Any) -> bool:
    """Whether the config runs a program (``runner=command``) rather than a Runner class."""
    return runner_target(cfg) == COMMAND
