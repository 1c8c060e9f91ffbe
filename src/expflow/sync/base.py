"""What the sync targets share: the result of one package's sync, the target protocol, the
experiment-id choices and the network checks. A base of :mod:`expflow.sync` and of each
target module (:mod:`expflow.sync.swanlab`, :mod:`expflow.sync.mlflow`), which import it
rather than the package that loads them."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from expflow.errors import SyncDeferred

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
