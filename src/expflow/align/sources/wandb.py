"""W&B sources: an offline run directory, or a cloud run path.

Offline: the ``run-<id>.wandb`` file, read locally. ``wandb.sdk.internal.datastore`` is
gone in wandb 0.31, so the file's framing is read here: a 7-byte header (``":W&B"``,
``0xBEE1``, version 0), then LevelDB log blocks of 32 KiB whose chunks carry a CRC-32
seeded with the chunk type; payloads are ``wandb_internal_pb2.Record``. ``history``
records are rows (``_step`` is the row); ``metric`` records are ``define_metric`` step
groups. A bad checksum or a torn chunk is an error naming the file and byte.

Cloud (seed 002): ``wandb.Api().run(run_path)``, each metric fetched on its own with
``scan_history(keys=[_step, step key, metric])`` in a thread pool. One merged history
query would be sampled and can drop points (wandb#5391).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
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
    merge_runs,
    require_path,
    some,
)
from expflow.tracking.secrets import find_credential

HEADER = struct.Struct("<4sHB")
HEADER_IDENT, HEADER_MAGIC, HEADER_VERSION = b":W&B", 0xBEE1, 0
CHUNK = struct.Struct("<IHB")  # crc32, length, type
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (FULL, FIRST, MIDDLE, LAST)}


def find_run_files(path: Path) -> list[Path]:
    """The ``.wandb`` files of ``path``: the file, a run directory, or a ``wandb/`` directory
    (or its parent) holding one run or several (a resumed run, one run per process)."""
    p = require_path(path)
    if p.is_file():
        return [p]
    found = sorted(p.glob("*.wandb"))
    if not found:
        found = sorted(q for q in p.glob("*run-*/*.wandb") if "latest-run" not in q.parts)
    if not found:
        found = sorted(q for q in p.glob("wandb/*run-*/*.wandb") if "latest-run" not in q.parts)
    return some(found, p, "W&B run (.wandb file)")


def find_run_file(path: Path) -> Path:
    """The first ``.wandb`` file of ``path`` (in name, i.e. start-time, order)."""
    return find_run_files(path)[0]


def iter_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, payload) of every record of a W&B record file."""
    data = path.read_bytes()
    if len(data) < HEADER.size:
        raise SourceError(f"{path}: truncated W&B file (no header)")
    ident, magic, version = HEADER.unpack_from(data)
    if ident != HEADER_IDENT or magic != HEADER_MAGIC:
        raise SourceError(f"{path}: not a W&B record file (bad header)")
    if version != HEADER_VERSION:
        raise SourceError(f"{path}: W&B record file version {version}; this reader knows {HEADER_VERSION}")
    pos, end = HEADER.size, len(data)
    parts: list[bytes] = []
    start = pos
    while pos < end:
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # block trailer: zero padding
            pos += left
            continue
        if end - pos < CHUNK.size:
            raise SourceError(f"{path}: truncated at byte {pos} (incomplete chunk header)")
        crc, length, ctype = CHUNK.unpack_from(data, pos)
        body = data[pos + CHUNK.size : pos + CHUNK.size + length]
        if len(body) < length:
            raise SourceError(f"{path}: truncated at byte {pos} (chunk of {length} bytes, {len(body)} present)")
        if ctype not in _TYPE_CRC or zlib.crc32(body, _TYPE_CRC[ctype]) != crc:
            raise SourceError(f"{path}: corrupt record at byte {pos} (checksum mismatch)")
        if ctype in (FULL, FIRST):
            if parts:
                raise SourceError(f"{path}: corrupt record at byte {start} (record never finished)")
            start = pos
        elif not parts:
            raise SourceError(f"{path}: corrupt record at byte {pos} (continuation without a start)")
        parts.append(body)
        pos += CHUNK.size + length
        if ctype in (FULL, LAST):
            yield start, b"".join(parts)
            parts = []
    if parts:
        raise SourceError(f"{path}: truncated at byte {start} (the last record is incomplete)")


def _media_keys(items: Any) -> set[str]:
    """Top-level keys of a history row that hold a media or other typed object (an image,
    a table, a histogram): W&B stores them as nested keys, one of them ``_type``."""
    return {item.nested_key[0] for item in items if len(item.nested_key) > 1 and item.nested_key[-1] == "_type"}


def _number(item: Any) -> float | None:
    """A history item's value if it is a number (W&B writes value_json; newer SDKs may
    write the typed fields)."""
    kind = item.WhichOneof("value")
    if kind == "number":
        return item.number
    if kind == "integer":
        return float(item.integer)
    if kind is not None:
        return None
    text = item.value_json
    try:
        return float(text)  # fast path: plain numbers, NaN, Infinity
    except ValueError:
        pass
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # strings, media, histograms
    return float(value)


