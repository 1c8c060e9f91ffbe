import os
import random

import pytest

from expflow.errors import RecordError
from expflow.package.records import (
    RecordWriter,
    effective_metrics,
    encode_record,
    last_values,
    metric_points,
    scan_records,
)


def write_steps(path, steps, start_value=0.0):
    with RecordWriter(path) as w:
        for s in steps:
            w.log({"loss": start_value + s, "acc": s / 10}, step=s, epoch=1)


def test_records_round_trip_with_sequence_numbers(tmp_path):
    p = tmp_path / "records.log"
    write_steps(p, range(1, 6))
    scan = scan_records(p)
    assert not scan.problems
    assert [r["seq"] for r in scan.records] == [0, 1, 2, 3, 4]
    assert [r["step"] for r in scan.records] == [1, 2, 3, 4, 5]
    assert last_values(scan.records) == {"loss": 5.0, "acc": 0.5}


def test_writer_reopened_continues_sequence(tmp_path):
    p = tmp_path / "records.log"
    write_steps(p, [1, 2])
    write_steps(p, [3])
    assert [r["seq"] for r in scan_records(p).records] == [0, 1, 2]


def test_rollback_replaces_later_steps_instead_of_duplicating(tmp_path):
    p = tmp_path / "records.log"
    write_steps(p, [1, 2, 3, 4], start_value=100)
    with RecordWriter(p) as w:
        w.rollback(2)
        w.log({"loss": 3.0}, step=3)
        w.log({"loss": 4.0}, step=4)
    points = list(metric_points(scan_records(p).records))
    steps = [s for s, name, _ in points if name == "loss"]
    assert steps == [1, 2, 3, 4]
    assert dict(((s, n), v) for s, n, v in points)[(3, "loss")] == 3.0
    assert dict(((s, n), v) for s, n, v in points)[(2, "loss")] == 102.0


def test_rollback_to_minus_one_drops_everything(tmp_path):
    p = tmp_path / "records.log"
    write_steps(p, [1, 2])
    with RecordWriter(p) as w:
        w.rollback(-1)
    assert effective_metrics(scan_records(p).records) == []


def test_torn_tail_is_reported_then_cut_off_on_reopen(tmp_path):
    p = tmp_path / "records.log"
    write_steps(p, [1, 2, 3])
    data = p.read_bytes()
    p.write_bytes(data[:-7])  # the last record lost its end: its write never completed
    scan = scan_records(p)
    assert [r["step"] for r in scan.records] == [1, 2]
    assert len(scan.problems) == 1 and "torn" in scan.problems[0].reason
    with pytest.raises(RecordError, match="line 3"):
        scan_records(p, strict=True)
    write_steps(p, [3])  # the writer cuts the unacknowledged fragment, then appends
    scan = scan_records(p)
    assert [r["step"] for r in scan.records] == [1, 2, 3]
    assert scan.problems == []
    assert p.read_bytes().startswith(data[: data.rfind(b"\n", 0, len(data) - 7) + 1])


@pytest.mark.parametrize("seed", range(20))
def test_random_corruption_never_yields_a_bad_record(tmp_path, seed):
    rng = random.Random(seed)
    p = tmp_path / "records.log"
    write_steps(p, range(1, 30))
    good = {(r["seq"], r["step"]) for r in scan_records(p).records}
    data = bytearray(p.read_bytes())
    for _ in range(rng.randint(1, 5)):
        i = rng.randrange(len(data))
        data[i] = (data[i] + rng.randint(1, 255)) % 256
    cut = rng.randint(0, len(data))
    p.write_bytes(bytes(data[:cut]))
    scan = scan_records(p)
    for r in scan.records:  # what survives is exactly what was written
        assert (r["seq"], r["step"]) in good
        assert r["values"]["loss"] == float(r["step"])


def test_encoded_line_is_one_write(tmp_path):
    line = encode_record({"seq": 0, "kind": "metrics", "step": 1, "epoch": 1, "time": 0, "values": {"a": 1.0}})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert line[8:9] == b" "


def test_non_numeric_metric_is_rejected(tmp_path):
    with RecordWriter(tmp_path / "r.log") as w, pytest.raises(TypeError, match="'name'"):
        w.log({"name": "text"}, step=1)
    assert os.path.getsize(tmp_path / "r.log") == 0


def test_same_value_is_equality_with_nan_equal_to_nan_and_none_never_the_same():
    from expflow.package.records import same_value

    nan = float("nan")
    assert same_value(1.5, 1.5) and same_value(nan, nan) and same_value(3, 3.0)
    assert not same_value(1.5, 1.5000001) and not same_value(nan, 1.0) and not same_value(1.0, nan)
    assert not same_value(None, None) and not same_value(None, 1.0) and not same_value(0.0, None)
