"""Places expflow cannot write to: `paths.runs` that is a file or under /proc, a read-only
runs directory or package, a disk that fills up during `continue`, `expflow new` into an
unwritable directory. Each is one line on stderr naming the path and what is wrong, a
non-zero exit, and a package left as it was (still continuable).

Read-only and full file systems are real ones: a read-only bind mount or a small tmpfs,
made in a private mount namespace (``unshare --mount``, as root, or with a user namespace
otherwise), so nothing outside the test sees them. Permission bits would not do: root,
which CI runs as, ignores them.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from expflow.errors import ExpflowError, PackageError
from expflow.package import SavePackage, Status
from expflow.paths import WriteError, check_writable, filesystem_type

from .conftest import REPO, assert_one_line_error, run_cli, small_overrides, tree_digest

PY = shlex.quote(sys.executable)


# -- helpers ----------------------------------------------------------------------------
def skip_outside_ci(reason: str) -> None:
    """Skip where the machine cannot fake the fault (no mount namespaces, no /proc); in CI
    (Linux, root) it always can, so there a missing mechanism fails the test instead."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


def read_only(pkg: Path, commands: str) -> str:
    """A confined script that makes ``pkg`` read-only, then runs ``commands`` on it."""
    return f"""
mount --bind {q(pkg)} {q(pkg)}
mount -o remount,bind,ro {q(pkg)}
{commands}"""


