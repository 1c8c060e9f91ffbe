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
