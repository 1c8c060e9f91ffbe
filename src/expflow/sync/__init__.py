"""``expflow sync``: upload save-packages to a tracking server (SwanLab or MLflow).

The package's own records are what gets uploaded; the sync is idempotent and incremental
(state per package and destination, :mod:`expflow.sync.state`), corrects the server after a
``continue`` rolled steps back, never modifies a package's records or tracker logs, and
never lets one bad package stop the others. No network or no credentials: the package is
*deferred* (one line, not a failure); the next sync catches up.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from expflow.errors import ExpflowError, SyncDeferred, SyncError

TARGETS = ("swanlab", "mlflow")
ID_CHOICES = ("new", "auto")  # or an experiment / run id that must exist


@dataclass
class SyncResult:
    package: str
    outcome: str  # synced | up to date | deferred | failed
    message: str = ""
    records: int = 0
    points: int = 0
    skipped: int = 0  # invalid record lines skipped

    def line(self) -> str:
        return f"{self.package}: {self.outcome}" + (f": {self.message}" if self.message else "")


class Target(Protocol):
    name: str

    def sync(self, pkg: Any, experiment: str, strict: bool) -> SyncResult: ...


def make_target(name: str, *, uri: str | None = None, project: str | None = None,
                workspace: str | None = None, artifacts: Iterable[str] = (), timeout: float = 120.0) -> Target:
    if name == "mlflow":
        from expflow.sync.mlflow import MlflowTarget

        return MlflowTarget(uri=uri, project=project, artifacts=tuple(artifacts), timeout=timeout)
    if name == "swanlab":
        from expflow.sync.swanlab import SwanLabTarget

        return SwanLabTarget(uri=uri, project=project, workspace=workspace, timeout=timeout)
    raise SyncError(f"--target: {name!r} is not a sync target; valid: {', '.join(TARGETS)}")


def sync_packages(
    paths: Iterable[str | Path],
    target: str | Target,
    *,
    experiment: str = "auto",
    strict: bool = False,
    report: Callable[[SyncResult], None] | None = None,
    **target_options: Any,
) -> list[SyncResult]:
    """Sync each package in turn; a failing package is reported and the next one goes on."""
    from expflow.package import SavePackage

    tgt = make_target(target, **target_options) if isinstance(target, str) else target
    results = []
    for path in paths:
        try:
            result = tgt.sync(SavePackage.open(path), experiment, strict)
        except SyncDeferred as e:
            result = SyncResult(str(path), "deferred", f"{e.one_line()}; the next sync catches up")
        except ExpflowError as e:
            result = SyncResult(str(path), "failed", e.one_line())
        except Exception as e:  # a bug or an unexpected server answer: this package only
            result = SyncResult(str(path), "failed", f"{e.__class__.__name__}: {' '.join(str(e).split())}"[:500])
        results.append(result)
        if report is not None:
            report(result)
    return results


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Raise SyncDeferred when nothing answers at ``url``'s host and port (fast, no retries)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as e:
        raise SyncDeferred(f"cannot reach {parts.scheme}://{parts.netloc} ({e.strerror or e})") from None


def is_network_error(error: BaseException) -> bool:
    """A connection failure or timeout (possibly wrapped by a client library)."""
    import requests

    if isinstance(error, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout)):
        return True
    text = str(error)
    return any(s in text for s in ("Max retries exceeded", "Connection refused", "Failed to establish",
                                   "Connection aborted", "timed out", "Read timed out"))


def validate_experiment_id(experiment: str) -> str:
    if not experiment or not experiment.strip():
        raise SyncError(f"--id: empty; valid: {', '.join(ID_CHOICES)}, or an existing experiment's id")
    return experiment.strip()
