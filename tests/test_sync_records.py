"""What a sync reads from a damaged records file: at every truncation offset and under
random byte flips it never crashes, reports each invalid line with its position, and
passes on only records that were really written."""

from __future__ import annotations

import json

import pytest

from expflow.errors import RecordError
from expflow.package.records import encode_record
from expflow.sync.plan import PackageRecords, pending
from expflow.sync.state import SyncState

from .sync_helpers import damage, log_steps, make_package, rollback


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A package with a rollback in its records, and every record as written."""
    pkg = make_package(tmp_path_factory.mktemp("runs"), "fuzz")
    log_steps(pkg, range(1, 16))
    rollback(pkg, 8)
    log_steps(pkg, range(9, 21), attempt=1)
    data = pkg.records_path.read_bytes()
    originals = {r["seq"]: r for r in pkg.scan_records().records}
    return pkg, data, originals


def check(pkg, data: bytes, originals: dict) -> PackageRecords:
    pkg.records_path.write_bytes(data)
    records = PackageRecords.read(pkg)  # never raises on damage
    for off, r in records.effective:
        assert originals[r["seq"]] == r, "a record that was never written"
        assert data[off:].startswith(encode_record(r))  # at the offset it is said to be
    for p in records.problems:
        assert 0 <= p.offset < len(data) and p.line >= 1
        assert data[:p.offset].count(b"\n") == p.line - 1  # the position is right
    plan = pending(records, SyncState("test", "here"))
    assert [r for _, r in plan.records] == [r for _, r in records.effective]
    assert plan.end <= len(data)
    if records.problems:
        with pytest.raises(RecordError, match=r"line \d+ \(byte \d+\)"):
            PackageRecords.read(pkg, strict=True)
    return records


def test_every_truncation_offset(written):
    pkg, data, originals = written
    whole = len(check(pkg, data, originals).effective)
    seen_torn = 0
    for cut in range(0, len(data) + 1, 5):
        records = check(pkg, data[:cut], originals)
        assert len(records.effective) <= whole + 15  # a lost rollback brings back at most the rolled-back records
        seen_torn += any("torn" in p.reason for p in records.problems)
        if records.problems:
            assert records.end == records.problems[-1].offset  # a torn tail is not passed on
    assert seen_torn > 50


@pytest.mark.parametrize("seed", range(60))
def test_random_byte_flips(written, seed):
    pkg, data, originals = written
    damaged = damage(data, seed, max_changes=6, shortest=0.0)
    records = check(pkg, damaged, originals)
    if damaged != data[: len(damaged)]:
        assert records.problems  # damage is always noticed


@pytest.mark.parametrize("text", ["[1, 2]", "{", '{"target": "mlflow", "destination": "here", "watermark": "x"}',
                                  '{"watermark": 5}', '"state"'])
def test_a_damaged_sync_state_starts_over(tmp_path, text):
    """A sync state file of the wrong shape (or torn) is no traceback: the sync starts over
    (the server drops what it already holds)."""
    path = SyncState.file_for(tmp_path, "mlflow", "here")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    state = SyncState.load(tmp_path, "mlflow", "here")
    assert (state.target, state.destination, state.watermark, state.experiment) == ("mlflow", "here", 0, None)
    with SyncState.locked(tmp_path, "mlflow", "here", timeout=10) as st:
        st.watermark = 7
        st.save()
    assert SyncState.load(tmp_path, "mlflow", "here").watermark == 7


def test_a_sync_state_of_another_format_is_refused_and_kept(tmp_path):
    """A state a newer expflow wrote is one line naming the file and its format, and is never
    overwritten (that expflow still needs it); one without the key is format 1."""
    from expflow.errors import SyncError
    from expflow.sync.state import SYNC_FORMAT

    path = SyncState.file_for(tmp_path, "mlflow", "here")
    path.parent.mkdir(parents=True)
    newer = '{"format": 2, "target": "mlflow", "destination": "here", "watermark": 5}'
    path.write_text(newer)
    with pytest.raises(SyncError) as info:
        SyncState.load(tmp_path, "mlflow", "here")
    line = info.value.one_line()
    assert str(path) in line and "format 2" in line and f"reads {SYNC_FORMAT}" in line and "\n" not in line
    with pytest.raises(SyncError):
        with SyncState.locked(tmp_path, "mlflow", "here", timeout=10):
            pass
    assert path.read_text() == newer
    path.write_text('{"target": "mlflow", "destination": "here", "watermark": 5}')  # before the key
    assert SyncState.load(tmp_path, "mlflow", "here").watermark == 5
    state = SyncState.load(tmp_path, "mlflow", "here")
    state.save()
    assert json.loads(path.read_text())["format"] == SYNC_FORMAT

