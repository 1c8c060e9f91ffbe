"""Classifiers on scikit-learn's bundled digits (1,797 8x8 images; shipped, never downloaded)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from expflow.data import DataModule
from expflow.tasks import Classification


class DigitsData(DataModule):
    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, split_seed: int = 0):
        from sklearn.datasets import load_digits

        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"dataset.val_fraction must be in (0, 1), got {val_fraction}")
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
        n_val = int(round(len(x) * val_fraction))
        val_idx, train_idx = order[:n_val], order[n_val:]
        self.task = Classification()
        self.batch_size = batch_size
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])


class MLP(nn.Module):
    def __init__(self, in_features: int = 64, hidden: list[int] | tuple[int, ...] = (128, 64),
                 num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class CNN(nn.Module):
    def __init__(self, channels: list[int] | tuple[int, ...] = (16, 32), num_classes: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * 16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 8, 8)))
