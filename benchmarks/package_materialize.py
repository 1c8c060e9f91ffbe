"""Materializing save-packages: expflow's content-addressed snapshot vs. a plain full
copy of the code per run (DLNest's way), measured in the same run.

    python benchmarks/package_materialize.py [--packages 100] [--code-root .]

Prints the time per package and the disk used by N packages for each, and the ratios, then
where expflow's time goes (a second, instrumented pass).
Goals: a package of unchanged code costs <= 0.5x the full copy's time, measured in the same
run (the two interleaved, package by package); N packages of the same code cost about one
copy on disk. The guarantees stay: the snapshot is taken before training, each file's hash
and credential check come before any object is stored, objects are written to a temp name
and renamed, the package's files are fsync'd and its manifest is written last, atomically.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from expflow.config import compose_config, resolve  # noqa: E402
from expflow.package import SavePackage  # noqa: E402
from expflow.package.codestore import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, collect_files  # noqa: E402


def disk_usage(root: Path) -> int:
    """Bytes on disk under root, counting each inode once (hardlinks are shared)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
    return total


def full_copy_package(code_root: Path, files: list[Path], target: Path, config_text: str) -> None:
    """DLNest: copy every code file into the new save-package, then write the args."""
    target.mkdir(parents=True)
    for f in files:
        dest = target / f.relative_to(code_root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    (target / "args.json").write_text(config_text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", type=int, default=100)
    ap.add_argument("--code-root", default=str(REPO))
    args = ap.parse_args()
    code_root = Path(args.code_root).resolve()
    config = resolve(compose_config(["run_id=bench"], config_dir=REPO / "conf"))
    files = collect_files(code_root, DEFAULT_INCLUDE, DEFAULT_EXCLUDE)
    code_bytes = sum(f.stat().st_size for f in files)

    with tempfile.TemporaryDirectory(prefix="expflow-bench-") as tmp:
        tmp = Path(tmp)
        ours, theirs = tmp / "expflow", tmp / "fullcopy"
        t_ours, t_theirs = [], []
        for i in range(args.packages):
            cfg = dict(config, run_id=f"run{i:04d}")
            t0 = time.perf_counter()
            SavePackage.create(ours / f"run{i:04d}", config=cfg, overrides=[], store=ours / ".store",
                               code_root=code_root)
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            full_copy_package(code_root, files, theirs / f"run{i:04d}", repr(cfg))
            t_theirs.append(time.perf_counter() - t0)
        d_ours, d_theirs = disk_usage(ours), disk_usage(theirs)
        c_ours = code_disk(ours.glob("run*/code"))
        c_theirs = code_disk(p for p in theirs.glob("run*") if p.is_dir())
        store_objects = sum(1 for p in (ours / ".store").rglob("*") if p.is_file())

    ms = lambda xs: 1000 * statistics.mean(xs)  # noqa: E731
    p95 = lambda xs: 1000 * sorted(xs)[int(0.95 * (len(xs) - 1))]  # noqa: E731
    n = args.packages
    print(f"code snapshot: {len(files)} files, {code_bytes / 1024:.1f} KiB; {n} packages each")
    print(f"{'':24}{'ms/package':>12}{'p95 ms':>10}{'disk (all)':>14}{'disk/package':>14}")
    print(f"{'expflow (store+links)':24}{ms(t_ours):12.2f}{p95(t_ours):10.2f}{d_ours / 2**20:12.2f} MiB"
          f"{d_ours / n / 1024:11.1f} KiB")
    print(f"{'full copy (DLNest)':24}{ms(t_theirs):12.2f}{p95(t_theirs):10.2f}{d_theirs / 2**20:12.2f} MiB"
          f"{d_theirs / n / 1024:11.1f} KiB")
    print(f"store objects: {store_objects} (distinct files)")
    print(f"ratio time  expflow/full-copy: {statistics.mean(t_ours) / statistics.mean(t_theirs):.2f}x")
    print(f"ratio disk  full-copy/expflow: {d_theirs / d_ours:.1f}x less disk with expflow")
    one_copy = disk_usage_one(files)
    print(f"code files on disk for {n} packages: expflow {c_ours / 2**10:.0f} KiB, full copy {c_theirs / 2**10:.0f} KiB; "
          f"one plain copy is {one_copy / 2**10:.0f} KiB -> expflow uses {c_ours / one_copy:.2f} copies, "
          f"full copy {c_theirs / one_copy:.0f}")
    # The verdict on medians: the page cache's write-back stalls (tens of ms) land on either
    # side at random and move the means by 2x from one run to the next.
    ratio = statistics.median(t_ours) / statistics.median(t_theirs)
    print(f"median ms/package: expflow {1000 * statistics.median(t_ours):.2f}, full copy "
          f"{1000 * statistics.median(t_theirs):.2f}")
    print(f"  [{'PASS' if ratio <= GOAL else 'MISS'}] a package of unchanged code <= {GOAL}x a plain full copy "
          f"of it (medians): {ratio:.2f}x")
    breakdown(config, code_root, max(10, min(n, 40)))


GOAL = 0.5

# What a package's creation spends its time on, and why it stays.
PARTS = (
    ("expflow.package.codestore", "_collect", None, "finding the files (glob, one lstat each: the stat index needs it)"),
    ("expflow.package.codestore", "_StatIndex.__init__", None, "reading the stat index (hash + credential verdict per unchanged file)"),
    ("expflow.package.codestore", "_StatIndex.save", None, "rewriting the index (only when a file was hashed anew)"),
    ("expflow.package.codestore", "CodeStore.materialize", None, "code/: its directories and one hardlink per file"),
    ("expflow.package.codestore", "CodeStore._store", None, "objects the store lacked (none when the code is unchanged)"),
    ("expflow.package.package", "write_unpublished", None, "code.json and config.yaml, each fsync'd (before the manifest)"),
    ("expflow.package.package", "atomic_write_json", None, "manifest.json: temp file, fsync, rename, directory fsync"),
    ("expflow.package.package", "dump_config", None, "the resolved config as YAML (libyaml)"),
    ("expflow.package.package", "GitProbe.__init__", None, "starting `git status` (it runs beside the snapshot)"),
    ("expflow.package.package", "GitProbe.result", None, "waiting for git's answer"),
)


def breakdown(config: dict, code_root: Path, n: int) -> None:
    import collections
    import functools
    import importlib

    spent: collections.Counter[str] = collections.Counter()
    undo = []
    for module, name, _, _ in PARTS:
        mod = importlib.import_module(module)
        owner, attr = (mod, name) if "." not in name else (getattr(mod, name.split(".")[0]), name.split(".")[1])
        fn = getattr(owner, attr)

        def timed(*a, _fn=fn, _key=name, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                spent[_key] += time.perf_counter() - t0
        undo.append((owner, attr, fn))
        setattr(owner, attr, functools.wraps(fn)(timed))
    total = 0.0
    try:
        with tempfile.TemporaryDirectory(prefix="expflow-bench-") as tmp:
            for i in range(n + 1):
                if i == 1:
                    spent.clear()
                t0 = time.perf_counter()
                SavePackage.create(Path(tmp) / f"run{i:04d}", config=dict(config, run_id=f"run{i:04d}"), overrides=[],
                                   store=Path(tmp) / ".store", code_root=code_root)
                if i:
                    total += time.perf_counter() - t0
    finally:
        for owner, attr, fn in undo:
            setattr(owner, attr, fn)
    print(f"\nwhere a package's {1000 * total / n:.2f} ms go (instrumented pass, {n} packages after a first one):")
    nested = spent["CodeStore._store"]  # inside materialize
    for _, name, _, why in PARTS:
        print(f"  {1000 * spent[name] / n:7.2f} ms  {why}")
    rest = total - sum(v for k, v in spent.items()) + nested
    print(f"  {1000 * rest / n:7.2f} ms  the rest: reading each file the index does not vouch for (hash and "
          f"credential check), the manifest's fields, fingerprints")


def code_disk(trees) -> int:
    """Bytes of the code *files* (each inode once): what a snapshot really duplicates."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tree in trees:
        for p in Path(tree).rglob("*"):
            st = os.lstat(p)
            if not p.is_file() or (st.st_dev, st.st_ino) in seen or p.name == "args.json":
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def disk_usage_one(files: list[Path]) -> int:
    return sum(os.stat(f).st_blocks * 512 for f in files)


if __name__ == "__main__":
    main()
