"""Everything expflow uses of swanlab's internals (pinned: swanlab==0.10.3), in one module:
reading and writing SwanLab's offline run files, and replaying one through swanlab's own
sync machinery (login, project, experiment, profile, columns, metrics, state).

The run file is SwanLab's ``.swanlab`` log: a header, LevelDB-framed chunks with CRCs,
protobuf ``Record`` payloads (start, save, column, scalar, finish, ...).
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expflow.errors import SyncDeferred, SyncError

START_FIELDS = ("project", "workspace", "name", "description", "group", "job_type", "id")


class RecordFileError(Exception):
    """A run file that cannot be read as SwanLab 0.10 records: its message says what and
    where (the byte), without the path (the caller names the file)."""


class RecordFile:
    """The records of one ``.swanlab`` run file, in order: ``for record in RecordFile(path)``.

    One ``Record`` object is reused for every record (read each before the next). A
    damaged header, a corrupt or truncated chunk, or a payload that is not a record raises
    :class:`RecordFileError`; with ``partial`` (the file is still being written: swanlab
    buffers its writes, so the end may be torn) the iteration stops there instead and
    ``torn`` holds the byte it stopped at.
    """

    def __init__(self, path: str | Path, *, partial: bool = False):
        self.path = Path(path)
        self.partial = partial
        self.torn: int | None = None

    def __iter__(self) -> Iterator[Any]:
        import struct

        from google.protobuf.message import DecodeError
        from swanlab.exceptions import DataStoreError
        from swanlab.proto.swanlab.record.v1.record_pb2 import Record
        from swanlab.sdk.internal.core_python.store import DataStoreReader

        bad = (DataStoreError, AssertionError, struct.error)
        size = self.path.stat().st_size
        reader = DataStoreReader()
        try:
            reader.open(self.path)
        except bad as e:
            raise RecordFileError(f"not a readable SwanLab 0.10 record file ({_reason(e)})") from None
        record = Record()
        try:
            while True:
                before = reader._index  # the reader's byte position (internal, pinned version)
                try:
                    data = reader.scan()
                except bad as e:
                    if before >= size:  # padding at a clean end of file
                        return
                    if self.partial:  # a write in progress: what came before it
                        self.torn = before
                        return
                    raise RecordFileError(f"corrupt record at byte {before} ({_reason(e)})") from None
                if data is None:
                    if reader._index != before:
                        if not self.partial:
                            raise RecordFileError(f"truncated at byte {before} (the last record is incomplete)")
                        self.torn = before
                    return
                try:
                    record.ParseFromString(data)
                except DecodeError:
                    if self.partial:
                        self.torn = before
                        return
                    raise RecordFileError(f"corrupt record at byte {before} (not a SwanLab record)") from None
                yield record
        finally:
            with contextlib.suppress(Exception):
                reader.close()


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclass
class OfflineRun:
    """One SwanLab run directory (``run-<time>-<id>/``) as far as expflow needs it."""

    dir: Path
    start: dict[str, Any]  # project, workspace, name, description, tags, group, job_type, id
    files: dict[str, Path] = field(default_factory=dict)  # config / metadata / requirements


def read_offline_runs(log_dir: str | Path) -> list[OfflineRun]:
    """The readable SwanLab runs under ``log_dir``, oldest first (unreadable ones are left out)."""
    runs = []
    for run_file in sorted(Path(log_dir).glob("run-*/run-*.swanlab")):
        try:
            record = next(iter(RecordFile(run_file)), None)
        except (RecordFileError, OSError):  # header of another version, corrupt first chunk: not a run we can use
            continue
        if record is None or not record.HasField("start"):
            continue
        start = {f: getattr(record.start, f) for f in START_FIELDS if getattr(record.start, f)}
        start["tags"] = list(record.start.tags)
        files_dir = run_file.parent / "files"
        files = {name: files_dir / fname for name, fname in (
            ("config", "config.yaml"), ("metadata", "swanlab-metadata.json"), ("requirements", "requirements.txt"))
            if (files_dir / fname).is_file()}
        runs.append(OfflineRun(run_file.parent, start, files))
    return runs


def swanlab_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config in SwanLab's own ``files/config.yaml`` layout: ``{key: {desc, sort, value}}``."""
    return {k: {"desc": "", "sort": i, "value": v} for i, (k, v) in enumerate(config.items())}


