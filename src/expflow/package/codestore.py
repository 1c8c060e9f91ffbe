"""Content-addressed code snapshots.

Every file of a snapshot is stored once under ``<store>/objects/<sha256[:2]>/<sha256[2:]>``
(read-only) and hardlinked into a package's ``code/``: a thousand packages of the same
code cost the disk about one copy. Where a hardlink is impossible (another file
system) the file is copied.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from expflow.errors import PackageError

DEFAULT_INCLUDE = (
    "src/**/*.py",
    "conf/**/*.yaml",
    "analysis/**/*.py",
    "workflows/**/*",
    "Snakefile",
    "pyproject.toml",
    "*.py",
)
DEFAULT_EXCLUDE = (
    "**/__pycache__/**",
    "**/*.pyc",
    "**/.*",
    ".*/**",
)


@dataclass(frozen=True)
class CodeFile:
    path: str  # relative, POSIX
    sha256: str
    size: int
    executable: bool


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def collect_files(
    root: str | os.PathLike[str],
    include: Iterable[str] = DEFAULT_INCLUDE,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    skip_dirs: Iterable[str | os.PathLike[str]] = (),
) -> list[Path]:
    """Files under ``root`` matching an include glob and no exclude glob, sorted."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise PackageError(f"code.root: {root} is not a directory")
    skip = [Path(d).resolve() for d in skip_dirs]
    exclude = list(exclude)
    found: set[Path] = set()
    for pattern in include:
        for p in root.glob(pattern):
            if not p.is_file() or p.is_symlink():
                continue
            rel = p.relative_to(root).as_posix()
            if any(fnmatch.fnmatch(rel, ex) for ex in exclude):
                continue
            rp = p.resolve()
            if any(rp.is_relative_to(d) for d in skip):
                continue
            found.add(p)
    return sorted(found)


class CodeStore:
    """The shared object store of code snapshots."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.objects = self.root / "objects"

    def object_path(self, sha: str) -> Path:
        return self.objects / sha[:2] / sha[2:]

    def add(self, source: Path) -> CodeFile:
        """Store ``source`` (if not already stored) and describe it."""
        st = source.stat()
        sha = _hash_file(source)
        obj = self.object_path(sha)
        if not obj.exists():
            obj.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".obj.", suffix=".tmp", dir=obj.parent)
            os.close(fd)
            try:
                shutil.copyfile(source, tmp)
                if _hash_file(Path(tmp)) != sha:  # the file changed while we copied it
                    raise PackageError(f"{source}: changed while the code snapshot was taken")
                os.chmod(tmp, 0o444)
                os.replace(tmp, obj)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return CodeFile(
            path="",
            sha256=sha,
            size=st.st_size,
            executable=bool(st.st_mode & stat.S_IXUSR),
        )

    def snapshot(
        self,
        root: str | os.PathLike[str],
        target: str | os.PathLike[str],
        include: Iterable[str] = DEFAULT_INCLUDE,
        exclude: Iterable[str] = DEFAULT_EXCLUDE,
        skip_dirs: Iterable[str | os.PathLike[str]] = (),
    ) -> list[CodeFile]:
        """Snapshot the matching files of ``root`` into ``target`` (a package's ``code/``)."""
        root = Path(root).resolve()
        entries = []
        for src in collect_files(root, include, exclude, skip_dirs):
            f = self.add(src)
            entries.append(CodeFile(src.relative_to(root).as_posix(), f.sha256, f.size, f.executable))
        self.materialize(entries, target)
        return entries

    def materialize(self, entries: Iterable[CodeFile], target: str | os.PathLike[str]) -> None:
        target = Path(target)
        made: set[Path] = set()
        for e in entries:
            dest = target / e.path
            if dest.parent not in made:
                dest.parent.mkdir(parents=True, exist_ok=True)
                made.add(dest.parent)
            obj = self.object_path(e.sha256)
            if not obj.exists():
                raise PackageError(f"code store {self.root}: object {e.sha256} for {e.path} is missing")
            link_or_copy(obj, dest)


def link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except FileExistsError:
        dest.unlink()
        os.link(src, dest)
    except OSError:  # another file system, or links not allowed: a plain copy
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o444)


def code_fingerprint(entries: Iterable[CodeFile]) -> str:
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.path):
        h.update(f"{e.path}\0{e.sha256}\n".encode())
    return h.hexdigest()


def verify_snapshot(code_dir: str | os.PathLike[str], entries: Iterable[CodeFile]) -> list[str]:
    """Paths of the snapshot whose content no longer matches what was recorded."""
    code_dir = Path(code_dir)
    bad = []
    for e in entries:
        p = code_dir / e.path
        if not p.is_file() or _hash_file(p) != e.sha256:
            bad.append(e.path)
    return bad
