"""Tracker protocol. The package's own metric records are the source of truth; a
tracker mirrors them (rank 0 only) and is imported lazily."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_config(self, config: dict[str, Any]) -> None: ...

    def finish(self, status: str = "COMPLETED") -> None: ...


class NullTracker:
    """The do-nothing default."""

    def __init__(self, **_: Any):
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_config(self, config: dict[str, Any]) -> None:
        pass

    def finish(self, status: str = "COMPLETED") -> None:
        pass