def write_run(run_dir: Path, start: dict[str, Any], saves: dict[str, Path],
              scalars: Iterable[tuple[str, int, float, float]], finish: str | None, *,
              columns: bool = False) -> Path:
    """Write a SwanLab run file holding ``start``, ``saves`` (config / metadata /
    requirements files), one scalar per (key, step, value, time), and a finish record
    (``FINISHED`` / ``CRASHED``) if ``finish``; returns its path. ``columns``: a column
    record before each key's first scalar, as ``run.log`` writes it (swanlab's sync makes
    the columns itself when they are absent)."""
    import time

    from google.protobuf.timestamp_pb2 import Timestamp
    from swanlab.proto.swanlab.metric.column.v1.column_pb2 import (
        ColumnClass,
        ColumnRecord,
        ColumnType,
        SectionType,
    )
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.proto.swanlab.run.v1.run_pb2 import FinishRecord, RunState, StartRecord
    from swanlab.proto.swanlab.save.v1.save_pb2 import SaveRecord, SaveType
    from swanlab.sdk.internal.core_python.store import DataStoreWriter

    def stamp(t: float) -> Timestamp:
        ts = Timestamp()
        ts.FromNanoseconds(int(t * 1e9))
        return ts

    now = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"run-{start['id']}.swanlab"
    writer = DataStoreWriter()
    writer.open(path)
    try:
        fields = {k: v for k, v in start.items() if k in START_FIELDS and v}
        writer.write(Record(num=-1, timestamp=stamp(now), start=StartRecord(
            **fields, tags=list(start.get("tags") or ()), started_at=stamp(now))).SerializeToString())
        save_types = {"config": SaveType.SAVE_TYPE_CONFIG, "metadata": SaveType.SAVE_TYPE_METADATA,
                      "requirements": SaveType.SAVE_TYPE_REQUIREMENTS}
        for i, (name, source) in enumerate(saves.items()):
            save = SaveRecord(name=name, source_path=str(source.resolve()), type=save_types[name])
            writer.write(Record(num=-3 - i, timestamp=stamp(now), save=save).SerializeToString())
        # One record, its fields set in place for each scalar (a new message per point costs
        # more than the writing itself).
        record, column = Record(), Record()
        scalar = record.scalar
        scalar.type = ColumnType.COLUMN_TYPE_SCALAR
        seen: set[str] = set()
        num, last_t = 0, None
        for key, step, value, t in scalars:
            if columns and key not in seen:
                seen.add(key)
                num += 1
                parts = key.split("/")  # swanlab's default section rule: the first part
                column.Clear()
                column.num = num
                column.timestamp.CopyFrom(stamp(t))
                column.column.CopyFrom(ColumnRecord(
                    column_class=ColumnClass.COLUMN_CLASS_CUSTOM, column_type=ColumnType.COLUMN_TYPE_SCALAR,
                    column_key=key, section_name=parts[0] if len(parts) > 1 else "",
                    section_type=SectionType.SECTION_TYPE_PUBLIC))
                writer.write(column.SerializeToString())
            num += 1
            if t != last_t:
                ts, last_t = stamp(t), t
                record.timestamp.CopyFrom(ts)
                scalar.timestamp.CopyFrom(ts)
            record.num = num
            scalar.key = key
            scalar.step = int(step)
            scalar.value.number = float(value)
            writer.write(record.SerializeToString())
        if finish:
            state = RunState.RUN_STATE_FINISHED if finish == "FINISHED" else RunState.RUN_STATE_CRASHED
            finished = Record(num=-2, timestamp=stamp(now), finish=FinishRecord(state=state, finished_at=stamp(now)))
            writer.write(finished.SerializeToString())
    finally:
        writer.close()
    return path


