"""Seed 004's regression: learn y = (2x - 1)^2 on [0, 1] with a tiny sigmoid network."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from expflow.data import DataModule
from expflow.tasks import Regression


def target_function(x: torch.Tensor) -> torch.Tensor:
    return (2 * x - 1) ** 2


class QuadraticData(DataModule):
    def __init__(self, batch_size: int = 256, n_train: int = 4096, n_val: int = 101, split_seed: int = 0):
        g = torch.Generator().manual_seed(split_seed)
        x_train = torch.rand(n_train, 1, generator=g)
        x_val = torch.linspace(0, 1, n_val).unsqueeze(1)  # the seed's evaluation grid
        self.task = Regression()
        self.batch_size = batch_size
        self.train_set = TensorDataset(x_train, target_function(x_train))
        self.val_set = TensorDataset(x_val, target_function(x_val))


class QuadraticMLP(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Sigmoid(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
