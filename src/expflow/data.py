"""What a project's dataset provides, and the loaders the trainer builds from it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from expflow.tasks import Task


class DataModule:
    """A dataset config's ``_target_`` builds one of these.

    Subclasses set ``task``, ``batch_size``, ``train_set`` and ``val_set`` (map-style
    torch datasets). Data must come from disk or be generated: nothing is downloaded.
    """

    task: Task
    batch_size: int
    train_set: Dataset
    val_set: Dataset


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world_size: int = 1


def train_loader(data: DataModule, seed: int, shard: Shard) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled per epoch from ``seed + epoch`` (``sampler.set_epoch``): resuming needs
    only the epoch number, and every rank agrees on the order."""
    sampler = DistributedSampler(
        data.train_set, num_replicas=shard.world_size, rank=shard.rank, shuffle=True, seed=seed
    )
    return DataLoader(data.train_set, batch_size=data.batch_size, sampler=sampler), sampler


def val_loader(data: DataModule, shard: Shard) -> DataLoader:
    """Each rank takes every world_size-th sample, without padding, so metrics summed
    across ranks cover each validation sample exactly once."""
    n = len(data.val_set)  # type: ignore[arg-type]
    indices = list(range(shard.rank, n, shard.world_size))
    return DataLoader(Subset(data.val_set, indices), batch_size=data.batch_size, shuffle=False)


def to_device(batch: object, device: torch.device) -> object:
    """``batch`` on ``device``, whatever its structure: tensors inside tuples (named ones
    too), lists, dicts and dataclasses, and any object with a ``.to(device)`` method."""
    cls = type(batch)
    if cls is tuple or cls is list:  # the common case first: a few tensors, already placed or not
        return cls([to_device(b, device) for b in batch])
    if isinstance(batch, torch.Tensor):
        # Already there (a CPU run's every batch): itself, without a dispatch through .to().
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return cls(*(to_device(b, device) for b in batch))
    if isinstance(batch, (list, tuple)):
        return cls(to_device(b, device) for b in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: to_device(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    move = getattr(batch, "to", None)
    if callable(move):
        return move(device)
    return batch
