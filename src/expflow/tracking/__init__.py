"""Trackers: mirrors of a run's metrics in SwanLab, MLflow, ... (rank 0 only).

The package's own metric records are the source of truth; a tracker mirrors them while
the run trains and ``expflow sync`` uploads them afterwards. Backends are imported
lazily, when a tracker starts, so the default (no tracker) never imports them.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
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


class MultiTracker:
    """Fans every call out to several trackers (``tracker=multi``); each costs its own time."""

    def __init__(self, trackers: Mapping[str, Any] | None = None, **context: Any):
        self.trackers: dict[str, Any] = {}
        for name, node in (trackers or {}).items():
            tracker = instantiate_tracker(node, **context)
            if not isinstance(tracker, NullTracker):  # each guarded alone: one failing keeps the others
                self.trackers[str(name)] = GuardedTracker(tracker, str(name))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for t in self.trackers.values():
            t.log(metrics, step)

    def log_config(self, config: dict[str, Any]) -> None:
        for t in self.trackers.values():
            t.log_config(config)

    def finish(self, status: str = "COMPLETED") -> None:
        for t in self.trackers.values():
            t.finish(status)


class GuardedTracker:
    """A tracker whose failures never stop training: the first error prints one line and
    turns it off (the package's records keep everything; ``expflow sync`` uploads later)."""

    def __init__(self, tracker: Any, name: str):
        self.tracker = tracker
        self.name = name
        self.failed: str | None = None

    def _fail(self, what: str, error: BaseException) -> None:
        self.failed = f"{error.__class__.__name__}: {' '.join(str(error).split())}"[:300]
        if isinstance(error, ModuleNotFoundError) and error.name in ("swanlab", "mlflow"):
            self.failed += f"; install it with pip install 'expflow[{error.name}]'"
        print(f"expflow: warning: tracker {self.name} failed in {what} ({self.failed}); it is off for "
              "the rest of the run, the package's records keep every metric (upload them with `expflow sync`)",
              file=sys.stderr, flush=True)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.failed is None:
            try:
                self.tracker.log(metrics, step)
            except Exception as e:
                self._fail("log", e)

    def log_config(self, config: dict[str, Any]) -> None:
        if self.failed is None:
            try:
                self.tracker.log_config(config)
            except Exception as e:
                self._fail("log_config", e)

    def finish(self, status: str = "COMPLETED") -> None:
        if self.failed is None:
            try:
                self.tracker.finish(status)
            except Exception as e:
                self._fail("finish", e)


def instantiate_tracker(node: Any, **context: Any) -> Any:
    """Build a tracker from its config node, passing it the ``context`` keywords it accepts
    (``run_dir``: the package's tracker directory, ``run_id``: the package's run id)."""
    from hydra.utils import get_object, instantiate
    from omegaconf import DictConfig, OmegaConf

    if node is None:
        return NullTracker()
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    if not isinstance(node, Mapping):
        return node  # already a tracker (built by a recursive instantiate)
    target = get_object(node["_target_"])  # a class or a factory function
    params = inspect.signature(target).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in context.items() if takes_any or k in params}
    return instantiate(node, _convert_="all", **extra)


def build_tracker(node: Any, *, is_main: bool, **context: Any) -> Tracker:
    """The run's tracker: guarded on rank 0, a :class:`NullTracker` on every other rank."""
    if not is_main:
        return NullTracker()
    tracker = instantiate_tracker(node, **context)
    if isinstance(tracker, (NullTracker, MultiTracker)):
        return tracker
    name = tracker.__class__.__name__.removesuffix("Tracker") or "tracker"
    return GuardedTracker(tracker, name)