def write_offline_run(log_dir: Path, start: dict[str, Any], config: dict[str, Any],
                      scalars: Iterable[tuple[str, int, float, float]]) -> Path:
    """A finished run in ``log_dir`` as ``swanlab.init(mode="offline")``, ``run.log`` and
    ``swanlab.finish()`` leave it: ``run-<time>-<id>/`` with the run file (start, saves,
    columns, scalars, finish), ``files/config.yaml`` and ``files/swanlab-metadata.json``
    (no environment probe), and ``media/``; ``swanlab sync <dir>`` uploads it. Keys must be
    swanlab's cleaned keys (:func:`clean_key`). Returns the run directory."""
    import json
    import time
    from datetime import datetime

    import swanlab
    import yaml

    run_dir = log_dir / f"run-{datetime.fromtimestamp(time.time()).strftime('%Y%m%d_%H%M%S')}-{start['id']}"
    files = run_dir / "files"
    files.mkdir(parents=True)
    (run_dir / "media").mkdir()
    if not (log_dir / ".gitignore").exists():
        (log_dir / ".gitignore").write_text("*")  # as swanlab marks its log directory
    (files / "config.yaml").write_text(yaml.safe_dump(swanlab_config(config), sort_keys=False, allow_unicode=True))
    metadata = {"_version": 2, "hardware": None, "runtime": None, "git": None,
                "swanlab": {"version": getattr(swanlab, "__version__", None), "run_dir": str(run_dir)}}
    (files / "swanlab-metadata.json").write_text(json.dumps(metadata))
    write_run(run_dir, start, {"config": files / "config.yaml", "metadata": files / "swanlab-metadata.json"},
              scalars, "FINISHED", columns=True)
    return run_dir


def clean_key(key: str) -> str | None:
    """The key ``run.log`` records for metric ``key`` (swanlab's own cleaning; None: it drops
    the key)."""
    from swanlab.sdk.internal.run import fmt

    cleaned = fmt.flatten_dict({key: 0.0})
    return next(iter(cleaned)) if cleaned else None


def stored_api_key(api_host: str) -> str | None:
    """The key of a `swanlab login` for ``api_host`` (swanlab's own .netrc), if any."""
    try:
        from swanlab.sdk.internal.settings import Settings

        settings = Settings.model_validate({"api_host": api_host})
    except Exception:
        return None
    return settings.api_key


