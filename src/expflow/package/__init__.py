"""The save-package, read and written through this one module."""

from expflow.package.checkpoints import CheckpointInfo, CheckpointStore, RetentionPolicy
from expflow.package.codestore import CodeFile, CodeStore
from expflow.package.package import FORMAT, SavePackage, utc_now
from expflow.package.records import RecordWriter, effective_metrics, last_values, scan_records
from expflow.package.status import Status

__all__ = [
    "FORMAT",
    "CheckpointInfo",
    "CheckpointStore",
    "CodeFile",
    "CodeStore",
    "RecordWriter",
    "RetentionPolicy",
    "SavePackage",
    "Status",
    "effective_metrics",
    "last_values",
    "scan_records",
    "utc_now",
]
