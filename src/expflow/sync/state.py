"""Sync state: what of a package has reached one destination (a target + server +
project), so syncing again uploads only what is new, and nothing when nothing is.

One JSON file per package and destination, ``<pkg>/tracker/sync/<target>-<hash>.json``,
written atomically after every acknowledged upload step; a lock file keeps two syncs of
the same package and destination from interleaving. The package's records and tracker
logs are only ever read.

The *watermark* is a byte offset in ``metrics/records.log``: every record that counts
(after rollbacks) and starts before it is on the server. The records file is append-only,
so offsets are stable; ``tail`` (a hash of the bytes just before the watermark) detects a
file that was replaced rather than appended to.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from expflow.atomic import atomic_write_json
from expflow.errors import SyncError

TAIL_BYTES = 64


def tail_digest(path: str | os.PathLike[str], offset: int) -> str | None:
    """Hash of the up to 64 bytes before ``offset`` (None if the file is shorter)."""
    if offset <= 0:
        return ""
    try:
        with open(path, "rb") as f:
            start = max(0, offset - TAIL_BYTES)
            f.seek(start)
            data = f.read(offset - start)
    except OSError:
        return None
    if len(data) != offset - start:
        return None
    return hashlib.sha256(data).hexdigest()


# The sync state file's format; a state without the key is of format 1 (written before it).
SYNC_FORMAT = 1


@dataclass
class SyncState:
    target: str
    destination: str
    format: int = SYNC_FORMAT
    experiment: str | None = None  # SwanLab experiment id / MLflow run id
    generation: int = 0
    watermark: int = 0
    tail: str = ""
    max_step: int = -1  # the highest step uploaded: a rollback below it rewinds the server
    records: int = 0  # metric records uploaded to ``experiment``
    points: int = 0  # metric values uploaded to ``experiment``
    profile: bool = False  # config / params / metadata uploaded
    finished: str | None = None  # the package's final status, once reported
    artifacts: dict[str, str] = field(default_factory=dict)  # path in package -> sha256 uploaded
    replacing: str | None = None  # an older run still to delete once its replacement is complete
    updated: str | None = None
    path: Path | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def file_for(tracker_dir: str | os.PathLike[str], target: str, destination: str) -> Path:
        digest = hashlib.sha256(destination.encode()).hexdigest()[:12]
        return Path(tracker_dir) / "sync" / f"{target}-{digest}.json"

    @classmethod
    def load(cls, tracker_dir: str | os.PathLike[str], target: str, destination: str) -> SyncState:
        from expflow.errors import PackageError
        from expflow.package import shapes

        path = cls.file_for(tracker_dir, target, destination)
        try:
            data = shapes.read_json(path, shapes.schema_shape(cls), "sync state")
        except PackageError:
            data = None
        if isinstance(data, dict) and data.get("format", 1) != SYNC_FORMAT:
            # Another expflow's state: refused, never overwritten (that expflow still needs it).
            raise SyncError(f"{path}: sync state of format {data.get('format')!r}, this expflow reads "
                            f"{SYNC_FORMAT} (written by another version of expflow?)")
        state = None
        if data is not None:
            try:
                state = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "path"})
            except TypeError:  # a required key missing
                pass
        if state is None:
            # Absent, unreadable or of the wrong shape: start over. Nothing is lost: the
            # experiment is found again (--id auto) and the server drops what it already holds.
            state = cls(target=target, destination=destination)
        state.path = path
        if state.destination != destination:
            state = cls(target=target, destination=destination, path=path)
        return state

    @classmethod
    @contextlib.contextmanager
    def locked(cls, tracker_dir: str | os.PathLike[str], target: str, destination: str,
               timeout: float) -> Iterator[SyncState]:
        """The state, loaded and held under its lock file for one sync of the package."""
        from filelock import FileLock

        from expflow.paths import check_writable

        path = cls.file_for(tracker_dir, target, destination)
        check_writable(path.parent, what="sync state")  # a read-only package: one line, nothing sent
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path.with_suffix(".lock")), timeout=timeout):
            yield cls.load(tracker_dir, target, destination)

    def save(self) -> None:
        from expflow.package import utc_now

        assert self.path is not None
        self.updated = utc_now()
        atomic_write_json(self.path, {k: v for k, v in asdict(self).items() if k != "path"})

    def start_experiment(self, experiment: str, generation: int = 0) -> None:
        """Begin again with ``experiment``: nothing of the package is there yet (as far as we know)."""
        path, target, destination = self.path, self.target, self.destination
        self.__dict__.update(asdict(SyncState(target, destination)))
        self.path, self.experiment, self.generation = path, experiment, generation

    def matches(self, records_path: str | os.PathLike[str]) -> bool:
        """True when the records file still holds, up to the watermark, what was uploaded."""
        return self.watermark == 0 or tail_digest(records_path, self.watermark) == self.tail

    def advance(self, records_path: str | os.PathLike[str], watermark: int, records: int, points: int,
                max_step: int) -> None:
        self.watermark = watermark
        self.tail = tail_digest(records_path, watermark) or ""
        self.records += records
        self.points += points
        self.max_step = max(self.max_step, max_step)
