"""Append-only, checksummed metric records: the package's own source of truth.

One record a line: ``<crc32 as 8 hex digits> <json>\\n``; the CRC covers the JSON bytes.
A line is written with a single ``os.write`` on an ``O_APPEND`` descriptor, so once
``log`` returns the record is in the file even if the process is killed right after.

Kinds of record:
- ``metrics``: ``{"seq", "kind": "metrics", "step", "epoch", "time", "values": {name: float}}``
- ``rollback``: ``{"seq", "kind": "rollback", "to_step", "time"}``; a ``continue`` from
  a checkpoint at step S appends one: metric records written before it with a step
  greater than S no longer count (they are replaced by the resumed run's records).
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expflow.errors import RecordError


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
    return record


def scan_records(path: str | os.PathLike[str], *, strict: bool = False) -> RecordScan:
    """Read every record; invalid lines are collected as problems (or raise if strict).

    A final line without its newline is a torn write of a killed writer: reported,
    never returned as a record.
    """
    path = Path(path)
    scan = RecordScan()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
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


class RecordWriter:
    """Appends records to a package's record file (rank 0 only)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        scan = scan_records(self.path)
        self._seq = max((r.get("seq", -1) for r in scan.records), default=-1) + 1
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A torn tail (writer killed mid-line by a power loss) stays in the file as an
        # invalid line of its own: end it so the next record starts on a fresh line.
        if scan.size and not self.path.read_bytes().endswith(b"\n"):
            os.write(self._fd, b"\n")

    @property
    def next_seq(self) -> int:
        return self._seq

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {"seq": self._seq, **record}
        os.write(self._fd, encode_record(record))
        self._seq += 1
        return record

    def log(self, values: dict[str, Any], step: int, epoch: int | None = None) -> dict[str, Any]:
        # NaN and inf are kept: a diverging loss is a fact worth recording.
        clean = {str(k): _as_float(str(k), v) for k, v in values.items()}
        return self._append(
            {"kind": "metrics", "step": int(step), "epoch": epoch, "time": time.time(), "values": clean}
        )

    def rollback(self, to_step: int) -> dict[str, Any]:
        return self._append({"kind": "rollback", "to_step": int(to_step), "time": time.time()})

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
