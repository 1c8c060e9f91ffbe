"""A plain training script, as people write them: argparse, a PyTorch loop, a checkpoint.

It knows nothing of Hydra or save-packages. ``expflow new --example command`` makes it the
project's ``train.py``, run as ``runner=command``: expflow packages, leases, seeds and
supervises it. Two optional touches make it a better citizen, and both work unchanged
outside expflow:

- ``expflow.log(metrics, step)`` records metrics into the package (a no-op elsewhere);
- checkpoints go to ``$EXPFLOW_CHECKPOINT_DIR`` (named with their step), and ``--resume PATH``
  continues from one, so ``expflow continue`` can resume it (``runner.resume_argv``);
- on SIGUSR1 it checkpoints at the step it is in and exits: a cluster job warned of its time
  limit loses at most a step (``runner.stop_signal: SIGUSR1`` tells expflow to pass it on).

The task is seed 004's regression: fit ``(2x - 1)^2`` on ``[0, 1]`` with a small MLP.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import torch
from torch import nn

import expflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument("--resume", default=None, help="a checkpoint to continue from")
    args = parser.parse_args()

    checkpoints = Path(os.environ.get("EXPFLOW_CHECKPOINT_DIR", "checkpoints"))
    checkpoints.mkdir(parents=True, exist_ok=True)
    model = nn.Sequential(nn.Linear(1, 16), nn.Sigmoid(), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    start = 0
    if args.resume:
        state = torch.load(args.resume, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
        print(f"resumed from {args.resume} at step {start}")

    def target(x: torch.Tensor) -> torch.Tensor:
        return (2 * x - 1) ** 2

    stop: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: stop.append(signum))  # checkpoint, then exit

    def save(step: int) -> None:
        path = checkpoints / f"step_{step:06d}.pt"
        tmp = path.with_name(path.name + ".tmp")  # written whole, then renamed
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(), "step": step}, tmp)
        os.replace(tmp, path)

    for step in range(start, args.steps):
        x = torch.rand(args.batch_size, 1)
        loss = nn.functional.mse_loss(model(x), target(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 10 == 0:
            expflow.log({"train/loss": loss.item()}, step=step + 1)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps or stop:
            save(step + 1)
        if stop and step + 1 < args.steps:
            print(f"stopped at step {step + 1} on signal {stop[0]}, checkpointed")
            return
    with torch.no_grad():
        x = torch.linspace(0, 1, 101).unsqueeze(1)
        val = nn.functional.mse_loss(model(x), target(x)).item()
    expflow.log({"val/loss": val}, step=args.steps)
    print(f"done: {args.steps} steps, val/loss {val:.5f}")


if __name__ == "__main__":
    main()
