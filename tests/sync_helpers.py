"""Helpers for the tracking and sync tests: small synthetic packages (no training), their
expected metric points, and an environment without credentials."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from expflow.package import SavePackage, Status, effective_metrics
from expflow.package.records import RecordWriter

KEYS = ("train/loss", "train/lr", "val/acc")


def fake_key(tag: str = "standin") -> str:
    """An API key built at run time (no key-like literal in the sources)."""
    return "-".join([tag, "key", "for", "tests", "only"])


def make_package(root: Path, run_id: str, *, tracker: dict[str, Any] | None = None) -> SavePackage:
    """A package with a real manifest and config, but no training (records written by tests)."""
    code = root / ".code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "train.py").write_text("# tiny\n")
    config = {"seed": 0, "run_id": run_id, "trainer": {"max_epochs": 1}, "optim": {"lr": 0.001},
              "tracker": tracker or {"_target_": "expflow.tracking.NullTracker"}}
    return SavePackage.create(root / run_id, config=config, store=root / ".store", code_root=code,
                              code_include=["*.py"], code_exclude=[])


def value(key: str, step: int, attempt: int = 0) -> float:
    """A deterministic metric value; ``attempt`` changes it (a continued run after a rollback)."""
    return round(math.sin(step * (1 + KEYS.index(key))) + 0.001 * attempt, 12) if key in KEYS else float(step)


def log_steps(pkg: SavePackage, steps: Iterable[int], *, attempt: int = 0, keys: tuple[str, ...] = KEYS) -> None:
    with RecordWriter(pkg.records_path) as w:
        for s in steps:
            w.log({k: value(k, s, attempt) for k in keys}, step=s, epoch=1 + s // 10)


def rollback(pkg: SavePackage, to_step: int) -> None:
    with RecordWriter(pkg.records_path) as w:
        w.rollback(to_step)


def finish(pkg: SavePackage, status: Status = Status.COMPLETED) -> None:
    pkg.update_manifest(lambda m: m.setdefault("attempts", []).append({"kind": "train"}))
    pkg.set_status(status)


def expected_points(pkg: SavePackage) -> dict[tuple[str, int], float]:
    """(key, step) -> value of every record that counts (rollbacks applied)."""
    return {(k, r["step"]): v for r in effective_metrics(pkg.scan_records().records) for k, v in r["values"].items()}


def files_containing(root: Path, needle: str) -> list[Path]:
    data = needle.encode()
    return [p for p in root.rglob("*") if p.is_file() and data in p.read_bytes()]


def written_points(pkg: SavePackage) -> set[tuple[str, int, float]]:
    """Every (key, step, value) the package's records hold, superseded ones included."""
    return {(k, r["step"], v) for r in pkg.scan_records().records if r["kind"] == "metrics"
            for k, v in r["values"].items()}


def damage(data: bytes, seed: int, *, max_changes: int = 4, shortest: float = 0.5) -> bytes:
    """``data`` with 1 to ``max_changes`` random bytes changed, and half the time cut at a random
    offset no shorter than ``shortest`` of it."""
    import random

    rng = random.Random(seed)
    damaged = bytearray(data)
    for _ in range(rng.randint(1, max_changes)):
        i = rng.randrange(len(damaged))
        damaged[i] = (damaged[i] + rng.randint(1, 255)) % 256
    if rng.random() < 0.5:
        damaged = damaged[: rng.randint(int(len(damaged) * shortest), len(damaged))]
    return bytes(damaged)


def fuzz_package(root: Path, run_id: str, seed: int) -> tuple[SavePackage, set[tuple[str, int, float]]]:
    """A package with a rollback whose records file is then damaged; and every point written."""
    pkg = make_package(root, run_id)
    log_steps(pkg, range(1, 13))
    rollback(pkg, 6)
    log_steps(pkg, range(7, 16), attempt=1)
    written = written_points(pkg)
    pkg.records_path.write_bytes(damage(pkg.records_path.read_bytes(), seed))
    return pkg, written
