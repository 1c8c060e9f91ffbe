"""Where a process stands among the ranks of a run (torchrun's RANK and WORLD_SIZE): the
base of :class:`expflow.distributed.DistEnv` and :class:`expflow.runner.RunContext`."""

from __future__ import annotations


class Ranked:
    """``distributed`` and ``is_main`` of anything with a ``rank`` and a ``world_size``."""

    rank: int
    world_size: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0
