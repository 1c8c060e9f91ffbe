"""A log()-heavy process for the SIGKILL test: trains a tiny model and logs five scalars
every step; every ``ack_every`` steps it flushes and prints the acknowledged seq.

    python -m tests.record_logger RECORDS_PATH ACK_EVERY
"""

from __future__ import annotations

import sys

import torch

from expflow.package.records import RecordWriter


def values(step: int, loss: float) -> dict[str, float]:
    return {"loss": loss, "step_x2": 2.0 * step, "a": step + 0.5, "b": -float(step), "c": step / 7}


def main() -> None:
    path, ack_every = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    writer = RecordWriter(path)
    step = 0
    while True:
        step += 1
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for _ in range(20):  # log()-heavy: many records per optimizer step
            writer.log(values(step, loss.item()), step=step)
        if step % ack_every == 0:
            print(writer.flush(), flush=True)


if __name__ == "__main__":
    main()
