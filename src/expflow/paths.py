"""The places expflow writes to: checked before it writes there, and every OSError of a
write turned into one :class:`WriteError` line naming the path and what is wrong with it
(not a directory, read-only, no space left, permission denied).

- :func:`check_writable`: an early check of a directory expflow is about to fill
  (``paths.runs``, ``paths.store``, ``expflow new``'s target): it must be, or be creatable
  as, a directory on a real file system that takes a new file (a one-byte probe, removed).
- :func:`check_package_writable`: the same for a save-package before a run writes to it.
- :func:`writing` / :func:`translate_write_errors`: the write layer; an OSError raised
  inside becomes a :class:`WriteError` (a WriteError already raised passes through).
"""

from __future__ import annotations

import errno
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from expflow.errors import PackageError

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "not a directory",
    errno.EEXIST: "not a directory",
    errno.EISDIR: "is a directory",
    errno.EIO: "input/output error",
}

# Errors that say a write failed and nothing else: where the trainer catches any OSError,
# these are reported as a WriteError (EACCES, ENOENT, ... may come from reads too).
WRITE_ONLY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})

# File systems that hold no files of ours (a path there is a mistake, e.g. paths.runs=/proc/x).
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "debugfs", "tracefs", "securityfs", "pstore",
    "bpf", "configfs", "fusectl", "mqueue", "efivarfs", "binfmt_misc", "autofs", "nsfs", "selinuxfs",
})


class WriteError(PackageError, OSError):
    """A path expflow has to write to cannot be written.

    Also an OSError (``errno``, ``filename``), so code that tolerates a failing write
    (the heartbeat thread, a guarded tracker) still does.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, *, what: str | None = None,
                 code: int | None = None, hint: str | None = None):
        OSError.__init__(self, code, reason, str(path))
        self.reason = reason
        self.what = what  # the setting or command the path comes from (paths.runs, ...)
        self.hint = hint  # what to do about it

    @property
    def path(self) -> Path:
        return Path(self.filename)

    @path.setter
    def path(self, value: str | os.PathLike[str]) -> None:
        self.filename = str(value)

    def __str__(self) -> str:
        text = f"cannot write {self.path}: {self.reason}"
        if self.what:
            text += f" ({self.what})"
        if self.hint:
            text += f"; {self.hint}"
        return text

    def __reduce__(self) -> Any:
        return (_rebuild, (str(self.path), self.reason, self.what, self.errno, self.hint))


def _rebuild(path: str, reason: str, what: str | None, code: int | None, hint: str | None) -> WriteError:
    return WriteError(path, reason, what=what, code=code, hint=hint)


# -- diagnosis ---------------------------------------------------------------------------
def _lexists(p: Path) -> bool:
    return os.path.lexists(p)


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor."""
    p = Path(os.path.abspath(path))
    while not _lexists(p) and p != p.parent:
        p = p.parent
    return p


def _not_a_directory(path: Path) -> Path | None:
    """The first component of ``path`` (from the root down) that exists and is not a directory."""
    p = Path(os.path.abspath(path))
    for candidate in [*reversed(p.parents), p]:
        if _lexists(candidate) and not candidate.is_dir():
            return candidate
        if not _lexists(candidate):
            return None
    return None


