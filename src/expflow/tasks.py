"""Objectives: the loss to train on and the validation metrics of a kind of task."""

from __future__ import annotations

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
