"""TensorBoard event files (ROLL's ``torch.utils.tensorboard`` writer, or any other).

Every point is read: ``EventAccumulator``'s default keeps a 10,000-point reservoir sample,
and even with ``size_guidance`` 0 it stops silently at a corrupt or torn record. So the
files are read here with TensorBoard's own record reader, which checks every CRC and
raises on a torn record, and ``event_pb2.Event``. Scalars come from ``simple_value`` or
from one-element tensor summaries (TF2 writers); values are float32 as logged.

Like ``EventAccumulator`` (``purge_orphaned_data``), a step that goes backwards (a run
restarted from a checkpoint) drops the points the earlier attempt logged at or after it.
Several files in one directory are read in name (time) order; several directories with
event files each prefix their metrics with the directory's relative path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from expflow.align.sources import (
    FileSource,
    PointBuffer,
    RawRun,
    SourceError,
    reason,
    require_path,
)

EVENT_GLOB = "*tfevents*"


def find_event_files(path: Path) -> list[Path]:
    p = require_path(path)
    if p.is_file():
        return [p]
    found = sorted(f for f in p.rglob(EVENT_GLOB) if f.is_file())
    if not found:
        raise SourceError(f"{p}: no TensorBoard event files (events.out.tfevents.*)")
    return found


def _scalar(value: object) -> float | None:
    from tensorboard.util import tensor_util

    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    if kind == "simple_value":
        return float(value.simple_value)  # type: ignore[attr-defined]
    if kind == "tensor":
        try:
            arr = tensor_util.make_ndarray(value.tensor)  # type: ignore[attr-defined]
        except Exception:
            return None
        if arr.size == 1 and arr.dtype.kind in "fiu":
            return float(arr.reshape(()))
    return None


def read_event_files(files: list[Path], root: Path) -> RawRun:
    dirs = sorted({f.parent for f in files})
    buf = PointBuffer()
    for d in dirs:
        prefix = ""
        if len(dirs) > 1 and root.is_dir() and d != root:
            prefix = f"{d.relative_to(root).as_posix()}/"
        metrics, steps, values = _read_directory([f for f in files if f.parent == d], prefix)
        buf.metrics += metrics
        buf.rows += steps
        buf.values += values
    return RawRun(buf.frame(), {}, {"files": [str(f) for f in files]})


def _read_directory(files: list[Path], prefix: str) -> tuple[list[str], list[int], list[float]]:
    """One TensorBoard run: its files in order, restarts purged."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow

    buf = PointBuffer()
    purges: list[tuple[int, int]] = []  # (points logged before the restart, its step)
    latest = None
    event = event_pb2.Event()
    for f in files:
        try:
            reader = pywrap_tensorflow.PyRecordReader_New(str(f))
        except Exception as e:
            raise SourceError(f"{f}: cannot open ({reason(e)})") from None
        while True:
            try:
                reader.GetNext()
            except errors.OutOfRangeError:
                break
            except errors.DataLossError as e:
                raise SourceError(f"{f}: corrupt or truncated event file ({' '.join(str(e).split())})") from None
            try:
                event.ParseFromString(reader.record())
            except Exception:
                raise SourceError(f"{f}: corrupt event record (not an Event)") from None
            if not event.HasField("summary"):
                continue
            step = int(event.step)
            if latest is not None and step < latest:
                purges.append((len(buf.rows), step))
            latest = step
            for value in event.summary.value:
                v = _scalar(value)
                if v is not None:
                    buf.add(prefix + value.tag, step, v)
    if not purges:
        return buf.metrics, buf.rows, buf.values
    keep = _kept(np.asarray(buf.rows, dtype=np.int64), purges)
    idx = np.flatnonzero(keep)
    return [buf.metrics[i] for i in idx], [buf.rows[i] for i in idx], [buf.values[i] for i in idx]


def _kept(steps: np.ndarray, purges: list[tuple[int, int]]) -> np.ndarray:
    """A point survives unless a later restart went back to a step at or before its own."""
    limit = np.full(len(steps) + 1, np.iinfo(np.int64).max)
    for index, step in purges:
        limit[index] = min(limit[index], step)
    # The smallest restart step after each point (restarts at index i apply to points < i).
    after = np.minimum.accumulate(limit[::-1])[::-1][1:]
    return steps < after


class TensorBoardSource(FileSource):
    kind = "tensorboard"

    def files(self) -> list[Path]:
        return find_event_files(Path(self.spec.path))

    def parse(self, files: list[Path]) -> RawRun:
        return read_event_files(files, Path(self.spec.path))
