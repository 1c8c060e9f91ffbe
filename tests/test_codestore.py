import os

from expflow.package.codestore import (
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    CodeStore,
    code_fingerprint,
    verify_snapshot,
)


def make_tree(root, n=5):
    (root / "src" / "pkg").mkdir(parents=True)
    for i in range(n):
        (root / "src" / "pkg" / f"m{i}.py").write_text(f"X = {i}\n" * 50)
    (root / "conf").mkdir()
    (root / "conf" / "config.yaml").write_text("a: 1\n")
    (root / "src" / "pkg" / "__pycache__").mkdir()
    (root / "src" / "pkg" / "__pycache__" / "m0.cpython-311.pyc").write_bytes(b"junk")
    (root / "data.bin").write_bytes(b"not code")


def test_snapshot_hardlinks_shared_objects(tmp_path):
    root = tmp_path / "proj"
    make_tree(root)
    store = CodeStore(tmp_path / "store")
    snaps = [store.snapshot(root, tmp_path / f"pkg{i}" / "code") for i in range(20)]
    paths = sorted(e.path for e in snaps[0])
    assert paths == ["conf/config.yaml"] + [f"src/pkg/m{i}.py" for i in range(5)]
    objects = [p for p in (tmp_path / "store" / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 6  # one object per distinct file, whatever the number of packages
    f = tmp_path / "pkg7" / "code" / "src" / "pkg" / "m3.py"
    assert os.stat(f).st_nlink == 21  # the object and 20 packages
    assert len({code_fingerprint(s) for s in snaps}) == 1


def test_snapshot_is_isolated_from_later_edits(tmp_path):
    root = tmp_path / "proj"
    make_tree(root)
    store = CodeStore(tmp_path / "store")
    entries = store.snapshot(root, tmp_path / "pkg" / "code")
    (root / "src" / "pkg" / "m1.py").write_text("X = 'edited'\n")
    assert (tmp_path / "pkg" / "code" / "src" / "pkg" / "m1.py").read_text().startswith("X = 1")
    assert verify_snapshot(tmp_path / "pkg" / "code", entries) == []
    entries2 = store.snapshot(root, tmp_path / "pkg2" / "code")
    assert code_fingerprint(entries2) != code_fingerprint(entries)


def test_snapshot_never_takes_secrets_or_env_files(tmp_path):
    root = tmp_path / "proj"
    make_tree(root)
    for rel in ("conf/secrets/key.yaml", "secrets/config.yaml", "workflows/.env", "workflows/.env.local"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x: 1\n")
    (root / "workflows" / "rule.smk").write_text("rule a: pass\n")
    store = CodeStore(tmp_path / "store")
    for include, exclude in ((DEFAULT_INCLUDE, DEFAULT_EXCLUDE), (["**/*", "**/.*"], [])):
        paths = sorted(e.path for e in store.snapshot(root, tmp_path / "pkg" / "code", include, exclude))
        assert not [p for p in paths if "secrets/" in p or ".env" in p], paths
        assert "workflows/rule.smk" in paths


# -- the store's stat index: unchanged files are not read again ----------------------------
def _counting_reads(monkeypatch):
    import builtins

    from expflow.package import codestore

    reads = []

    def counting_open(path, mode="r", *a, **k):
        if "rb" in mode and "/objects/" not in str(path) and "/index/" not in str(path):
            reads.append(os.path.basename(path))
        return builtins.open(path, mode, *a, **k)

    monkeypatch.setattr(codestore, "open", counting_open, raising=False)
    return reads


def test_unchanged_files_come_from_the_index_and_any_write_is_seen(tmp_path, monkeypatch):
    from expflow.package import codestore

    monkeypatch.setattr(codestore._StatIndex, "_RACY_NS", 0)  # files made just now count as settled
    root = tmp_path / "proj"
    make_tree(root)
    store = CodeStore(tmp_path / "store")
    reads = _counting_reads(monkeypatch)
    first = store.snapshot(root, tmp_path / "p1" / "code")
    assert len(reads) == 6
    reads.clear()
    second = store.snapshot(root, tmp_path / "p2" / "code")
    assert reads == [] and second == first  # nothing read, the same hashes
    # Same size, and the mtime put back: the ctime still moved, so the file is read again.
    f = root / "src" / "pkg" / "m2.py"
    st = f.stat()
    f.write_text(f.read_text().replace("X = 2", "X = 7"))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    third = store.snapshot(root, tmp_path / "p3" / "code")
    assert reads == ["m2.py"]
    assert (tmp_path / "p3" / "code" / "src" / "pkg" / "m2.py").read_text().startswith("X = 7")
    assert verify_snapshot(tmp_path / "p3" / "code", third) == []
    assert code_fingerprint(third) != code_fingerprint(first)


def test_recent_files_are_never_trusted_from_the_index(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    make_tree(root)  # written just now: within the racy window of the default rule
    store = CodeStore(tmp_path / "store")
    reads = _counting_reads(monkeypatch)
    store.snapshot(root, tmp_path / "p1" / "code")
    store.snapshot(root, tmp_path / "p2" / "code")
    assert len(reads) == 12  # read both times


def test_a_damaged_index_is_ignored_and_rewritten(tmp_path, monkeypatch):
    import json

    from expflow.package import codestore

    monkeypatch.setattr(codestore._StatIndex, "_RACY_NS", 0)
    root = tmp_path / "proj"
    make_tree(root)
    store = CodeStore(tmp_path / "store")
    first = store.snapshot(root, tmp_path / "p1" / "code")
    (index,) = (tmp_path / "store" / "index").glob("*.json")
    for damage in (b"\x00garbage{", b'{"version": 1, "files": []}', b"[]",
                   json.dumps({"version": codestore._rules_version(),
                               "files": {"src/pkg/m1.py": [1, 2, 3, 4, "no-hash", None]}}).encode()):
        index.write_bytes(damage)
        again = store.snapshot(root, tmp_path / "p2" / "code")
        assert again == first
        assert verify_snapshot(tmp_path / "p2" / "code", again) == []
        assert json.loads(index.read_bytes())["version"] == codestore._rules_version()
        import shutil

        shutil.rmtree(tmp_path / "p2")


def test_a_credential_found_once_is_refused_from_the_index_too(tmp_path, monkeypatch):
    import pytest

    from expflow.errors import PackageError
    from expflow.package import codestore

    monkeypatch.setattr(codestore._StatIndex, "_RACY_NS", 0)
    root = tmp_path / "proj"
    make_tree(root)
    (root / "conf" / "tracker.yaml").write_text("api_key: abc123\n")
    store = CodeStore(tmp_path / "store")
    reads = _counting_reads(monkeypatch)
    for _ in range(2):
        with pytest.raises(PackageError, match="conf/tracker.yaml has a credential in key 'api_key'"):
            store.snapshot(root, tmp_path / "p" / "code")
    assert reads.count("tracker.yaml") == 1  # the second refusal came from the index
    assert not (tmp_path / "store" / "objects").exists()  # refused before anything was stored


def test_include_globs_symlinks_and_skipped_directories(tmp_path):
    from expflow.package.codestore import collect_files

    root = tmp_path / "proj"
    make_tree(root)
    (root / "runs").mkdir()
    (root / "runs" / "old.py").write_text("x = 1\n")
    (root / "src" / "link.py").symlink_to(root / "src" / "pkg" / "m0.py")
    (root / "src" / "to_runs").symlink_to(root / "runs", target_is_directory=True)
    rel = lambda fs: sorted(f.relative_to(root).as_posix() for f in fs)  # noqa: E731
    # A trailing ** takes every file below (as Python 3.13's pathlib does); symlinks never.
    assert rel(collect_files(root, ["src/**"], ["**/__pycache__/**"], skip_dirs=[root / "runs"])) == [
        f"src/pkg/m{i}.py" for i in range(5)]
    # A skipped directory is left out by its real path, also where a symlinked directory leads to it.
    got = rel(collect_files(root, ["**/*.py"], [], skip_dirs=[root / "runs"]))
    assert got == [f"src/pkg/m{i}.py" for i in range(5)]
    assert {"runs/old.py", "src/to_runs/old.py"} <= set(rel(collect_files(root, ["**/*.py"], [])))


def test_concurrent_snapshots_of_new_code_all_succeed(tmp_path):
    """Many processes snapshot the same new files into one store at once (a sweep's package
    jobs): each stores or finds every object, none fails on another's half-done work."""
    import subprocess
    import sys

    root = tmp_path / "proj"
    make_tree(root, n=40)
    prog = (
        "import sys; from expflow.package.codestore import CodeStore;"
        "CodeStore(sys.argv[1]).snapshot(sys.argv[2], sys.argv[3])"
    )
    procs = [subprocess.Popen([sys.executable, "-c", prog, str(tmp_path / "store"), str(root),
                               str(tmp_path / f"pkg{i}" / "code")], stderr=subprocess.PIPE, text=True)
             for i in range(8)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(errors)
    for i in range(8):
        assert len(list((tmp_path / f"pkg{i}" / "code").rglob("*.py"))) == 40
