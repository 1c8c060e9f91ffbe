"""What a launched run gives back, and what its children do when the launcher dies: shared
by the launcher (:mod:`expflow.launch`), a rank (:mod:`expflow.rank`), a command run's
supervisor (:mod:`expflow.runner.command`) and the analysis worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from expflow.package import SavePackage, Status


@dataclass
class RunResult:
    package: SavePackage
    status: Status
    metrics: dict[str, float]


def die_with_parent() -> None:
    """In a launched child: receive SIGTERM when the launcher dies, even by SIGKILL,
    so no worker trains on unattended (the worker marks its package CRASHED)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
