"""Content-addressed code snapshots.

Every file of a snapshot is stored once under ``<store>/objects/<sha256[:2]>/<sha256[2:]>``
(read-only) and hardlinked into a package's ``code/``: a thousand packages of the same
code cost the disk about one copy. Where a hardlink is impossible (another file
system) the file is copied.

Credentials never enter a snapshot, whatever ``code.include``/``code.exclude`` say:

- a ``secrets/`` directory (at any depth, and ``$EXPFLOW_SECRETS_DIR``), ``.env`` and
  ``.env.*`` files are always left out, silently (they are never code);
- a config file (``.yaml .yml .json .toml .ini .cfg``) with a credential-named key
  (:mod:`expflow.config.credentials`: ``api_key``, ``token``, ``password``...) that
  carries a value refuses the whole snapshot with one line naming the file and the
  key, before any object is stored: move the value to the environment or ``secrets/``,
  or leave the file out with ``code.exclude``. A null, empty or ``${...}`` value is fine.
  Only config files whose bytes contain a credential-like word are parsed, and each
  content is parsed once per process (cached by its hash).
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import hashlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from expflow.errors import PackageError

CONFIG_SUFFIXES = frozenset({".yaml", ".yml", ".json", ".toml", ".ini", ".cfg"})
SECRETS_DIR_ENV = "EXPFLOW_SECRETS_DIR"  # as expflow.tracking.secrets
_verdicts: dict[tuple[str, str], str | None] = {}  # (sha256, suffix) -> credential key, or None

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
    """Files under ``root`` matching an include glob and no exclude glob, sorted; never
    a secrets directory or a ``.env`` file (see the module's doc).

    Include globs as :meth:`pathlib.Path.glob` reads them (``**`` is any number of
    directories, ``*`` takes hidden names too; a trailing ``**`` takes every file below, as
    in Python 3.13), matched with :func:`glob.glob` on names relative to ``root`` (a few
    times faster than pathlib's walk); symlinks are left out; ``skip_dirs`` (the runs
    directory, the store) are compared by their real path, once per directory."""
    root = Path(root).resolve()
    return [root / rel for rel, _, _ in _collect(root, include, exclude, skip_dirs)]


def _collect(
    root: Path, include: Iterable[str], exclude: Iterable[str], skip_dirs: Iterable[str | os.PathLike[str]],
) -> list[tuple[str, str, os.stat_result]]:
    """(relative POSIX path, full path, lstat) of each file :func:`collect_files` takes, in its order."""
    import glob
    import re

    if not root.is_dir():
        raise PackageError(f"code.root: {root} is not a directory")
    skip = [os.path.realpath(d) for d in skip_dirs]
    if os.environ.get(SECRETS_DIR_ENV):
        skip.append(os.path.realpath(os.environ[SECRETS_DIR_ENV]))
    prefixes = tuple(d.rstrip(os.sep) + os.sep for d in skip)
    excluded = re.compile("|".join(f"(?:{fnmatch.translate(ex)})" for ex in exclude) or "(?!)").match
    top = str(root)
    dir_skipped: dict[str, bool] = {}  # a relative directory -> under a skip dir (by real path)
    found: dict[tuple[str, ...], tuple[str, str, os.stat_result]] = {}
    for pattern in include:
        for rel in glob.glob(pattern, root_dir=top, recursive=True, include_hidden=True):
            full = os.path.join(top, rel)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):  # a directory, a symlink (to a file or not), a device
                continue
            rel = rel.replace(os.sep, "/")
            parts = tuple(rel.split("/"))
            if parts in found or never_taken(rel) or excluded(rel):
                continue
            parent = os.path.dirname(full)
            if parent not in dir_skipped:
                real = os.path.realpath(parent)
                dir_skipped[parent] = real in skip or real.startswith(prefixes)
            if not dir_skipped[parent]:
                found[parts] = (rel, full, st)
    return [found[k] for k in sorted(found)]  # the order of pathlib's sorted Paths


def never_taken(rel: str) -> bool:
    """A path (relative, POSIX) no snapshot takes: under a ``secrets/`` directory, or a
    ``.env`` / ``.env.*`` file."""
    *dirs, name = rel.split("/")
    return "secrets" in dirs or name == ".env" or name.startswith(".env.")


def credential_in(path: Path, data: bytes | None = None) -> str | None:
    """The first credential-named key with a value in config file ``path`` (None: none,
    or not a config file). Parsed only when a credential-like word occurs, once per content."""
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        return None
    from expflow.config.credentials import CANDIDATE

    if data is None:
        data = path.read_bytes()
    if not CANDIDATE.search(data):
        return None
    key = (hashlib.sha256(data).hexdigest(), suffix)
    if key not in _verdicts:
        _verdicts[key] = _scan_config(data, suffix)
    return _verdicts[key]


def _scan_config(data: bytes, suffix: str) -> str | None:
    from expflow.config.credentials import credential_keys

    try:
        text = data.decode("utf-8-sig")
        docs = _parse_config(text, suffix)
    except Exception:  # not parseable as its kind: look at it line by line
        return _scan_lines(data.decode("utf-8", "replace"))
    for doc in docs:
        for key in credential_keys(doc, interpolations=False):
            return key
    return None


def _parse_config(text: str, suffix: str) -> list[object]:
    if suffix in (".yaml", ".yml"):
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return list(yaml.load_all(text, Loader=loader))
    if suffix == ".json":
        import json

        return [json.loads(text)]
    if suffix == ".toml":
        import tomllib

        return [tomllib.loads(text)]
    import configparser

    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.read_string(text)
    return [{s: dict(parser.items(s)) for s in parser.sections()} | {"DEFAULT": dict(parser.defaults())}]


_NO_VALUE = {"", "null", "~", "none", "''", '""', "???", "true", "false", "{}", "[]"}


def _scan_lines(text: str) -> str | None:
    """``key: value`` / ``key = value`` lines of an unparseable config file."""
    import re

    from expflow.config.credentials import credential_name

    line_re = re.compile(r"""^\s*["']?([\w.\- ]+?)["']?\s*[:=]\s*(.*?)\s*,?\s*$""")
    for line in text.splitlines():
        m = line_re.match(line)
        if not m or not credential_name(m.group(1).rpartition(".")[2]):
            continue
        value = m.group(2)
        if value.lower() in _NO_VALUE or value[:1] in ("#", ";") or (value.startswith("${") and value.endswith("}")):
            continue
        return m.group(1)
    return None


def check_sources(
    root: str | os.PathLike[str],
    include: Iterable[str] = DEFAULT_INCLUDE,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    skip_dirs: Iterable[str | os.PathLike[str]] = (),
    files: Iterable[Path] | None = None,
) -> list[Path]:
    """The files a snapshot of ``root`` takes; PackageError (one line naming the file and
    key) when a config file among them carries a credential."""
    root = Path(root).resolve()
    found = list(files) if files is not None else collect_files(root, include, exclude, skip_dirs)
    for p in found:
        try:
            key = credential_in(p)
        except OSError:
            continue  # unreadable: the snapshot reports it
        if key is not None:
            raise _credential_error(p.relative_to(root).as_posix(), key)
    return found


def _credential_error(rel: str, key: str) -> PackageError:
    return PackageError(
        f"code snapshot: {rel} has a credential in key {key!r}; "
        "snapshots never take credentials: move it to an environment variable or secrets/, "
        "or leave the file out with code.exclude"
    )


_KEEP_BYTES = 1 << 20  # a file read for hashing keeps its bytes for the store up to this size


class CodeStore:
    """The shared object store of code snapshots."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.objects = self.root / "objects"

    def object_path(self, sha: str) -> Path:
        return self.objects / sha[:2] / sha[2:]

    def add(self, source: Path, data: bytes | None = None, sha: str | None = None) -> CodeFile:
        """Store ``source`` (if not already stored) and describe it. ``data`` and ``sha``:
        its bytes and their hash, when the caller has read it already."""
        st = source.stat()
        if sha is None:
            sha = _hash_file(source)
        self._store(str(source), sha, data)
        return CodeFile(path="", sha256=sha, size=st.st_size, executable=bool(st.st_mode & stat.S_IXUSR))

    def _store(self, source: str, sha: str, data: bytes | None) -> None:
        """The object for ``sha``, made from ``data`` (the bytes that were hashed) or, without
        them, copied from ``source`` and re-hashed; nothing when it is there already."""
        obj = os.path.join(self.objects, sha[:2], sha[2:])
        if os.path.exists(obj):
            return
        os.makedirs(os.path.dirname(obj), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".obj.", suffix=".tmp", dir=os.path.dirname(obj))
        try:
            if data is not None:  # what was hashed is what is stored
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                except OSError as e:  # a full disk: say which file could not be written
                    raise OSError(e.errno, e.strerror, obj) from None
            else:
                os.close(fd)
                shutil.copyfile(source, tmp)
                if _hash_file(Path(tmp)) != sha:  # the file changed while we copied it
                    raise PackageError(f"{source}: changed while the code snapshot was taken")
            os.chmod(tmp, 0o444)
            publish_once(tmp, obj)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def snapshot(
        self,
        root: str | os.PathLike[str],
        target: str | os.PathLike[str],
        include: Iterable[str] = DEFAULT_INCLUDE,
        exclude: Iterable[str] = DEFAULT_EXCLUDE,
        skip_dirs: Iterable[str | os.PathLike[str]] = (),
    ) -> list[CodeFile]:
        """Snapshot the matching files of ``root`` into ``target`` (a package's ``code/``);
        refused (PackageError) when a config file carries a credential.

        Every file is hashed and (a config file) checked for credentials before any object is
        stored, so a refused snapshot leaves nothing behind. A file whose size, mtime, ctime
        and inode equal those in the store's index for ``root`` (:class:`_StatIndex`, git's
        index idea) is not read again: its hash and credential verdict come from there. A
        file read is read once (hashed and checked from the same bytes, which are what is
        stored when the store lacks them; above 1 MiB it is copied and re-hashed instead)."""
        root = Path(root).resolve()
        index = _StatIndex(self.root, root)
        scanned: list[tuple[CodeFile, str, bytes | None]] = []
        for rel, full, st in _collect(root, include, exclude, skip_dirs):
            known = index.get(rel, st)
            if known is not None:
                sha, key = known
                data = None
            else:
                try:
                    with open(full, "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise PackageError(f"code snapshot: cannot read {rel} ({e.strerror or e.__class__.__name__})") from None
                key = credential_in(Path(rel), data) if os.path.splitext(rel)[1].lower() in CONFIG_SUFFIXES else None
                sha = hashlib.sha256(data).hexdigest()
                index.put(rel, st, sha, key)
                if len(data) > _KEEP_BYTES:
                    data = None
            if key is not None:
                index.save()  # a cache, not the snapshot: the next refusal reads nothing
                raise _credential_error(rel, key)
            scanned.append((CodeFile(rel, sha, st.st_size, bool(st.st_mode & stat.S_IXUSR)), full, data))
        index.save()
        entries = [entry for entry, _, _ in scanned]
        self.materialize(entries, target, sources={e.path: (full, data) for e, full, data in scanned})
        return entries

    def materialize(self, entries: Iterable[CodeFile], target: str | os.PathLike[str],
                    sources: dict[str, tuple[str, bytes | None]] | None = None) -> None:
        """Hardlink each entry's object to ``target/<path>`` (a copy across file systems).
        ``sources``: where an object the store lacks is made from (a path and, if read, its
        bytes); without one, a missing object is a PackageError."""
        entries = list(entries)
        target = os.fspath(target)
        objects = os.fspath(self.objects)
        for parent in sorted({os.path.dirname(os.path.join(target, e.path)) for e in entries}):
            os.makedirs(parent, exist_ok=True)
        for e in entries:
            dest = os.path.join(target, e.path)
            obj = os.path.join(objects, e.sha256[:2], e.sha256[2:])
            try:
                link_or_copy(obj, dest)  # the object is there: the common case, one system call
                continue
            except FileNotFoundError:
                pass
            # Not in the store, or another snapshot stored it a moment ago (then linking again
            # is all there is to do).
            if not os.path.exists(obj):
                if sources is None or e.path not in sources:
                    raise PackageError(f"code store {self.root}: object {e.sha256} for {e.path} is missing")
                self._store(sources[e.path][0], e.sha256, sources[e.path][1])
            link_or_copy(obj, dest)


class _StatIndex:
    """What the store knows of the files under one code root: ``path -> [size, mtime_ns,
    ctime_ns, inode, sha256, credential key or None]``, in ``<store>/index/<hash of the
    root>.json``. A cache: a missing, damaged or other-version index is ignored (and
    rewritten). An entry is only recorded when the file's mtime and ctime are more than
    ``_RACY_NS`` older than the moment it was hashed, so a write that keeps the size and
    lands within the file system's timestamp granularity cannot hide behind it (git's
    "racily clean" rule); any write changes the ctime, which no user call can set."""

    _RACY_NS = 2_000_000_000

    def __init__(self, store_root: Path, code_root: Path):
        import json

        self.path = os.path.join(store_root, "index", hashlib.sha256(str(code_root).encode()).hexdigest()[:24] + ".json")
        self.version = _rules_version()
        self.entries: dict[str, list[object]] = {}
        self.changed = False
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
            if isinstance(data, dict) and data.get("version") == self.version and isinstance(data.get("files"), dict):
                self.entries = data["files"]
        except (OSError, ValueError):
            pass
        self.now = time.time_ns()

    def get(self, rel: str, st: os.stat_result) -> tuple[str, str | None] | None:
        e = self.entries.get(rel)
        if (isinstance(e, list) and len(e) == 6 and e[0] == st.st_size and e[1] == st.st_mtime_ns
                and e[2] == st.st_ctime_ns and e[3] == st.st_ino and isinstance(e[4], str) and len(e[4]) == 64
                and (e[5] is None or isinstance(e[5], str))):
            return e[4], e[5]  # type: ignore[return-value]
        return None

    def put(self, rel: str, st: os.stat_result, sha: str, key: str | None) -> None:
        if self.now - max(st.st_mtime_ns, st.st_ctime_ns) > self._RACY_NS:
            self.entries[rel] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, sha, key]
            self.changed = True
        elif rel in self.entries:
            del self.entries[rel]
            self.changed = True

    def save(self) -> None:
        """Atomically replaced (concurrent snapshots: the last one wins, each whole); not
        fsync'd, a cache. Unwritable: left as it was (the next snapshot reads the files)."""
        if not self.changed:
            return
        import json

        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".index.", suffix=".tmp", dir=os.path.dirname(self.path))
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"version": self.version, "files": self.entries}, f, separators=(",", ":"))
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass


