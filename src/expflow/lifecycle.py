"""The training lifecycle (DLNest's idea): decisions and hooks the loop consults.

Replace it from the config with your own subclass::

    lifecycle:
      _target_: mypkg.lifecycle.MyLifecycle

Decisions: ``need_validation``, ``need_save``, ``hold_checkpoint``, ``need_continue``.
Hooks: ``before_<phase>`` / ``after_<phase>`` for the phases ``run``, ``epoch``,
``train_step``, ``validation`` and ``save``; a ``before_`` hook that returns
:data:`SKIP` skips the phase (its ``after_`` hook still runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SKIP = "skip"
PHASES = ("run", "epoch", "train_step", "validation", "save")


@dataclass
class TrainState:
    """What the loop knows; hooks may read it (and set ``stop`` to end training)."""

    config: Any
    max_epochs: int
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch: int = 0  # batch index within the current epoch
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each metric
    stop: bool = False
    rank: int = 0


class Lifecycle:
    def __init__(
        self,
        validate_every: int = 1,
        save_every: int = 1,
        hold_every: int = 0,
        hold_best: str | None = None,
        hold_mode: str = "max",
    ):
        if hold_mode not in ("max", "min"):
            raise ValueError(f"lifecycle.hold_mode: {hold_mode!r} is not valid; valid: max, min")
        self.validate_every = validate_every
        self.save_every = save_every
        self.hold_every = hold_every
        self.hold_best = hold_best
        self.hold_mode = hold_mode
        self.best: float | None = None

    # -- decisions (called at the end of each epoch) -----------------------------
    def need_validation(self, state: TrainState) -> bool:
        return self.validate_every > 0 and (
            state.epoch % self.validate_every == 0 or state.epoch == state.max_epochs
        )

    def need_save(self, state: TrainState) -> bool:
        last = state.epoch >= state.max_epochs or state.stop
        return last or (self.save_every > 0 and state.epoch % self.save_every == 0)

    def hold_checkpoint(self, state: TrainState) -> bool:
        held = self.hold_every > 0 and state.epoch % self.hold_every == 0
        if self.hold_best and self.hold_best in state.metrics:
            value = state.metrics[self.hold_best]
            if not math.isnan(value):
                better = self.best is None or (
                    value > self.best if self.hold_mode == "max" else value < self.best
                )
                if better:
                    self.best = value
                    held = True
        return held

    def need_continue(self, state: TrainState) -> bool:
        return state.epoch < state.max_epochs and not state.stop

    # -- hooks --------------------------------------------------------------------
    def before_run(self, state: TrainState) -> str | None: return None
    def after_run(self, state: TrainState) -> None: return None
    def before_epoch(self, state: TrainState) -> str | None: return None
    def after_epoch(self, state: TrainState) -> None: return None
    def before_train_step(self, state: TrainState) -> str | None: return None
    def after_train_step(self, state: TrainState) -> None: return None
    def before_validation(self, state: TrainState) -> str | None: return None
    def after_validation(self, state: TrainState) -> None: return None
    def before_save(self, state: TrainState) -> str | None: return None
    def after_save(self, state: TrainState) -> None: return None

    # -- persistence (restored on continue) ------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
