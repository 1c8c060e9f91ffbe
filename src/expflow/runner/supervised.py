"""The shipped default runner: supervised learning on ``(input, target)`` batches.

``model`` and ``dataset`` come from the config (``_target_``), the optimizer and scheduler from
``optim``; the dataset is a :class:`expflow.data.DataModule` whose ``task`` gives the loss and
the validation metrics. One step: forward, ``task.loss``, backward, optional gradient clipping,
optimizer step (and the scheduler, per step or per epoch).

Records: ``train/loss`` and ``train/lr`` every ``trainer.log_every_n_steps`` steps,
``train/epoch_loss`` (sample-weighted over the epoch and the ranks) and ``val/<metric>``
(summed per batch in float64 and averaged per sample over the ranks) each epoch.
"""

from __future__ import annotations

from typing import Any

import torch

from expflow.lifecycle import TrainState
from expflow.runner import RunContext, Runner
from expflow.tasks import MetricAverage

_FOLD = 256  # steps of (loss, batch size) kept before they are summed into the epoch's loss


class SupervisedRunner(Runner):
    def build(self, ctx: RunContext) -> None:
        from hydra.utils import instantiate

        from expflow.data import Shard, train_loader, val_loader
        from expflow.errors import ConfigError

        cfg = ctx.cfg
        self.ctx = ctx
        for key in ("model", "dataset"):
            if cfg.get(key) is None:
                raise ConfigError(f"{key}: missing; the supervised runner trains a `model` on a `dataset` "
                                  f"(choose one, e.g. {key}=..., or another runner)")
        self.data = instantiate(cfg.dataset)
        self.task = self.data.task
        self.model = ctx.wrap(instantiate(cfg.model))
        self.optimizer = instantiate(cfg.optim.optimizer)(self.model.parameters())
        sched = cfg.optim.get("scheduler")
        self.scheduler = instantiate(sched)(self.optimizer) if sched else None
        self.scheduler_per_step = self.scheduler is not None and cfg.optim.scheduler_interval == "step"
        self.grad_clip = float(cfg.trainer.grad_clip or 0)
        shard = Shard(ctx.rank, ctx.world_size)
        self.train_dl, self.sampler = train_loader(self.data, ctx.seed, shard)
        self.val_dl = val_loader(self.data, shard)
        self._loss_sum = torch.zeros((), device=ctx.device)
        self._pending: list[torch.Tensor] = []  # this epoch's step losses not yet in _loss_sum
        self._weights: list[int] = []  # their batch sizes
        self._count = 0  # samples this epoch (a Python int: no tensor op per step)

    def train_data(self, epoch: int) -> Any:
        self.sampler.set_epoch(epoch)
        self._loss_sum.zero_()
        self._pending, self._weights = [], []
        self._count = 0
        return self.train_dl

    def train_step(self, batch: Any, state: TrainState) -> dict[str, Any]:
        x, y = self.ctx.to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task.loss(self.model(x), y)
        self.ctx.step(self.optimizer, loss, clip=self.grad_clip,
                      parameters=self.model.parameters() if self.grad_clip else None,
                      scheduler=self.scheduler if self.scheduler_per_step else None)
        loss = loss.detach()
        n = len(y)
        # The epoch's loss, sample-weighted: the step's (loss, n) kept and summed in one
        # tensor op per _FOLD steps (an op per step costs more than the rest of this bookkeeping).
        pending = self._pending
        pending.append(loss)
        self._weights.append(n)
        if len(pending) >= _FOLD:
            self._fold()
        self._count += n
        return {"train/loss": loss, "train/lr": self.optimizer.param_groups[0]["lr"]}

    def _fold(self) -> None:
        if self._pending:
            weights = torch.tensor(self._weights, dtype=self._loss_sum.dtype, device=self._loss_sum.device)
            self._loss_sum.add_(torch.stack(self._pending).to(self._loss_sum.dtype) @ weights)
            self._pending, self._weights = [], []

    def epoch_state(self) -> dict[str, Any]:
        # as they are (not folded): the epoch's loss then sums in the same order as without a stop
        return {"loss_sum": self._loss_sum.clone(), "pending": list(self._pending), "weights": list(self._weights),
                "count": self._count}

    def load_epoch_state(self, state: dict[str, Any]) -> None:
        device = self._loss_sum.device
        self._loss_sum.copy_(state["loss_sum"].to(device))
        self._pending = [t.to(device) for t in state["pending"]]
        self._weights, self._count = list(state["weights"]), int(state["count"])

    def end_epoch(self, state: TrainState) -> dict[str, Any]:
        if self.scheduler is not None and not self.scheduler_per_step:
            self.scheduler.step()
        self._fold()
        count = torch.tensor(float(self._count), device=self.ctx.device)
        total = self.ctx.all_reduce(torch.stack([self._loss_sum, count]), op="sum")
        return {"train/epoch_loss": (total[0] / total[1].clamp(min=1)).item()}

    def validate(self, state: TrainState) -> dict[str, Any]:
        ctx = self.ctx
        average = MetricAverage(self.task)
        with torch.no_grad():
            for batch in self.val_dl:
                x, y = ctx.to_device(batch)
                average.add(self.model(x), y)
        return average.means("val/", reduce=lambda t: ctx.all_reduce(t, op="sum"), device=ctx.device)
