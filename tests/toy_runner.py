"""A runner the old (x, y) loop could not express: custom batch objects, two models with two
optimizers, an extra state that must survive a continue, and `expflow.log` from inside a step."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

import expflow
from expflow.runner import Runner


@dataclass
class Pair:
    """A batch that is neither a tensor nor a tuple: a dataclass of tensors."""

    left: torch.Tensor
    right: torch.Tensor


class PairSet(torch.utils.data.Dataset):
    def __init__(self, n: int = 96):
        g = torch.Generator().manual_seed(123)
        self.left = torch.randn(n, 4, generator=g)
        self.right = self.left @ torch.randn(4, 2, generator=g)

    def __len__(self) -> int:
        return len(self.left)

    def __getitem__(self, i: int) -> Pair:
        return Pair(self.left[i], self.right[i])


def collate(items: list[Pair]) -> Pair:
    return Pair(torch.stack([p.left for p in items]), torch.stack([p.right for p in items]))


class TwoNetRunner(Runner):
    def __init__(self, hidden: int = 8, crash_at_epoch: int = 0):
        self.hidden = hidden
        self.crash_at_epoch = crash_at_epoch

    def build(self, ctx):
        self.ctx = ctx
        self.encoder = ctx.wrap(nn.Linear(4, self.hidden))
        self.head = ctx.wrap(nn.Linear(self.hidden, 2))
        lr = float(ctx.cfg.optim.lr)
        self.opt_enc = torch.optim.SGD(self.encoder.parameters(), lr=lr)
        self.opt_head = torch.optim.Adam(self.head.parameters(), lr=lr)
        self.train_dl = ctx.loader(PairSet(), batch_size=16, shuffle=True, collate_fn=collate)
        self.val_dl = ctx.loader(PairSet(32), batch_size=16, shuffle=False, collate_fn=collate)
        self.seen = 0  # extra state: must survive a continue

    def train_data(self, epoch):
        if self.crash_at_epoch and epoch + 1 == self.crash_at_epoch and os.environ.get("TOY_CRASH"):
            raise RuntimeError(f"deliberate crash at epoch {epoch + 1}")
        return self.train_dl

    def train_step(self, batch, state):
        batch = self.ctx.to_device(batch)
        assert isinstance(batch, Pair)
        noise = torch.randn_like(batch.left) * 0.01  # draws from torch's RNG: the checkpoint restores it
        loss = nn.functional.mse_loss(self.head(torch.tanh(self.encoder(batch.left + noise))), batch.right)
        self.opt_enc.zero_grad()
        self.opt_head.zero_grad()
        loss.backward()
        self.opt_enc.step()
        self.opt_head.step()
        self.seen += len(batch.left)
        if state.step % 3 == 0:
            expflow.log({"toy/seen": self.seen})
        return {"train/loss": loss.detach(), "train/seen": float(self.seen)}

    def validate(self, state):
        total = torch.zeros(2)
        with torch.no_grad():
            for batch in self.val_dl:
                batch = self.ctx.to_device(batch)
                err = nn.functional.mse_loss(self.head(torch.tanh(self.encoder(batch.left))), batch.right,
                                             reduction="sum")
                total += torch.stack([err, torch.tensor(float(batch.right.numel()))])
        total = self.ctx.all_reduce(total, op="sum")
        return {"val/loss": (total[0] / total[1]).item()}

    def visualize(self, state):
        if self.ctx.is_main:
            (self.ctx.output_dir("toy") / f"epoch{state.epoch}.txt").write_text(f"{self.seen}\n")

    def state_dict(self):
        return {**super().state_dict(), "seen": self.seen}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.seen = state["seen"]


class NoStep:
    """Not a runner: it has no train_step."""

    def build(self, ctx):
        pass

    def train_data(self, epoch):
        return []
