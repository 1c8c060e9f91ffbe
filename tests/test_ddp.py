"""DDP on CPU: trainer.processes=2 runs under torchrun with gloo."""

from __future__ import annotations

import re

import pytest

from expflow.package import SavePackage, Status, effective_metrics

from .conftest import run_cli, single_process_val_acc, small_overrides

pytestmark = pytest.mark.slow


def test_ddp_run_completes_and_metrics_match_rank0(tmp_path):
    runs = tmp_path / "runs"
    proc = run_cli(*small_overrides(runs, "trainer.processes=2", "trainer.max_epochs=2", "run_id=ddp"),
                   module="expflow.train", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pkg = SavePackage.open(runs / "ddp")
    m = pkg.manifest()
    assert pkg.status() is Status.COMPLETED and m["world_size"] == 2
    # Each rank has its own log; rank 0 alone reported progress and wrote the records.
    assert pkg.log_path(0, "out").exists() and pkg.log_path(1, "out").exists()
    rank0_lines = [ln for ln in pkg.log_path(0, "out").read_text().splitlines() if " epoch " in ln]
    assert len(rank0_lines) == 2
    assert " epoch " not in pkg.log_path(1, "out").read_text()
    scan = pkg.scan_records()
    assert scan.problems == []
    records = effective_metrics(scan.records)
    epoch_records = [r for r in records if "val/acc" in r["values"]]
    assert [r["epoch"] for r in epoch_records] == [1, 2]
    # The records are what rank 0 printed.
    for line, rec in zip(rank0_lines, epoch_records, strict=True):
        printed = dict(re.findall(r"(\S+)=(\S+)", line))
        for k, v in rec["values"].items():
            assert float(printed[k]) == pytest.approx(v, rel=1e-5)
    # 719 training samples per rank in batches of 64: 12 steps per epoch.
    assert epoch_records[-1]["step"] == 24
    # val metrics were reduced over both ranks: they equal a single-process evaluation
    # of the final checkpoint on the whole validation set.
    assert epoch_records[-1]["values"]["val/acc"] == pytest.approx(single_process_val_acc(pkg), abs=1e-12)


def test_a_stop_signal_stops_every_rank_at_the_same_step_and_continue_is_bit_identical(tmp_path):
    """Under DDP, a SIGUSR1 to one rank (in the train) or to the launcher (in the continue,
    which forwards it to both ranks) stops both at the same step; the checkpoint holds each
    rank's RNG and epoch state, and the continued run equals an uninterrupted one."""
    runs = tmp_path / "runs"
    common = ["trainer.processes=2", "trainer.max_epochs=4", "trainer.log_every_n_steps=1"]
    ref = run_cli(*small_overrides(runs, *common, "run_id=ref"), module="expflow.train", timeout=300)
    assert ref.returncode == 0, ref.stderr
    stops = ["lifecycle._target_=tests.signal_lifecycle.SignalAt", "+lifecycle.steps=[5,30]",
             "code.include=[src/**/*.py,conf/**/*.yaml,tests/*.py]"]
    proc = run_cli(*small_overrides(runs, *common, *stops, "run_id=stopped"), module="expflow.train", timeout=300)
    assert proc.returncode != 0
    pkg = SavePackage.open(runs / "stopped")
    for stop in (5, 30):  # 12 steps per epoch: both mid-epoch
        assert pkg.manifest()["attempts"][-1]["stopped"]["step"] == stop, pkg.manifest()["attempts"]
        assert pkg.checkpoints().latest().step == stop
        proc = run_cli("continue", str(pkg.path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    values = lambda p: [(r["step"], r["values"]) for r in effective_metrics(p.scan_records().records)]  # noqa: E731
    assert values(pkg) == values(SavePackage.open(runs / "ref"))
