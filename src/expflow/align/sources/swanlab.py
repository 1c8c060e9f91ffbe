"""SwanLab sources: an offline run directory, or a cloud experiment.

Offline: the ``run-<id>.swanlab`` record file, read with SwanLab's own reader
(``DataStoreReader`` + ``record_pb2.Record``, internal API of the pinned swanlab 0.10.3,
used only here). Scalars carry the run's global step (the ``row``); ``define_metric(...,
x_axis=K)`` is recorded on column records and becomes a declared step key. The reader
stops quietly at a bad record; here a bad or incomplete record is an error naming the
file and byte, so a torn run is never taken for a complete one.

Cloud: ``swanlab.Api().run("user/project/id").metrics(keys, all=True)``: every point, not
the sampled default, per key in parallel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expflow.align.sources.base import (
    CloudSource,
    FileSource,
    PointBuffer,
    RawRun,
    SourceError,
    digest,
    is_number,
    require_path,
    some,
)
from expflow.tracking.secrets import find_credential


def find_record_files(path: Path) -> list[Path]:
    """The ``.swanlab`` files of ``path``: the file itself, a run directory, or a log
    directory holding one run or several."""
    p = require_path(path)
    if p.is_file():
        return [p]
    found = sorted(p.glob("*.swanlab")) or sorted(p.glob("run-*/*.swanlab"))
    return some(found, p, "SwanLab run (.swanlab file)")


def find_record_file(path: Path) -> Path:
    """The first ``.swanlab`` file of ``path`` (in name, i.e. start-time, order)."""
    return find_record_files(path)[0]


def read_record_file(path: Path, *, partial: bool = False) -> RawRun:
    """Every scalar of a record file. ``partial``: the file is still being written (swanlab
    buffers its writes, so the end may be a torn record): return the points before the first
    bad or incomplete record instead of failing, with its byte in ``info["torn"]`` (a reader of
    a finished run leaves it False)."""
    from expflow.sync.swanlab_sdk import RecordFile, RecordFileError

    records = RecordFile(path, partial=partial)
    buf = PointBuffer()
    x_axes: dict[str, str] = {}
    info: dict[str, Any] = {"file": str(path)}
    try:
        for rec in records:
            kind = rec.WhichOneof("record_type")
            if kind == "scalar":
                s = rec.scalar
                buf.add(s.key, s.step, s.value.number)
            elif kind == "column":
                col = rec.column
                if col.x_axis:
                    x_axes[col.column_key] = col.x_axis
            elif kind == "start":
                info.update(name=rec.start.name, id=rec.start.id, project=rec.start.project,
                            start=rec.start.started_at.seconds + rec.start.started_at.nanos / 1e9)
    except RecordFileError as e:
        raise SourceError(f"{path}: {e}") from None
    if records.torn is not None:
        info["torn"] = records.torn
    return RawRun(buf.frame(), x_axes, info)


class SwanLabOfflineSource(FileSource):
    kind = "swanlab-offline"
    find_files = staticmethod(find_record_files)
    read_file = staticmethod(read_record_file)


def _find_experiment(api: Any, ident: str) -> str:
    """``user/project/id`` of a bare experiment id: searched in the API user's projects."""
    if ident.count("/") != 0:
        raise SourceError(f"swanlab experiment {ident!r}: give id as 'user/project/id', or a bare id with project: 'user/project'")
    user = api.username
    user = user() if callable(user) else user
    for project in api.projects(user, all=True):
        for exp in api.runs(project.path):
            if getattr(exp, "run_id", None) == ident or getattr(exp, "id", None) == ident:
                return f"{project.path}/{ident}"
    raise SourceError(
        f"swanlab experiment {ident!r}: not found in the projects of {user!r}; "
        "give id as 'user/project/id', or set project: 'user/project'"
    )


class SwanLabCloudSource(CloudSource):
    kind = "swanlab"
    required = ("id",)
    optional = ("project", "host", "workers")

    def cloud_path(self) -> str:
        """``user/project/id``; a bare id (seed 002's ``exp_id``) with ``project`` unset is
        kept bare here and found in the user's projects when the run is opened."""
        ident = self.spec.id.strip("/")
        if ident.count("/") == 2:
            return ident
        if self.spec.project and self.spec.project.strip("/").count("/") == 1:
            return f"{self.spec.project.strip('/')}/{ident}"
        return ident

    def _experiment(self) -> Any:
        import swanlab

        cred = find_credential("swanlab")
        api = self.call(swanlab.Api, cred.value if cred else None, self.spec.host)
        path = self.cloud_path()
        if path.count("/") != 2:
            path = self.call(_find_experiment, api, path)
        return self.call(api.run, path)

    def fingerprint(self) -> str:
        exp = self._experiment()
        # Cloud id + last update: the state, when it finished, and each key's latest point.
        return digest(self.cloud_path(), *self.call(lambda: (exp.state, exp.finished_at, exp.summary())))

    def read(self) -> RawRun:
        exp = self._experiment()
        keys = sorted(self.call(exp.summary))

        def fetch(key: str) -> list[dict[str, Any]]:
            series = exp.metrics(keys=[key], all=True).get("list") or []  # all: not the 1,500-point sample
            return series[0].get("metrics", []) if series else []

        buf = PointBuffer()
        for key, points in self.fetch_each(keys, fetch):
            for p in points:
                value = p.get("value", p.get("data"))
                step = p.get("step", p.get("index"))
                if is_number(value) and step is not None:
                    buf.add(key, int(step), float(value))
        return RawRun(buf.frame(), {}, {"run_path": self.cloud_path()})
