"""Append-only, checksummed metric records: the package's own source of truth.

One record a line: ``<crc32 as 8 hex digits> <json>\\n``; the CRC covers the JSON bytes.
``RecordWriter.log`` encodes a record and queues it for a background thread, which
appends whole lines with ``os.write`` on an ``O_APPEND`` descriptor, in order; once
``flush()`` returns (the record is *acknowledged*), it is in the file even if the process
is killed right after.

Kinds of record:
- ``metrics``: ``{"seq", "kind": "metrics", "step", "epoch", "time", "values": {name: float}}``
- ``rollback``: ``{"seq", "kind": "rollback", "to_step", "time"}``; a ``continue`` from
  a checkpoint at step S appends one: metric records written before it with a step
  greater than S no longer count (they are replaced by the resumed run's records).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import weakref
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expflow.errors import RecordError
from expflow.package.shapes import read_bytes


@dataclass(frozen=True)
class Problem:
    """A line of the record file that is not a valid record."""

    line: int  # 1-based
    offset: int  # byte offset of the line's start
    reason: str

    def __str__(self) -> str:
        return f"line {self.line} (byte {self.offset}): {self.reason}"


@dataclass
class RecordScan:
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    size: int = 0  # bytes scanned
    # Byte offset of each record's line (parallel to ``records``): where a record sits.
    offsets: list[int] = field(default_factory=list)


def encode_record(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, separators=(",", ":"), allow_nan=True).encode("utf-8")
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def decode_line(raw: bytes) -> dict[str, Any]:
    """Decode one line (without its newline); raises ValueError saying why it is bad."""
    if len(raw) < 10 or raw[8:9] != b" ":
        raise ValueError("not a record line")
    try:
        crc = int(raw[:8], 16)
    except ValueError:
        raise ValueError("bad checksum field") from None
    payload = raw[9:]
    if zlib.crc32(payload) != crc:
        raise ValueError("checksum mismatch")
    try:
        record = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"bad JSON ({e.__class__.__name__})") from None
    if not isinstance(record, dict) or record.get("kind") not in ("metrics", "rollback"):
        raise ValueError("unknown record kind")
    bad = _bad_key(record)
    if bad:
        raise ValueError(f"invalid {record['kind']} record: key {bad!r}")
    return record


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_number(v: Any) -> bool:
    return type(v) is float or type(v) is int


def _bad_key(record: dict[str, Any]) -> str | None:
    """The first key of a (checksum-valid) record that is not of its kind's shape, if any."""
    if "seq" in record and not _is_int(record["seq"]):
        return "seq"
    if "time" in record and not _is_number(record["time"]):
        return "time"
    if record["kind"] == "rollback":
        return None if _is_int(record.get("to_step")) else "to_step"
    if not _is_int(record.get("step")):
        return "step"
    epoch = record.get("epoch")
    if epoch is not None and not _is_int(epoch):
        return "epoch"
    values = record.get("values")
    if type(values) is not dict:
        return "values"
    for name, value in values.items():
        if not _is_number(value):
            return f"values.{name}"
    return None


def scan_records(path: str | os.PathLike[str], *, strict: bool = False) -> RecordScan:
    """Read every record; invalid lines are collected as problems (or raise if strict).

    A final line without its newline is a torn write of a killed writer: reported,
    never returned as a record.
    """
    path = Path(path)
    scan = RecordScan()
    data = read_bytes(path, "metric records", "the record file", error=RecordError)
    if data is None:
        return scan
    scan.size = len(data)
    offset = 0
    line_no = 0
    while offset < len(data):
        line_no += 1
        end = data.find(b"\n", offset)
        if end < 0:
            problem = Problem(line_no, offset, "torn record (no newline at end of file)")
            if strict:
                raise RecordError(f"{path}: {problem}")
            scan.problems.append(problem)
            break
        raw = data[offset:end]
        if raw:
            try:
                scan.records.append(decode_line(raw))
                scan.offsets.append(offset)
            except ValueError as e:
                problem = Problem(line_no, offset, str(e))
                if strict:
                    raise RecordError(f"{path}: {problem}") from None
                scan.problems.append(problem)
        offset = end + 1
    return scan