@contextlib.contextmanager
def _swanlab_output() -> Iterator[io.StringIO]:
    """Keep swanlab's console chatter (banners, progress) out of expflow's one-line output."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer


@contextlib.contextmanager
def _terminal_failures() -> Iterator[list[str]]:
    """Collect upload failures swanlab gives up on (a 4xx answer: the records are dropped,
    yet the sync reports success); retried failures are not counted."""
    from swanlab.sdk.internal.core_python.transport.dispatch import Dispatch

    failures: list[str] = []
    original = Dispatch.__call__

    def dispatch(self: Any, records: Any) -> Any:
        result = original(self, records)
        retried = {id(r) for r in result.remaining_records}
        for failure in result.failures:
            if any(id(r) not in retried for r in failure.records):
                failures.append(f"{len(failure.records)} record(s): {failure.message}")
        return result

    Dispatch.__call__ = dispatch  # type: ignore[method-assign]
    try:
        yield failures
    finally:
        Dispatch.__call__ = original  # type: ignore[method-assign]


def upload_run(run_dir: Path, *, api_key: str, api_host: str, web_host: str | None, workspace: str | None,
               project: str, experiment_id: str, must_exist: bool, replay: bool, timeout: float) -> str:
    """Replay ``run_dir`` into experiment ``experiment_id`` (created unless ``must_exist``)
    with swanlab's sync; ``replay`` lets it overwrite steps the experiment already holds.
    Returns the experiment's web URL. Raises SyncError, or SyncDeferred when the upload
    could not finish (the next sync resends; SwanLab skips what it already holds)."""
    from swanlab.exceptions import ApiError, AuthenticationError
    from swanlab.proto.swanlab.grpc.core.v1.sync_pb2 import DeliverSyncStartRequest, SyncRange
    from swanlab.sdk.cmd.login import login_raw
    from swanlab.sdk.internal import impl
    from swanlab.sdk.internal.core_python import client
    from swanlab.sdk.internal.settings import Settings

    hosts = {"api_host": api_host, **({"web_host": web_host} if web_host else {})}
    settings = Settings.model_validate({
        "api_key": api_key, **hosts, "project": {k: v for k, v in (("workspace", workspace), ("name", project)) if v},
        "run": {"id": experiment_id},
    })
    with _swanlab_output() as output, _terminal_failures() as failures:
        if client.exists():
            client.reset()
        try:
            login_raw(api_key=api_key, host=settings.api_host, print_welcome=False, animation=False)
        except AuthenticationError:
            raise SyncError(f"SwanLab at {api_host} rejected the API key (or did not answer the login)") from None
        if must_exist:
            owner = workspace or client.username()
            try:
                client.get(f"/project/{owner}/{project}/runs/{experiment_id}", log_error=False)
            except ApiError as e:
                if e.response.status_code == 404:
                    raise SyncError(f"--id {experiment_id}: no such experiment in {owner}/{project}") from None
                raise
        core = impl.create_core_sync()
        request = DeliverSyncStartRequest(
            core_settings=settings.to_core_proto(experiment_id, run_dir), workspace=workspace, project=project,
            id=experiment_id, range=SyncRange(start_step=0) if replay else None)
        started = core.deliver_sync_start(request)
        if not started.success:
            raise SyncError(f"swanlab sync could not read the staged run: {started.message}")
        flushed = core.deliver_sync_flush()
        if not flushed.success:
            raise SyncDeferred(f"SwanLab at {api_host} did not accept the experiment ({flushed.message})")
        done: list[Any] = []
        thread = threading.Thread(target=lambda: done.append(core.confirm_sync_finish()), daemon=True,
                                  name="expflow-swanlab-sync")
        thread.start()
        thread.join(timeout)
        if not done:
            raise SyncDeferred(f"the upload to {api_host} did not finish in {timeout:.0f}s")
        if not done[0].success:
            raise SyncDeferred(f"the upload to {api_host} did not finish ({done[0].message})")
        if failures:
            raise SyncError(f"SwanLab at {api_host} refused {failures[0]}" +
                            (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
    del output
    return f"{settings.web_host}{flushed.path}" if flushed.path else settings.web_host


@contextlib.contextmanager
def scalar_key_cache() -> Iterator[None]:
    """Within it, ``run.log`` of a flat dict of floats validates each metric key once, not at
    every step. swanlab 0.10's ``run.log`` flattens and validates every key of every call
    (pydantic, typing checks: ~2.5 ms for 60 keys, most of a long experiment's writing).
    Nested dicts, other values and the first sight of a key take swanlab's own path
    (``fmt.flatten_dict``), so a key is cleaned, dropped or warned about exactly as swanlab
    does; only the repeat is skipped. Restored on exit (this process only)."""
    try:
        from swanlab.sdk.internal.run import fmt
    except ImportError:  # another layout (not the pinned version): swanlab as it is
        yield
        return
    original = fmt.flatten_dict
    safe_keys: dict[str, str | None] = {}  # key -> swanlab's cleaned key (None: dropped)

    def flatten_dict(d: Any, parent_key: str = "", parent_dict: Any = None) -> dict[str, Any]:
        if parent_key or parent_dict is not None or type(d) is not dict:
            return original(d, parent_key, parent_dict)
        out: dict[str, Any] = {}
        for k, v in d.items():
            if type(k) is not str or type(v) is not float:
                return original(d, parent_key, parent_dict)
            if k not in safe_keys:
                cleaned = original({k: v})
                safe_keys[k] = next(iter(cleaned)) if cleaned else None
            safe = safe_keys[k]
            if safe is not None:
                out[safe] = v
        return out

    fmt.flatten_dict = flatten_dict
    try:
        yield
    finally:
        fmt.flatten_dict = original
