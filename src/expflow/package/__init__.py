"""The save-package, read and written through this one module.

The names below are imported on first use (PEP 562), so that a light submodule such as
``expflow.package.status`` can be imported without OmegaConf and the rest: ``expflow run``
leases its GPUs before it pays for those imports.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on `expflow run`'s way to its lease
if TYPE_CHECKING:
    from typing import Any

    from expflow.package.checkpoints import CheckpointInfo, CheckpointStore, RetentionPolicy
    from expflow.package.codestore import CodeFile, CodeStore
    from expflow.package.package import FORMAT, SavePackage, utc_now
    from expflow.package.records import RecordWriter, effective_metrics, last_values, scan_records
    from expflow.package.status import Status

_HOME = {
    "CheckpointInfo": "checkpoints",
    "CheckpointStore": "checkpoints",
    "RetentionPolicy": "checkpoints",
    "CodeFile": "codestore",
    "CodeStore": "codestore",
    "FORMAT": "package",
    "SavePackage": "package",
    "utc_now": "package",
    "RecordWriter": "records",
    "effective_metrics": "records",
    "last_values": "records",
    "scan_records": "records",
    "Status": "status",
}

__all__ = [
    "CheckpointInfo",
    "CheckpointStore",
    "CodeFile",
    "CodeStore",
    "FORMAT",
    "RecordWriter",
    "RetentionPolicy",
    "SavePackage",
    "Status",
    "effective_metrics",
    "last_values",
    "scan_records",
    "utc_now",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
