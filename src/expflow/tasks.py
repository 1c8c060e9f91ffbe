"""Objectives: the loss to train on and the validation metrics of a kind of task."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


class Task:
    """Loss for training; per-batch metric sums for validation (averaged over samples)."""

    main_metric = "val/loss"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metric_sums(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums over the batch of each metric; the trainer divides by the sample count."""
        return {"loss": self.loss(output, target) * target.shape[0]}


class Classification(Task):
    main_metric = "val/acc"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def metric_sums(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "loss": F.cross_entropy(output, target, reduction="sum"),
            "acc": (output.argmax(dim=1) == target).sum().to(output.dtype),
        }


class Regression(Task):
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target)

    def metric_sums(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "loss": F.mse_loss(output, target, reduction="sum"),
            "mae": (output - target).abs().sum(),
        }


class MetricAverage:
    """A task's validation metrics over batches: per-batch sums accumulated in float64 and
    divided by the sample count. The one averaging of the trainer's validation and an
    analysis's ``ctx.evaluate`` (so an analysis reproduces the records exactly)."""

    def __init__(self, task: Task):
        self.task = task
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, output: torch.Tensor, target: torch.Tensor) -> None:
        for k, v in self.task.metric_sums(output, target).items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().to(torch.float64)  # type: ignore[assignment]
        self.count += len(target)

    def means(self, prefix: str = "val/", reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
              device: torch.device | str | None = None) -> dict[str, float]:
        """``{prefix + name: mean}``; ``reduce``: sums the ranks' sums and counts first (on
        ``device``, where a rank saw no batch)."""
        keys = sorted(self.sums)
        if reduce is None:
            n = max(self.count, 1)
            return {f"{prefix}{k}": (self.sums[k] / n).item() for k in keys}
        device = self.sums[keys[0]].device if keys else device
        count = torch.tensor(float(self.count), dtype=torch.float64, device=device)
        stacked = reduce(torch.stack([*(self.sums[k] for k in keys), count]))
        n = stacked[-1].clamp(min=1)
        return {f"{prefix}{k}": (stacked[i] / n).item() for i, k in enumerate(keys)}

