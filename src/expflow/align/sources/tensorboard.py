"""TensorBoard event files (ROLL's ``torch.utils.tensorboard`` writer, or any other).

Every point is read: ``EventAccumulator``'s default keeps a 10,000-point reservoir sample,
and even with ``size_guidance`` 0 it stops silently at a corrupt or torn record. So the
files are read here with TensorBoard's own record reader, which checks every CRC and
raises on a torn record, and ``event_pb2.Event``. Scalars come from ``simple_value`` or
from one-element tensor summaries (TF2 writers); values are float32 as logged.

Several files in one directory (several writers: SLIME opens one ``SummaryWriter`` per
process; or a restarted run) are read in name (start time) order and every tag of every
file is kept, as ``EventAccumulator`` keeps them. Each file is a segment of the merge
(``sources.merge_runs``): at a repeated step of a tag the later file's point wins, and a
later file that goes back to a step an earlier one reached (a run restarted from a
checkpoint) replaces that tag's earlier points from that step on. Several directories
with event files each prefix their metrics with the directory's relative path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from expflow.align.sources.base import (
    FileSource,
    PointBuffer,
    RawRun,
    SourceError,
    merge_runs,
    reason,
    require_path,
)

if TYPE_CHECKING:
    import pandas as pd

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
    """Every scalar of every file; each file (one writer) is a segment of the merge, in name
    order, which is the writer's start time (``events.out.tfevents.<time>.<host>...``)."""
    dirs = sorted({f.parent for f in files})
    runs: list[RawRun] = []
    for d in dirs:
        prefix = ""
        if len(dirs) > 1 and root.is_dir() and d != root:
            prefix = f"{d.relative_to(root).as_posix()}/"
        for f in sorted(x for x in files if x.parent == d):
            runs.append(RawRun(_read_file(f, prefix), {}, {"file": str(f)}))
    merged = merge_runs(runs)
    merged.info.setdefault("files", [str(f) for f in files])
    merged.info.pop("file", None)
    return merged


def _read_file(f: Path, prefix: str) -> pd.DataFrame:
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow

    buf = PointBuffer()
    event = event_pb2.Event()
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
        for value in event.summary.value:
            v = _scalar(value)
            if v is not None:
                buf.add(prefix + value.tag, step, v)
    return buf.frame()


class TensorBoardSource(FileSource):
    kind = "tensorboard"

    def files(self) -> list[Path]:
        return find_event_files(Path(self.spec.path))

    def parse(self, files: list[Path]) -> RawRun:
        return read_event_files(files, Path(self.spec.path))