@functools.lru_cache(maxsize=1)
def _namespace_prefix() -> tuple[str, ...] | None:
    """A command prefix giving a private mount namespace in which mounts are allowed, or None."""
    if sys.platform != "linux" or not shutil.which("unshare") or not shutil.which("mount"):
        return None
    candidates = []
    if os.geteuid() == 0:
        candidates.append(("unshare", "--mount", "--propagation", "private"))
    candidates.append(("unshare", "--map-root-user", "--mount", "--propagation", "private"))
    with tempfile.TemporaryDirectory() as d:
        q = shlex.quote(d)
        # Both mechanisms the tests use: a size-limited tmpfs and a read-only bind mount.
        probe = (f"mount -t tmpfs -o size=64k tmpfs {q} && mount --bind {q} {q} && "
                 f"mount -o remount,bind,ro {q} && ! touch {q}/x 2>/dev/null")
        for prefix in candidates:
            try:
                ok = subprocess.run([*prefix, "sh", "-c", probe], capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                return prefix
    return None


def confined(script: str, out: Path, timeout: float = 600) -> None:
    """Run ``script`` (sh) in a private mount namespace; ``run NAME CMD...`` in it keeps the
    command's stdout, stderr and exit code in ``out`` (read them with :func:`result`)."""
    prefix = _namespace_prefix()
    if prefix is None:
        skip_outside_ci("needs a private mount namespace (unshare --mount as root, or user namespaces) "
                    "to make a read-only or full file system")
    out.mkdir(parents=True, exist_ok=True)
    header = (f"set -eu\nOUT={shlex.quote(str(out))}\nPY={PY}\n"
              'run() { name=$1; shift; set +e; "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; '
              'echo $? >"$OUT/$name.rc"; set -e; }\n'
              "fill() { dd if=/dev/zero of=\"$1\" bs=4k >/dev/null 2>&1 || true; }\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([*prefix, "sh", "-c", header + script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"the confined script failed:\n{proc.stdout}\n{proc.stderr}"


def result(out: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(
        [name], int((out / f"{name}.rc").read_text()), (out / f"{name}.out").read_text(),
        (out / f"{name}.err").read_text(),
    )


def q(path: Path | str) -> str:
    return shlex.quote(str(path))


@pytest.fixture(scope="module")
def crashed(tmp_path_factory) -> Path:
    """A real package killed (SIGKILL) right after its first checkpoint: CRASHED, continuable."""
    runs = tmp_path_factory.mktemp("crashed") / "runs"
    cmd = [sys.executable, "-m", "expflow.train", *small_overrides(runs, "trainer.max_epochs=3", "run_id=c1")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = runs / "c1" / "checkpoints" / "index.json"
    deadline = time.monotonic() + 300
    try:
        while True:
            try:
                if json.loads(index.read_text())["checkpoints"]:
                    break
            except (OSError, ValueError):
                pass
            assert proc.poll() is None, "training ended before its first checkpoint was seen"
            assert time.monotonic() < deadline
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    pkg = SavePackage.open(runs / "c1")
    if pkg.status() is Status.COMPLETED:
        pytest.fail("the run completed before it could be killed")
    assert pkg.status() is Status.CRASHED
    return pkg.path


def copy_package(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


# -- the write layer, in process ----------------------------------------------------------
def test_write_error_is_one_line_package_error_and_os_error(tmp_path):
    e = WriteError(tmp_path / "x", "no space left on device", what="paths.runs", code=errno.ENOSPC)
    assert isinstance(e, PackageError) and isinstance(e, ExpflowError) and isinstance(e, OSError)
    assert e.errno == errno.ENOSPC
    assert e.one_line() == f"cannot write {tmp_path / 'x'}: no space left on device (paths.runs)"
    assert str(pickle.loads(pickle.dumps(e))) == str(e)


def test_check_writable_names_the_path_and_the_problem(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    for path in (afile, afile / "sub" / "runs"):
        with pytest.raises(WriteError, match=re.escape(f"cannot write {afile}: not a directory")):
            check_writable(path, what="paths.runs")
    assert check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # a check creates nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # and leaves no probe file


def test_atomic_write_failure_keeps_the_old_file_and_names_it(tmp_path, monkeypatch):
    from expflow import atomic

    target = tmp_path / "manifest.json"
    atomic.atomic_write_json(target, {"v": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(WriteError) as info:
        atomic.atomic_write_json(target, {"v": 2})
    assert info.value.one_line() == f"cannot write {target}: no space left on device"
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left


def test_record_writer_on_a_full_disk_keeps_whole_lines_and_fails_in_one_line(tmp_path, monkeypatch, capfd):
    from expflow.package import records

    path = tmp_path / "metrics" / "records.log"
    with records.RecordWriter(path) as w:
        w.log({"loss": 1.0}, step=1)
    before = path.read_bytes()
    real_write = os.write
    calls = {"n": 0}

    def filling(fd, data):  # the disk fills mid-batch: half a batch written, then ENOSPC
        if fd == w2._fd:
            calls["n"] += 1
            if calls["n"] == 1:
                return real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    w2 = records.RecordWriter(path)
    monkeypatch.setattr(records.os, "write", filling)
    with pytest.raises(WriteError) as info:
        for step in range(2, 40):  # log() itself raises once the writer has failed
            w2.log({"loss": 1.0 / step, "acc": 0.5}, step=step)
        w2.flush()
    assert info.value.one_line() == f"cannot write {path}: no space left on device (the record writer failed)"
    with pytest.raises(ExpflowError, match="no space left on device"):
        w2.log({"loss": 0.0}, step=41)
    with pytest.raises(WriteError):
        w2.close()
    monkeypatch.undo()
    assert path.read_bytes() == before  # the part-written batch is cut off: whole lines only
    assert len(records.scan_records(path, strict=True).records) == 1
    assert "Traceback" not in capfd.readouterr().err  # the writer thread printed nothing


# -- paths.runs ---------------------------------------------------------------------------
@pytest.mark.slow
def test_paths_runs_that_is_a_file(tmp_path):
    afile = tmp_path / "runs"
    afile.write_text("not a directory\n")
    proc = run_cli(*small_overrides(afile), module="expflow.train")
    assert_one_line_error(proc, f"cannot write {afile}: not a directory", "paths.runs")
    proc = run_cli(*small_overrides(afile / "deeper"), module="expflow.train")
    assert_one_line_error(proc, f"cannot write {afile}: not a directory", f"paths.runs={afile / 'deeper'}")
    proc = run_cli("materialize", "--runs", str(afile), "trainer=debug", "gpu=cpu", f"code.root={REPO}")
    assert_one_line_error(proc, f"cannot write {afile}: not a directory")
    # A sweep over paths.runs: every value is checked before Hydra creates a directory.
    ok = tmp_path / "ok"
    proc = run_cli("-m", *small_overrides(afile), f"paths.runs={ok},{afile}", module="expflow.train")
    assert_one_line_error(proc, f"cannot write {afile}: not a directory", "paths.runs")
    assert not ok.exists()
    assert afile.read_text() == "not a directory\n"


@pytest.mark.slow
def test_paths_runs_under_proc():
    if filesystem_type("/proc") != "proc":
        skip_outside_ci("no proc file system at /proc")
    proc = run_cli(*small_overrides(Path("/proc/expflow-runs")), module="expflow.train")
    assert_one_line_error(proc, "cannot write /proc/expflow-runs: on a proc file system", "paths.runs")


@pytest.mark.slow
def test_read_only_runs_directory(tmp_path):
    runs = tmp_path / "runs"
    (runs / "old").mkdir(parents=True)
    (runs / "old" / "notes.txt").write_text("kept\n")
    before = tree_digest(runs)
    out = tmp_path / "out"
    train = " ".join(q(a) for a in small_overrides(runs))
    confined(f"""
mount --bind {q(runs)} {q(runs)}
mount -o remount,bind,ro {q(runs)}
run train $PY -m expflow.train {train}
run materialize $PY -m expflow.cli materialize --runs {q(runs)} trainer=debug gpu=cpu code.root={q(REPO)}
""", out)
    for name in ("train", "materialize"):
        assert_one_line_error(result(out, name), f"cannot write {runs}: read-only file system")
    assert tree_digest(runs) == before


@pytest.mark.slow
def test_full_disk_while_creating_a_package(tmp_path):
    """The disk fills during the code snapshot: one line naming the place, no manifest."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    confined(f"""
mount -t tmpfs -o size=100k tmpfs {q(disk)}
run materialize $PY -m expflow.cli materialize --runs {q(disk / "runs")} trainer=debug gpu=cpu code.root={q(REPO)}
find {q(disk)} -name manifest.json >"$OUT/manifests"
run again $PY -m expflow.cli materialize --runs {q(disk / "more")} trainer=debug gpu=cpu code.root={q(REPO)}
""", out)
    assert_one_line_error(result(out, "materialize"), f"cannot write {disk / 'runs'}/", "no space left on device")
    assert (out / "manifests").read_text() == ""  # an interrupted creation is never a package
    assert_one_line_error(result(out, "again"), f"cannot write {disk}", "no space left on device")


# -- continue -----------------------------------------------------------------------------
@pytest.mark.slow
def test_read_only_package_is_not_continued(tmp_path, crashed):
    pkg = copy_package(crashed, tmp_path / "runs" / "c1")
    before = tree_digest(pkg)
    out = tmp_path / "out"
    confined(read_only(pkg, f"""
run continue $PY -m expflow.cli continue {q(pkg)}
run run $PY -m expflow.cli run {q(pkg)}
run worker $PY -m expflow.worker {q(pkg)} --resume latest
"""), out)
    assert_one_line_error(result(out, "continue"), f"cannot write {pkg}: read-only file system")
    assert_one_line_error(result(out, "run"), f"cannot write {pkg}: read-only file system")
    assert_one_line_error(result(out, "worker"), f"cannot write {pkg}", "read-only file system")
    assert tree_digest(pkg) == before
    assert SavePackage.open(pkg).status() is Status.CRASHED


@pytest.mark.slow
def test_read_only_package_is_not_analyzed_or_synced(tmp_path, crashed):
    pkg = copy_package(crashed, tmp_path / "runs" / "c1")
    before = tree_digest(pkg)
    out = tmp_path / "out"
    confined(read_only(pkg, f"""
run analyze $PY -m expflow.cli analyze {q(pkg)} learning_curves
run sync $PY -m expflow.cli sync {q(pkg)} --target mlflow --uri http://127.0.0.1:9
"""), out)
    assert_one_line_error(result(out, "analyze"), f"cannot write {pkg}: read-only file system", "analysis output")
    synced = result(out, "sync")
    assert synced.returncode != 0 and "Traceback" not in synced.stdout + synced.stderr
    assert f"cannot write {pkg}: read-only file system" in synced.stderr
    assert tree_digest(pkg) == before


@pytest.mark.slow
def test_full_disk_continue_changes_nothing(tmp_path, crashed):
    """No byte left: `continue` stops before it starts; a worker started anyway writes nothing."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    pkg = disk / "c1"
    confined(f"""
mount -t tmpfs -o size=8m tmpfs {q(disk)}
cp -a {q(crashed)} {q(pkg)}
fill {q(disk / "fill")}
run continue $PY -m expflow.cli continue {q(pkg)}
cp -a {q(pkg)} "$OUT/after-continue"
run worker $PY -m expflow.worker {q(pkg)} --resume latest
cp -a {q(pkg)} "$OUT/after-worker"
""", out)
    assert_one_line_error(result(out, "continue"), f"cannot write {pkg}: no space left on device")
    assert_one_line_error(result(out, "worker"), f"cannot write {pkg}/", "no space left on device",
                          f"expflow continue {pkg}")
    before = tree_digest(crashed)
    assert tree_digest(out / "after-continue") == before
    assert tree_digest(out / "after-worker") == before


@pytest.mark.slow
def test_disk_full_during_checkpoint_write_then_continue(tmp_path, crashed):
    """Room for the manifest and records, none for a checkpoint: the run stops CRASHED with
    its checkpoints and index untouched and its records whole; with space again it completes."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    pkg = disk / "c1"
    ckpt_size = max(p.stat().st_size for p in (crashed / "checkpoints").glob("step-*.pt"))
    reserve_kb = 64
    assert ckpt_size > 2 * reserve_kb * 1024
    confined(f"""
mount -t tmpfs -o size=8m tmpfs {q(disk)}
cp -a {q(crashed)} {q(pkg)}
dd if=/dev/zero of={q(disk / "reserve")} bs=1k count={reserve_kb} >/dev/null 2>&1
fill {q(disk / "fill")}
rm {q(disk / "reserve")}
run continue $PY -m expflow.cli continue {q(pkg)}
cp -a {q(pkg)} "$OUT/after-continue"
rm {q(disk / "fill")}
run again $PY -m expflow.cli continue {q(pkg)}
cp -a {q(pkg)} "$OUT/after-again"
""", out)
    failed = result(out, "continue")
    assert_one_line_error(failed, f"cannot write {pkg}/", "no space left on device", f"expflow continue {pkg}")
    if os.sysconf("SC_PAGE_SIZE") == 4096:  # larger pages: the disk may run out before the checkpoint
        assert f"{pkg}/checkpoints/step-" in failed.stderr
    after = out / "after-continue"
    before, now = tree_digest(crashed), tree_digest(after)
    for rel in before:  # checkpoints, index, config, code: as they were
        if rel.split("/")[0] in ("checkpoints", "code", ".hydra") or rel in ("config.yaml", "code.json"):
            assert now.get(rel) == before[rel], rel
    assert [r for r in now if r.startswith("checkpoints/")] == [r for r in before if r.startswith("checkpoints/")]
    # The manifest says what happened; the records are whole lines, the old ones first.
    stopped = SavePackage(after)
    m = stopped.manifest()
    assert m["status"] == "CRASHED" and m["error"]["type"] == "WriteError"
    assert "no space left on device" in m["error"]["message"]
    assert stopped.status() is Status.CRASHED
    stopped.scan_records(strict=True)
    old = (crashed / "metrics" / "records.log").read_bytes()
    assert (after / "metrics" / "records.log").read_bytes().startswith(old)
    # Space again: the same package continues to the end.
    again = result(out, "again")
    assert again.returncode == 0, again.stdout + again.stderr
    done = SavePackage.open(out / "after-again")
    assert done.status() is Status.COMPLETED
    assert done.manifest()["progress"]["epoch"] == 3
    done.scan_records(strict=True)


# -- expflow new ----------------------------------------------------------------------------
@pytest.mark.slow
def test_new_into_a_file_or_proc(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    assert_one_line_error(run_cli("new", str(afile / "proj")), f"cannot write {afile}: not a directory")
    if filesystem_type("/proc") == "proc":
        assert_one_line_error(run_cli("new", "/proc/proj"), "cannot write /proc/proj: on a proc file system")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.slow
def test_new_into_a_read_only_or_full_directory(tmp_path):
    ro, full, out = tmp_path / "ro", tmp_path / "full", tmp_path / "out"
    (ro / "empty").mkdir(parents=True)
    full.mkdir()
    confined(f"""
mount --bind {q(ro)} {q(ro)}
mount -o remount,bind,ro {q(ro)}
run ro $PY -m expflow.cli new {q(ro / "proj")}
run ro_empty $PY -m expflow.cli new {q(ro / "empty")}
mount -t tmpfs -o size=40k tmpfs {q(full)}
run small $PY -m expflow.cli new {q(full / "proj")}
ls -A {q(full)} >"$OUT/small.ls"
fill {q(full / "fill")}
run full $PY -m expflow.cli new {q(full / "proj")}
""", out)
    assert_one_line_error(result(out, "ro"), f"cannot write {ro}: read-only file system (for {ro / 'proj'})")
    assert_one_line_error(result(out, "ro_empty"), f"cannot write {ro}: read-only file system")
    # Room for the first files only: the half-made project is removed, the target named.
    assert_one_line_error(result(out, "small"), f"cannot write {full / 'proj'}: no space left on device")
    assert (out / "small.ls").read_text() == ""
    assert_one_line_error(result(out, "full"), f"cannot write {full}: no space left on device (for {full / 'proj'})")
    assert sorted(p.name for p in ro.iterdir()) == ["empty"]