def effective_metrics(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metric records that count, in order: rollbacks drop earlier records past their step."""
    kept: list[dict[str, Any]] = []
    for rec in records:
        if rec["kind"] == "rollback":
            to_step = rec["to_step"]
            kept = [r for r in kept if r["step"] <= to_step]
        else:
            kept.append(rec)
    return kept


def metric_points(records: Iterable[dict[str, Any]]) -> Iterator[tuple[int, str, float]]:
    """(step, name, value) for every value of the effective records."""
    for rec in effective_metrics(records):
        for name, value in rec["values"].items():
            yield rec["step"], name, value


def same_value(a: float | None, b: float | None) -> bool:
    """Two metric values are the same value: equal, or both NaN (a reproduction is bitwise,
    and servers store NaN as a marker); a missing value (None) is the same as nothing."""
    if a is None or b is None:
        return False
    return a == b or (a != a and b != b)


def last_values(records: Iterable[dict[str, Any]]) -> dict[str, float]:
    last: dict[str, float] = {}
    for _, name, value in metric_points(records):
        last[name] = value
    return last


def _as_float(name: str, value: Any) -> float:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {name!r}: expected a number, got {type(value).__name__}")
    return float(value)


_INF = float("inf")


def _float_json(value: float) -> str:
    """A float as ``json.dumps(allow_nan=True)`` writes it."""
    if value != value:
        return "NaN"
    if value == _INF:
        return "Infinity"
    if value == -_INF:
        return "-Infinity"
    return repr(value)


class RecordWriter:
    """Appends records to a package's record file (rank 0 only).

    ``log`` checks and encodes the record on the calling thread (so a bad value raises
    there, and a record's bytes are fixed when ``log`` returns), hands the line to a
    background writer thread and returns: a few microseconds, no system call. The writer
    appends the queued lines in order with ``os.write`` on an ``O_APPEND`` descriptor,
    whole lines only.

    When the writer looks for lines is the ``wake`` choice:

    - ``wake=True`` (the default): ``log`` wakes an idle writer, so a record reaches the
      file within moments. For a writer fed by a program that writes its own checkpoints
      (a command run's supervisor): the program may checkpoint right after logging, and a
      kill in between must not leave a checkpoint without the records before it.
    - ``wake=False``: ``log`` wakes nothing; the writer takes what is queued every
      ``_IDLE_WAIT_S`` (50 ms) on its own. (An ``Event.set`` per record, and the writer
      taking the GIL back mid-step, cost a training loop ~1% per step:
      ``benchmarks/runner_overhead.py``.) For a caller that calls :meth:`flush` before
      anything that must not outrun its records, as expflow's own loop does before every
      checkpoint.

    *Acknowledged* means: in the file (the kernel's page cache, which survives the
    process being killed with SIGKILL; :meth:`close` and :meth:`sync` fsync for power
    loss). :meth:`flush` waits until every record logged so far is acknowledged and
    returns the last acknowledged ``seq``; :attr:`acknowledged_seq` says it without
    waiting; :meth:`rollback` and :meth:`close` flush. A process killed after
    ``flush()`` returned keeps every record up to that ``seq``; records logged after it
    are kept as an in-order prefix (the writer never skips one).
    """

    # The writer re-checks for pending lines at least this often even if no wake-up came.
    _IDLE_WAIT_S = 0.05
    # Pause between writes while log() calls keep coming (bounds the writer's GIL takeovers).
    _COALESCE_S = 0.02

    def __init__(self, path: str | os.PathLike[str], *, wake: bool = True):
        self.path = Path(path)
        self._wake_per_record = wake
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RecordError(f"{self.path}: cannot create the metric record file "
                              f"({self.path.parent.name}/: {e.strerror or e.__class__.__name__})") from None
        scan = scan_records(self.path)
        self._seq = max((r.get("seq", -1) for r in scan.records), default=-1) + 1
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A torn tail: a write cut short by a kill (SIGKILL can stop a multi-page write()
        # between pages). Its writer never returned, so nothing in it was acknowledged: cut
        # it off, and the file is whole lines again (a --strict reader would fail on it forever).
        if scan.size:
            data = self.path.read_bytes()
            if not data.endswith(b"\n"):
                os.ftruncate(self._fd, data.rfind(b"\n") + 1)
        self._keys: dict[str, str] = {}  # metric name -> its JSON key prefix, '"name":'
        # Lines not yet handed to the OS. The lock is held only to append one line or to swap
        # the list for an empty one, so the writer thread holds the GIL for microseconds.
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        self._queued = 0  # lines handed to the writer (written by log()'s thread only)
        self._written = 0  # lines in the file (written by the writer thread only)
        self._first_seq = self._seq
        self._error: BaseException | None = None
        self._closing = False
        self._idle = False
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._thread = threading.Thread(target=self._drain_forever, name="expflow-records", daemon=True)
        self._thread.start()
        # A daemon thread dies with the interpreter: flush what is queued at a normal exit.
        _open_writers.add(self)

    @property
    def next_seq(self) -> int:
        return self._seq

    @property
    def acknowledged_seq(self) -> int:
        """The ``seq`` of the last record in the file (-1: none written by this writer yet)."""
        return self._first_seq + self._written - 1 if self._written else self._first_seq - 1

    # -- the hot path ------------------------------------------------------------------
    def log(self, values: dict[str, Any], step: int, epoch: int | None = None) -> int:
        """Queue one metrics record; returns its ``seq``. Not yet acknowledged: see :meth:`flush`."""
        if self._error is not None:
            self._raise_writer_error()
        keys = self._keys
        parts = []
        for name, value in values.items():
            key = keys.get(name)  # type: ignore[call-overload]
            if key is None:
                key = self._key(name)
            # NaN and inf are kept: a diverging loss is a fact worth recording.
            if type(value) is not float:
                value = _as_float(str(name), value)
            parts.append(key + (repr(value) if value - value == 0 else _float_json(value)))
        seq = self._seq
        epoch_json = "null" if epoch is None else int(epoch)
        payload = (
            f'{{"seq":{seq},"kind":"metrics","step":{int(step)},"epoch":{epoch_json},'
            f'"time":{time.time()!r},"values":{{{",".join(parts)}}}}}'
        ).encode()
        line = b"%08x %s\n" % (zlib.crc32(payload), payload)
        with self._lock:
            self._pending.append(line)
        self._seq = seq + 1
        self._queued += 1
        if self._idle and self._wake_per_record:  # see the class docstring: ``wake``
            self._wake.set()
        return seq

    def _key(self, name: Any) -> str:
        key = self._keys[name] = json.dumps(str(name)) + ":"
        return key

    # -- everything else -----------------------------------------------------------------
    def _append(self, record: dict[str, Any]) -> int:
        """Queue a record built as a dict (rare kinds); returns its ``seq``."""
        if self._error is not None:
            self._raise_writer_error()
        seq = self._seq
        line = encode_record({"seq": seq, **record})
        with self._lock:
            self._pending.append(line)
        self._seq = seq + 1
        self._queued += 1
        self._wake.set()
        return seq

    def rollback(self, to_step: int) -> int:
        """Append a rollback record and wait until it is acknowledged."""
        seq = self._append({"kind": "rollback", "to_step": int(to_step), "time": time.time()})
        self.flush()
        return seq

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every record logged so far is in the file; returns the last ``seq`` there.

        Raises the writer's OSError if it failed, TimeoutError after ``timeout`` seconds.
        """
        target = self._queued
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while self._written < target and self._error is None:
                self._wake.set()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{self.path}: {target - self._written} record(s) not written after {timeout}s")
                self._done.wait(0.1 if remaining is None else min(remaining, 0.1))
        if self._error is not None:
            self._raise_writer_error()
        return self.acknowledged_seq

    def sync(self) -> None:
        """Flush, then fsync: acknowledged records survive a power loss too."""
        self.flush()
        try:
            os.fsync(self._fd)
        except OSError as e:
            raise self._write_error(e) from None

    def close(self) -> None:
        if self._fd < 0:
            return
        _open_writers.discard(self)
        failed = None
        try:
            if self._thread.is_alive():
                self._closing = True
                self._wake.set()
                self._thread.join()
            failed = self._error
            if failed is None:
                try:
                    os.fsync(self._fd)
                except OSError as e:
                    failed = e
        finally:
            os.close(self._fd)
            self._fd = -1
            self._error = _Closed(f"{self.path}: the record writer is closed")
        if failed is not None:
            raise self._write_error(failed) from None

    def _raise_writer_error(self) -> None:
        if isinstance(self._error, _Closed):
            raise ValueError(str(self._error))
        raise self._write_error(self._error) from None  # type: ignore[arg-type]

    def _write_error(self, error: BaseException) -> Exception:
        """The writer's failure as one line: a WriteError naming the file for an OSError
        (a full disk, a read-only file system)."""
        from expflow.paths import write_error

        if isinstance(error, OSError):
            return write_error(error, self.path, what="the record writer failed")
        return OSError(f"{self.path}: the record writer failed: {error.__class__.__name__}: {error}")

    # -- the writer thread -----------------------------------------------------------------
    def _drain_forever(self) -> None:
        wake, lock = self._wake, self._lock
        try:
            end = os.fstat(self._fd).st_size  # whole lines up to here (only this thread appends)
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._idle = True
                    if not self._pending and not self._closing:  # log() may have queued before seeing _idle
                        wake.wait(self._IDLE_WAIT_S)
                    wake.clear()
                    self._idle = False
                    continue
                with lock:
                    lines, self._pending = self._pending, []
                data = b"".join(lines)
                size = len(data)
                try:
                    while data:  # a short write (e.g. a full disk that recovers) continues where it stopped
                        data = data[os.write(self._fd, data):]
                except OSError:
                    # Failed part-way (a full disk): cut the part written off, so the file stays
                    # whole lines (none of these lines was acknowledged).
                    try:
                        os.ftruncate(self._fd, end)
                    except OSError:
                        pass
                    raise
                end += size
                with self._done:
                    self._written += len(lines)
                    self._done.notify_all()
                # Under a burst of log() calls, let lines gather for a moment: each time this
                # thread takes the GIL back, the logging thread may wait for it. flush() and
                # close() cut the pause short.
                if self._pending and not self._closing:
                    wake.clear()
                    wake.wait(self._COALESCE_S)
        except BaseException as e:  # noqa: BLE001 - reported to the logging thread
            with self._done:
                self._error = e
                self._done.notify_all()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Closed(Exception):
    """Set as a closed writer's error: logging to it raises instead of losing the record."""


_open_writers: weakref.WeakSet[RecordWriter] = weakref.WeakSet()


@atexit.register
def _flush_open_writers() -> None:
    for writer in list(_open_writers):
        try:
            writer.close()
        except Exception:
            pass
