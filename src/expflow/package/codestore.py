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
    a secrets directory or a ``.env`` file (see the module's doc)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise PackageError(f"code.root: {root} is not a directory")
    skip = [Path(d).resolve() for d in skip_dirs]
    if os.environ.get(SECRETS_DIR_ENV):
        skip.append(Path(os.environ[SECRETS_DIR_ENV]).resolve())
    exclude = list(exclude)
    found: set[Path] = set()
    for pattern in include:
        for p in root.glob(pattern):
            if not p.is_file() or p.is_symlink():
                continue
            rel = p.relative_to(root).as_posix()
            if never_taken(rel) or any(fnmatch.fnmatch(rel, ex) for ex in exclude):
                continue
            rp = p.resolve()
            if any(rp.is_relative_to(d) for d in skip):
                continue
            found.add(p)
    return sorted(found)


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
            raise PackageError(
                f"code snapshot: {p.relative_to(root).as_posix()} has a credential in key {key!r}; "
                "snapshots never take credentials: move it to an environment variable or secrets/, "
                "or leave the file out with code.exclude"
            )
    return found


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
        """Snapshot the matching files of ``root`` into ``target`` (a package's ``code/``);
        refused (PackageError) when a config file carries a credential."""
        root = Path(root).resolve()
        entries = []
        # Every file checked before any is stored: a refused snapshot leaves nothing behind.
        for src in check_sources(root, include, exclude, skip_dirs):
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
