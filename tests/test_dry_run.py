"""Planning changes no file: `snakemake -n` and `snakemake --lint` over a project with
finished runs and sync markers (one deferred, one done) leave its tree byte for byte as it was."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from .test_workflow import make_project, packages, snakemake

pytestmark = pytest.mark.slow


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size, mtime and content hash; but Snakemake's
    own state directory (.snakemake: a dry run leaves its I/O cache and lock folder there)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.relative_to(root).parts[0] == ".snakemake":
            continue
        st = p.lstat()
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
        elif p.is_dir():
            out[rel] = ("dir", st.st_mtime_ns)
        else:
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def changes(before: dict, after: dict) -> list[str]:
    return sorted(
        [f"removed {p}" for p in before.keys() - after.keys()]
        + [f"added {p}" for p in after.keys() - before.keys()]
        + [f"changed {p}: {before[p]} -> {after[p]}" for p in before.keys() & after.keys() if before[p] != after[p]]
    )


def test_dry_run_and_lint_change_no_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    workflow = {
        "sweep": ["seed=0,1"],
        "common": ["trainer=debug", "trainer.max_epochs=1", "trainer.threads=1", "gpu=cpu"],
        "train": {"threads": 1, "retries": 0},
        "sync": {"target": "swanlab", "uri": "http://127.0.0.1:9", "project": "wf"},
    }
    proj = make_project(tmp_path, workflow)
    # No SwanLab key: both syncs are deferred, and their markers say so. No bytecode caches:
    # Python's own __pycache__ of the project's src/ is not something the workflow writes.
    env = {"SWANLAB_ROOT": str(tmp_path / "swanlab-root"), "EXPFLOW_SECRETS_DIR": str(tmp_path / "secrets"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = snakemake(proj, "--cores", "2", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first, second = packages(proj)
    deferred = first.tracker_dir / "sync" / "swanlab.done"
    assert deferred.read_text().startswith("deferred\n")
    done = second.tracker_dir / "sync" / "swanlab.done"
    done.write_text("done\n" + done.read_text().split("\n", 1)[1])

    before = tree_snapshot(proj)
    dry = snakemake(proj, "-n", env=env)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    # The deferred sync is planned again, the done one is not.
    assert re.search(r"^sync_retry\s+1$", dry.stdout, re.M) and not re.search(r"^sync\s", dry.stdout, re.M), dry.stdout
    assert changes(before, tree_snapshot(proj)) == []
    assert deferred.read_text().startswith("deferred\n")

    lint = snakemake(proj, "--lint", env=env)
    assert "Traceback" not in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    assert changes(before, tree_snapshot(proj)) == []