@functools.lru_cache(maxsize=1)
def _rules_version() -> str:
    """Changes when the credential rules or this module change (an index's verdicts and
    hashes are only trusted from the same rules)."""
    from expflow.config import credentials

    h = hashlib.sha256(b"expflow.codestore.index/1")
    for mod in (credentials.__file__, __file__):
        try:
            with open(mod, "rb") as f:
                h.update(f.read())
        except OSError:
            pass
    return h.hexdigest()[:16]


def publish_once(tmp: str | os.PathLike[str], obj: str | os.PathLike[str]) -> None:
    """Give the finished temp file ``tmp`` the name ``obj`` unless it already has an object
    (the same bytes: the name is their hash), then drop ``tmp``. Never a rename over an
    existing object: a process hardlinking that object at the same moment would find an
    unlinked inode (link(2) says ENOENT). A crash leaves a .tmp, never a partial object."""
    try:
        os.link(tmp, obj)
    except FileExistsError:
        pass
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if not os.path.exists(obj):  # no hardlinks here: rename, once
            os.replace(tmp, obj)
            return
    os.unlink(tmp)


def link_or_copy(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    try:
        os.link(src, dest)
    except FileExistsError:
        os.unlink(dest)
        os.link(src, dest)
    except FileNotFoundError:  # no such object (the caller decides), not a reason to copy
        raise
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
