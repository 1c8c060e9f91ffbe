"""``expflow sync``: upload save-packages to a tracking server (SwanLab or MLflow).

The package's own records are what gets uploaded; the sync is idempotent and incremental
(state per package and destination, :mod:`expflow.sync.state`), corrects the server after a
``continue`` rolled steps back, never modifies a package's records or tracker logs, and
never lets one bad package stop the others. No network or no credentials: the package is
*deferred* (one line, not a failure); the next sync catches up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from expflow.errors import ExpflowError, SyncDeferred, SyncError
from expflow.sync.base import (  # noqa: F401  (the package's names)
    ID_CHOICES,
    TARGETS,
    SyncResult,
    Target,
    check_reachable,
    is_network_error,
)


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


def validate_experiment_id(experiment: str) -> str:
    if not experiment or not experiment.strip():
        raise SyncError(f"--id: empty; valid: {', '.join(ID_CHOICES)}, or an existing experiment's id")
    return experiment.strip()
