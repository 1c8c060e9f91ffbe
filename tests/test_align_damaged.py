"""`expflow align` on expflow packages with damaged record lines: the valid records are
aligned with one warning line per package (file, count, first bad line); `--strict` fails
that package alone; in a runs directory one bad package never drops the others."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pandas as pd
import pytest

from expflow.align.pipeline import run_alignment, summary_error
from expflow.align.sources.packages import ExpflowSource
from expflow.align.spec import SourceSpec, load_spec

from .align_fixtures import write_package
from .conftest import assert_one_line_error, run_cli

LOSS = "train/loss"


def loss(step: int, i: int = 0) -> float:
    return 1.0 / step + i


def write_runs(root: Path) -> Path:
    """Runs aaa, bbb, ccc with train/loss at steps 1..5; returns aaa's records file."""
    for i, run_id in enumerate(("aaa", "bbb", "ccc")):
        write_package(root, run_id, [(s, {LOSS: loss(s, i)}) for s in range(1, 6)])
    return root / "aaa" / "metrics" / "records.log"


def damage_lines(records: Path, *line_numbers: int) -> list[int]:
    """Flip a byte in each given (1-based) line; returns each line's byte offset."""
    lines = records.read_bytes().splitlines(keepends=True)
    offsets = [sum(len(x) for x in lines[: n - 1]) for n in line_numbers]
    for n in line_numbers:
        lines[n - 1] = lines[n - 1].replace(b"train", b"trXin")
    records.write_bytes(b"".join(lines))
    return offsets


def spec_for(tmp_path: Path, runs: Path) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"aligned_metrics: [{LOSS}]\nframeworks:\n  ours:\n    source: {{kind: expflow, path: {runs}}}\n"
                    "target: {mode: disabled}\n")
    return spec


def series(table: pd.DataFrame, label: str) -> dict[int, float]:
    part = table[(table["framework"] == label) & (table["metric"] == LOSS)]
    return dict(zip(part["step"].tolist(), part["value"].tolist(), strict=True))


def test_damaged_package_reads_its_valid_records(tmp_path):
    records = write_runs(tmp_path / "runs")
    (offset2, _) = damage_lines(records, 2, 4)
    raw = ExpflowSource(SourceSpec(kind="expflow", path=str(tmp_path / "runs" / "aaa"))).instances()[0][1].read()
    part = raw.points[raw.points["metric"] == LOSS]
    assert dict(zip(part["row"], part["value"], strict=True)) == {1: loss(1), 3: loss(3), 5: loss(5)}
    assert raw.damage == f"{records}: 2 bad record lines (first: line 2 (byte {offset2}): checksum mismatch), 3 valid records"


def test_a_well_checksummed_but_malformed_record_is_a_bad_line(tmp_path):
    records = write_runs(tmp_path / "runs")
    payload = json.dumps({"seq": 9, "kind": "metrics", "values": {LOSS: 0.0}}).encode()  # no step
    offset = records.stat().st_size
    with records.open("ab") as f:
        f.write(b"%08x " % zlib.crc32(payload) + payload + b"\n")
    raw = ExpflowSource(SourceSpec(kind="expflow", path=str(tmp_path / "runs" / "aaa"))).instances()[0][1].read()
    assert len(raw.points) == 5
    # (records.py may name the bad key itself, with the line number; else the align source does)
    assert f"{records}: 1 bad record line (first: " in raw.damage and f"byte {offset}" in raw.damage
    assert "step" in raw.damage and raw.damage.endswith(", 5 valid records")


def test_runs_directory_aligns_every_readable_package(tmp_path):
    runs = tmp_path / "runs"
    records = write_runs(runs)
    damage_lines(records, 2)
    (runs / "ccc" / "manifest.json").write_text("{not json")
    plan = load_spec(spec_for(tmp_path, runs))
    result = run_alignment(plan, tmp_path / "out", plots=False, tracker=False)
    checks = {c.label: c for c in result.checks}
    assert checks["ours/aaa"].status == "ok" and checks["ours/bbb"].status == "ok"
    assert checks["ours/ccc"].status == "error" and "manifest.json" in checks["ours/ccc"].error
    assert series(result.table, "ours/bbb") == {s: loss(s, 1) for s in range(1, 6)}
    assert series(result.table, "ours/aaa")[3] == loss(3)
    [warning] = result.warnings
    assert warning.startswith(f"ours/aaa: {records}: 1 bad record line (first: line 2 ")
    report = json.loads((tmp_path / "out" / "check.json").read_text())
    assert report["frameworks"]["ours/aaa"]["warnings"] == checks["ours/aaa"].warnings
    assert "warnings" not in report["frameworks"]["ours/bbb"]
    # served from the cache: the same warning; strict (same cache) fails aaa alone
    again = run_alignment(plan, tmp_path / "out", plots=False, tracker=False)
    assert "ours/aaa" in again.cached and again.warnings == result.warnings
    strict = run_alignment(plan, tmp_path / "out", plots=False, tracker=False, strict=True)
    assert sorted(c.label for c in strict.failures) == ["ours/aaa", "ours/ccc"]
    assert set(strict.table["framework"].astype(str)) == {"ours/bbb"} and strict.warnings == []
    error = summary_error(strict).one_line()
    assert f"ours/aaa: {records}: 1 bad record line" in error and "(--strict)" in error


@pytest.mark.slow
def test_cli_warns_one_line_per_damaged_package_and_strict_fails_it(tmp_path):
    runs = tmp_path / "runs"
    records = write_runs(runs)
    offset = damage_lines(records, 3)[0]
    spec = spec_for(tmp_path, runs)
    out = tmp_path / "out"
    proc = run_cli("align", str(spec), "--out", str(out), "--no-tracker", "--no-plots")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"expflow: warning: ours/aaa: {records}: 1 bad record line"), lines
    assert f"line 3 (byte {offset})" in lines[0]
    assert set(pd.read_csv(out / "aligned.csv")["framework"]) == {"ours/aaa", "ours/bbb", "ours/ccc"}
    proc = run_cli("align", str(spec), "--out", str(out), "--no-tracker", "--no-plots", "--strict")
    assert proc.returncode == 1
    assert_one_line_error(proc, "expflow: error: ours/aaa:", str(records), "(--strict)", "2 other framework(s) aligned")
    assert set(pd.read_csv(out / "aligned.csv")["framework"]) == {"ours/bbb", "ours/ccc"}