def read_run_file(path: Path) -> RawRun:
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    buf = PointBuffer()
    step_keys: dict[str, str] = {}
    info: dict[str, Any] = {"file": str(path)}
    rec = pb.Record()
    config: dict[str, Any] = {}
    next_row = 0
    for offset, payload in iter_records(path):
        try:
            rec.ParseFromString(payload)
        except DecodeError:
            raise SourceError(f"{path}: corrupt record at byte {offset} (not a W&B record)") from None
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row: int | None = None
            values: list[tuple[str, float]] = []
            media = _media_keys(rec.history.item)
            for item in rec.history.item:
                if media and len(item.nested_key) > 1 and item.nested_key[0] in media:
                    continue  # an image's width, height, size...: not metrics
                name = item.key or ".".join(item.nested_key)
                if name == "_step":
                    try:
                        row = int(float(item.value_json))
                    except ValueError:
                        pass
                    continue
                if name.startswith("_"):
                    continue  # _runtime, _timestamp, ...
                value = _number(item)
                if value is not None:
                    values.append((name, value))
            if row is None:
                row = rec.history.step.num if rec.history.HasField("step") else next_row
            next_row = row + 1
            for name, value in values:
                buf.add(name, row, value)
        elif kind == "metric":
            m = rec.metric
            if m.step_metric:
                step_keys[m.name or m.glob_name] = m.step_metric
        elif kind == "run":
            info.update(name=rec.run.display_name, id=rec.run.run_id, project=rec.run.project,
                        start=rec.run.start_time.seconds + rec.run.start_time.nanos / 1e9)
            _config(rec.run.config.update, config)
        elif kind == "config":
            _config(rec.config.update, config)
    if config:
        info["config"] = config
    return RawRun(buf.frame(), step_keys, info)


def _config(items: Any, into: dict[str, Any]) -> None:
    """The run config's scalar top-level values (e.g. SLIME's ``num_steps_per_rollout``)."""
    for item in items:
        try:
            value = json.loads(item.value_json)
        except ValueError:
            continue
        if isinstance(value, dict) and set(value) <= {"value", "desc"} and "value" in value:
            value = value["value"]
        if isinstance(value, (bool, int, float, str)) and item.key:
            into[item.key] = value


def read_run_files(files: list[Path]) -> RawRun:
    """Several ``.wandb`` files as one run, in start-time order. Files of the same run id
    (``resume="allow"`` in another process) continue it: W&B restarts ``_step`` at 0 in an
    offline resumed file, and its rows are shifted after the previous file's last row, as
    the synced run shows them. Files of different runs (one run per process) are merged by
    their step keys (see ``steps.align_steps`` for a repeated step)."""
    runs = sorted((read_run_file(f) for f in files), key=lambda r: (float(r.info.get("start") or 0.0), r.info["file"]))
    last: dict[str, int] = {}  # run id -> the last row so far
    for run in runs:
        rid = run.info.get("id")
        if rid in last and len(run.points):
            run.points["row"] += last[rid] + 1
        if len(run.points):
            last[rid] = int(run.points["row"].max())
    return merge_runs(runs)


class WandbOfflineSource(FileSource):
    kind = "wandb-offline"
    find_files = staticmethod(find_run_files)
    read_file = staticmethod(read_run_file)

    def parse(self, files: list[Path]) -> RawRun:
        return read_run_files(files)


class WandbCloudSource(CloudSource):
    kind = "wandb"
    required = ("run_path",)

    def cloud_path(self) -> str:
        return self.spec.run_path

    def _run(self) -> Any:
        import wandb

        cred = find_credential("wandb")  # else wandb's own login (netrc), as seed 002
        overrides = {"base_url": self.spec.host} if self.spec.host else None
        api = self.call(lambda: wandb.Api(overrides=overrides, api_key=cred.value if cred else None))
        return self.call(api.run, self.spec.run_path)

    def fingerprint(self) -> str:
        run = self._run()
        # Cloud id + last update.
        return digest(self.spec.run_path, *self.call(lambda: (run.state, getattr(run, "heartbeat_at", None), run.lastHistoryStep)))

    def read(self) -> RawRun:
        from expflow.align.steps import assign_groups

        run = self._run()
        keys = sorted(k for k in self.call(lambda: (run.history_keys or {}).get("keys", {})) if not k.startswith("_"))
        # The cloud run does not tell its define_metric groups: the seed's groups apply
        # (and the spec's step_groups, at alignment), when their step keys were logged.
        groups = assign_groups(keys)

        def fetch(metric: str) -> list[dict[str, Any]]:
            key = groups.get(metric)
            wanted = ["_step", metric] + ([key] if key and key != metric else [])
            return list(run.scan_history(keys=wanted, page_size=10_000))

        buf = PointBuffer()
        key_rows: set[tuple[str, int]] = set()  # a step key comes back with every metric of its group
        for metric, rows in self.fetch_each(keys, fetch):
            key = groups.get(metric)
            for row in rows:
                step = row.get("_step")
                if step is None:
                    continue
                if is_number(row.get(metric)):
                    buf.add(metric, int(step), float(row[metric]))
                if key and key != metric and is_number(row.get(key)) and (key, int(step)) not in key_rows:
                    key_rows.add((key, int(step)))
                    buf.add(key, int(step), float(row[key]))
        step_keys = {k: g for k, g in groups.items() if g is not None}
        return RawRun(buf.frame(), step_keys, {"run_path": self.spec.run_path})
