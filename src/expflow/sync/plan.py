"""What a sync uploads: the package's records that count (after rollbacks) and are not on
the server yet, read and validated from ``metrics/records.log`` (never modified).

Invalid lines (corrupt, torn) are reported with their position: ``strict`` fails on the
first, the default skips and counts them. A torn last line of a live run is not passed:
the next sync picks the record up once it is complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from expflow.package import SavePackage
from expflow.package.records import Problem, effective_metrics
from expflow.sync.state import SyncState


@dataclass
class PackageRecords:
    """The valid records of a package, with their byte offsets."""

    effective: list[tuple[int, dict[str, Any]]]  # (offset, metrics record) that count, in order
    rollbacks: list[tuple[int, dict[str, Any]]]  # (offset, rollback record)
    end: int  # where the next record will start (a torn last line is not passed)
    problems: list[Problem] = field(default_factory=list)

    @classmethod
    def read(cls, pkg: SavePackage, *, strict: bool = False) -> PackageRecords:
        scan = pkg.scan_records(strict=strict)
        offset_of = {id(r): off for r, off in zip(scan.records, scan.offsets, strict=True)}
        effective = [(offset_of[id(r)], r) for r in effective_metrics(scan.records)]
        rollbacks = [(off, r) for r, off in zip(scan.records, scan.offsets, strict=True) if r["kind"] == "rollback"]
        end = scan.size
        if scan.problems and scan.problems[-1].reason.startswith("torn"):
            end = scan.problems[-1].offset
        return cls(effective, rollbacks, end, list(scan.problems))

    def problems_line(self, limit: int = 3) -> str:
        """``2 invalid records skipped: line 4 (byte 310): checksum mismatch; ...``."""
        if not self.problems:
            return ""
        shown = "; ".join(str(p) for p in self.problems[:limit])
        more = f"; and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        n = len(self.problems)
        return f"{n} invalid record{'s' if n != 1 else ''} skipped ({shown}{more})"


@dataclass
class Pending:
    """The records to upload now."""

    records: list[tuple[int, dict[str, Any]]]
    end: int  # the watermark once every one of them is uploaded
    rewind: bool  # a rollback dropped steps already uploaded: the server must be corrected

    def watermark_after(self, index: int) -> int:
        """The watermark once ``records[: index + 1]`` are uploaded."""
        return self.records[index + 1][0] if index + 1 < len(self.records) else self.end

    @property
    def points(self) -> int:
        return sum(len(r["values"]) for _, r in self.records)

    @property
    def max_step(self) -> int:
        return max((r["step"] for _, r in self.records), default=-1)


def pending(records: PackageRecords, state: SyncState) -> Pending:
    """Records past the state's watermark; all of them when the state is fresh."""
    w = state.watermark
    new = [(off, r) for off, r in records.effective if off >= w]
    rewind = any(rb["to_step"] < state.max_step for off, rb in records.rollbacks if off >= w)
    return Pending(new, max(records.end, w), rewind)


def points(recs: list[tuple[int, dict[str, Any]]]) -> Iterator[tuple[str, int, float, float]]:
    """(name, step, value, time) of every value of ``recs``."""
    for _, r in recs:
        for name, value in r["values"].items():
            yield name, r["step"], value, r["time"]
