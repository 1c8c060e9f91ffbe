"""Atomic, durable file writes: temp file in the same directory, fsync, rename,
fsync of the directory. A reader sees the old content or the new, never a mix."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: str | os.PathLike[str]) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temp file, then move it over ``path`` atomically.

    A failed write (full disk, read-only file system, ...) leaves ``path`` as it was and
    raises :class:`expflow.paths.WriteError` naming ``path`` and what is wrong.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(e, path) from None
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp's 0600 would make packages unreadable to others
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _write_error(e, path) from None
        raise
    fsync_dir(path.parent)


def _write_error(error: OSError, path: Path) -> OSError:
    """``error`` as a WriteError naming ``path`` (not the temp file the error may name)."""
    from expflow.paths import WriteError, write_error

    if isinstance(error, WriteError):
        return error
    if error.filename and error.errno not in (errno.ENOTDIR, errno.EEXIST):
        error = OSError(error.errno, error.strerror)
    return write_error(error, path)


def write_unpublished(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` in place and fsync it, without the temp file, the rename
    and the directory fsync of :func:`atomic_write`: for a file nobody reads before a later
    atomic write publishes it (a save-package's files before its manifest exists, whose
    directory fsync then covers their names too). A failed write raises
    :class:`expflow.paths.WriteError` naming ``path``."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _write_error(e, path) from None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def remove_stale_temps(directory: str | os.PathLike[str]) -> None:
    """Delete temp files left by writers killed mid-write (they never replaced anything)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for p in directory.glob(".*.tmp"):
        try:
            p.unlink()
        except OSError:
            pass
