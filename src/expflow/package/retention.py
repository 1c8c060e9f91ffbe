"""DLNest's three retention tracks as a policy, with the defaults every other place takes
(the config schema's ``checkpoint`` node, a package's config without one). Light on purpose:
the config schema imports it, so nothing here imports the package or its shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from expflow.errors import CheckpointError


@dataclass(frozen=True)
class RetentionPolicy:
    fast_keep: int = 2
    slow_every: int = 5
    slow_keep: int = 2
    persistent_keep: int | None = None  # None: keep every held checkpoint

    def __post_init__(self) -> None:
        for name in ("fast_keep", "slow_every", "slow_keep"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise CheckpointError(f"checkpoint.{name} must be an integer >= 0, got {value!r}")
        keep = self.persistent_keep
        if keep is not None and (not _is_int(keep) or keep < 0):
            raise CheckpointError(f"checkpoint.persistent_keep must be an integer >= 0 or null, got {keep!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