def filesystem_type(path: str | os.PathLike[str]) -> str | None:
    """The type of the file system ``path`` is on (Linux: from /proc/self/mountinfo), or None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    target = os.path.realpath(nearest_existing(Path(path)))
    best, kind = "", None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # \040 is a space
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, tail.split()[0]
    return kind


def _pseudo(path: Path) -> str | None:
    kind = filesystem_type(path)
    return kind if kind in PSEUDO_FILESYSTEMS else None


def write_error(error: OSError, path: str | os.PathLike[str] | None = None, *, what: str | None = None,
                hint: str | None = None) -> WriteError:
    """``error`` (an OSError of a write to ``path``, or to its ``filename``) as a WriteError."""
    if isinstance(error, WriteError):
        if what and not error.what:
            error.what = what
        if hint and not error.hint:
            error.hint = hint
        return error
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list) and error.args[0]:
        _, dest, why = error.args[0][0]  # copytree's first failure: (source, destination, message)
        found = re.search(r"\[Errno (\d+)\]", str(why))
        error = OSError(int(found[1]), os.strerror(int(found[1])), dest) if found else OSError(None, str(why), dest)
    # A copy, link or rename names its destination second: that is the path written to.
    named = error.filename2 or error.filename
    target = Path(os.fsdecode(named) if named else path if path is not None else "?")
    if target.name.startswith(".") and target.name.endswith(".tmp"):
        target = target.parent  # a writer's temp file: the place it was written to is the news
    code = error.errno
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _not_a_directory(target)
        if blocker is not None:
            return WriteError(blocker, "not a directory", what=what, code=errno.ENOTDIR, hint=hint)
    kind = _pseudo(target) if code in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS) else None
    if kind:
        reason = f"on a {kind} file system, which holds no files"
    elif code in _REASONS:
        reason = _REASONS[code]
    else:
        reason = (error.strerror or str(error) or error.__class__.__name__).lower()
    return WriteError(target, reason, what=what, code=code, hint=hint)


@contextmanager
def writing(path: str | os.PathLike[str] | None = None, *, what: str | None = None) -> Iterator[None]:
    """Run a write: an OSError inside becomes a :class:`WriteError` naming its path
    (the error's own filename, else ``path``)."""
    try:
        yield
    except OSError as e:
        raise write_error(e, path, what=what) from None


F = TypeVar("F", bound=Callable[..., Any])


def translate_write_errors(fn: F) -> F:
    """Decorator: every OSError ``fn`` raises becomes a :class:`WriteError`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with writing():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# -- early checks --------------------------------------------------------------------------
def _probe(directory: Path) -> None:
    """Create a one-byte file in ``directory`` and remove it (raises the OSError if it cannot)."""
    fd, tmp = tempfile.mkstemp(prefix=".expflow-probe.", suffix=".tmp", dir=directory)
    try:
        os.write(fd, b"\0")  # a file system with no block left fails here, not at mkstemp
    finally:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def check_writable(path: str | os.PathLike[str], *, what: str | None = None) -> Path:
    """Check that ``path`` is a directory expflow can write into, or that it can be created
    (its closest existing ancestor is a writable directory). Creates nothing that stays.

    Raises :class:`WriteError` naming the path at fault and what is wrong with it.
    """
    path = Path(path)
    blocker = _not_a_directory(path)
    if blocker is not None:
        raise WriteError(blocker, "not a directory", what=_label(path, blocker, what), code=errno.ENOTDIR)
    existing = nearest_existing(path)
    kind = _pseudo(existing)
    if kind:
        raise WriteError(path, f"on a {kind} file system, which holds no files", what=what)
    try:
        _probe(existing)
    except OSError as e:  # named by the directory, not by the probe file
        raise write_error(OSError(e.errno, e.strerror), existing, what=_label(path, existing, what)) from None
    return path


def _label(asked: Path, at: Path, what: str | None) -> str | None:
    """What an error about ``at`` says of the path asked for, when that is another path."""
    if at == Path(os.path.abspath(asked)):
        return what
    return f"{what}={asked}" if what else f"for {asked}"


def check_package_writable(package: str | os.PathLike[str], *, hint: str | None = None) -> None:
    """Check that a run can write to the save-package at ``package``: its directories take a
    new file, and the files it appends to (records, logs, the manifest lock) open for writing.
    Changes nothing."""
    root = Path(package)
    try:
        for d in (root, root / "checkpoints", root / "metrics", root / "logs", root / "tracker"):
            if d.is_dir() or d == root:
                check_writable(d)
        from expflow.package.manifest import MANIFEST_LOCK, RECORDS

        appended = [root / MANIFEST_LOCK, root / RECORDS]
        if (root / "logs").is_dir():
            appended += sorted((root / "logs").glob("rank*.*"))
        for f in appended:
            if f.is_file():
                try:
                    os.close(os.open(f, os.O_WRONLY | os.O_APPEND))  # no write: nothing changes
                except OSError as e:
                    raise write_error(e, f) from None
    except WriteError as e:
        if hint and not e.hint:
            e.hint = hint
        raise
