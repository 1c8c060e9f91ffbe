"""What every source kind shares: the raw run a read gives, merging the runs of several
files, the Source base classes and their helpers. The kinds' modules import this; the
package (:mod:`expflow.align.sources`) loads the kinds and picks one by name."""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from expflow.errors import AlignError

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")


# RawRun.info key: one line saying what a read skipped as damaged (file, count, first bad line)
DAMAGE = "damage"
# RawRun.info key: lines a read wants reported as warnings (bad CSV cells per column...)
NOTES = "notes"


class SourceError(AlignError):
    """A source cannot be read: missing, corrupt, truncated, or refused by its service."""


@dataclass
class RawRun:
    """A source's points, in log order; ``row`` is the source's own step."""

    points: pd.DataFrame  # metric (categorical), row (int64), value (float64)[, segment (int32)]
    step_keys: dict[str, str] = field(default_factory=dict)  # metric or glob -> step key
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        return sorted(self.points["metric"].unique().astype(str))

    @property
    def damage(self) -> str | None:
        """What the read skipped as damaged (one line), or None."""
        return self.info.get(DAMAGE) or None


def points_frame(metrics: Iterable[str], rows: Iterable[int], values: Iterable[float]) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    return pd.DataFrame(
        {
            "metric": pd.Categorical(list(metrics)),
            "row": np.fromiter(rows, dtype=np.int64),
            "value": np.fromiter(values, dtype=np.float64),
        }
    )


def merge_runs(runs: list[RawRun]) -> RawRun:
    """Several reads of one framework (files, runs, writers), given in time order, as one
    run: their points one after the other, each read its own ``segment``; step keys
    declared by any of them (a later declaration of the same name wins); ``info["files"]``
    lists what was read, in that order."""
    if len(runs) == 1:
        return runs[0]
    import numpy as np
    import pandas as pd

    parts, step_keys, files = [], {}, []
    info: dict[str, Any] = {}
    for i, run in enumerate(runs):
        p = run.points
        parts.append(pd.DataFrame({"metric": p["metric"].astype(str), "row": p["row"].to_numpy(np.int64),
                                   "value": p["value"].to_numpy(np.float64),
                                   "segment": np.full(len(p), i, dtype=np.int32)}))
        step_keys.update(run.step_keys)
        files += run.info.get("files") or [run.info.get("file") or run.info.get("run_path") or str(i)]
        for k, v in run.info.items():
            if k == DAMAGE and info.get(DAMAGE):
                info[DAMAGE] = f"{info[DAMAGE]}; {v}"
            elif k == NOTES:
                info[NOTES] = [*info.get(NOTES, []), *v]
            elif k not in ("file", "files"):
                info.setdefault(k, v)  # the first read's name, id, config...
    points = pd.concat(parts, ignore_index=True)
    points["metric"] = pd.Categorical(points["metric"])
    info["files"] = files
    return RawRun(points, step_keys, info)


def notes_of(raw: RawRun) -> list[str]:
    """What a read wants said (e.g. a CSV's bad cells), one line each."""
    return list(raw.info.get(NOTES) or [])


class PointBuffer:
    """Collects points while a source reads (lists are the fast way to grow in Python)."""

    def __init__(self) -> None:
        self.metrics: list[str] = []
        self.rows: list[int] = []
        self.values: list[float] = []

    def add(self, metric: str, row: int, value: float) -> None:
        self.metrics.append(metric)
        self.rows.append(row)
        self.values.append(value)

    def frame(self) -> pd.DataFrame:
        return points_frame(self.metrics, self.rows, self.values)


class Source:
    """One kind of source. Subclasses set ``kind`` and the spec fields they take."""

    kind: ClassVar[str]
    required: ClassVar[tuple[str, ...]] = ("path",)
    optional: ClassVar[tuple[str, ...]] = ()
    many_paths: ClassVar[bool] = False  # path may be a list

    def __init__(self, spec: Any):
        self.spec = spec

    # -- spec ----------------------------------------------------------------------
    @classmethod
    def check_spec(cls, spec: Any) -> str | None:
        """A one-line problem with the spec's fields for this kind (prefixed by the caller
        with ``frameworks.<name>.source``), or None."""
        import dataclasses

        defaults = type(spec)(kind=cls.kind)  # the spec's own class (expflow.align.spec.SourceSpec)
        path = getattr(spec, "path", None)
        if path is not None and not isinstance(path, str):
            if not cls.many_paths:
                return f".path: one path for kind {cls.kind}, got {type(path).__name__}"
            if not isinstance(path, list) or not path or not all(isinstance(p, str) and p for p in path):
                return ".path: expected a path, a glob, or a list of them"
        for name in cls.required:
            if getattr(spec, name) in (None, ""):
                return f".{name}: required by kind {cls.kind}"
        for name in (f.name for f in dataclasses.fields(spec)):
            if name == "kind" or name in cls.required or name in cls.optional:
                continue
            if getattr(spec, name) != getattr(defaults, name):
                return f".{name}: not used by kind {cls.kind} (it takes {', '.join(cls.required + cls.optional)})"
        return None

    # -- reading -------------------------------------------------------------------
    def instances(self) -> list[tuple[str | None, Source]]:
        """The runs this source stands for: ``[(None, self)]``, or one per package of an
        expflow runs directory (the suffix names the run)."""
        return [(None, self)]

    def identity(self) -> str:
        """What the source is (not its content): names its cache entry."""
        return f"{self.kind}:{Path(self.spec.path).resolve()}"

    def fingerprint(self) -> str:
        raise NotImplementedError

    def read(self) -> RawRun:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.kind} {self.spec.path}"


def spec_paths(path: Any) -> list[Path]:
    """A spec's ``path``: one path, a list of them, or globs; each must match something."""
    items = [path] if isinstance(path, (str, os.PathLike)) else list(path or [])
    out: list[Path] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?["):
            found = sorted(Path(m) for m in glob.glob(text, recursive=True))
            if not found:
                raise SourceError(f"{text}: the pattern matches no file or directory")
            out += found
        else:
            out.append(require_path(text))
    return list(dict.fromkeys(out))


def describe_paths(path: Any) -> str:
    if isinstance(path, (str, os.PathLike)) or path is None:
        return str(path)
    items = [str(p) for p in path]
    return items[0] if len(items) == 1 else f"[{', '.join(items)}]"


class FileSource(Source):
    """A source in local files: its fingerprint is their ``stat``, never their content.
    Kinds set ``find_files`` (a spec path -> the runs' files under it) and ``read_file``
    (one file -> a RawRun); several files are read in time order and merged."""

    find_files: ClassVar[Callable[[Path], list[Path]]]
    read_file: ClassVar[Callable[[Path], RawRun]]
    many_paths = True

    def files(self) -> list[Path]:
        """The files the source is read from (a SourceError when there are none)."""
        found: list[Path] = []
        for p in spec_paths(self.spec.path):
            found += self.find_files(p)
        return list(dict.fromkeys(found))

    def parse(self, files: list[Path]) -> RawRun:
        return merge_runs(in_time_order([self.read_file(f) for f in files]))

    def identity(self) -> str:
        paths = [self.spec.path] if isinstance(self.spec.path, (str, os.PathLike)) else list(self.spec.path)
        return f"{self.kind}:" + "|".join(str(Path(p).resolve()) if not any(c in str(p) for c in "*?[") else str(p) for p in paths)

    def describe(self) -> str:
        return f"{self.kind} {describe_paths(self.spec.path)}"

    def fingerprint(self) -> str:
        try:
            return stat_fingerprint(self.files())
        except OSError as e:
            raise SourceError(f"{self.describe()}: cannot read: {reason(e)}") from None

    def read(self) -> RawRun:
        return self.parse(self.files())


class CloudSource(Source):
    """A run on a tracking service. Its fingerprint is one metadata call (id + last update);
    its metrics are fetched one key at a time, in parallel (``workers``)."""

    optional = ("host", "workers")

    def cloud_path(self) -> str:
        raise NotImplementedError

    def identity(self) -> str:
        return f"{self.kind}:{self.spec.host or ''}:{self.cloud_path()}"

    def describe(self) -> str:
        return f"{self.kind} {self.cloud_path()}"

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """A service call; any failure is a SourceError naming the run."""
        try:
            return fn(*args)
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"{self.describe()}: {reason(e)}") from None

    def fetch_each(self, keys: list[str], fetch: Callable[[str], T]) -> Iterator[tuple[str, T]]:
        """(key, fetch(key)) for every key, fetched in parallel."""
        with ThreadPoolExecutor(max_workers=max(1, self.spec.workers)) as pool:
            results = self.call(lambda: list(pool.map(fetch, keys)))
        return zip(keys, results, strict=True)


def in_time_order(runs: list[RawRun]) -> list[RawRun]:
    """Reads sorted by when they started (``info["start"]``, seconds), stable otherwise."""
    return sorted(runs, key=lambda r: float(r.info.get("start") or 0.0))


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def stat_fingerprint(files: Iterable[Path]) -> str:
    """path + size + mtime of every file: changes when any of them does."""
    h = hashlib.sha256()
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def is_number(value: Any) -> bool:
    """A real number (not a bool, not NaN): what a metric point may hold."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def reason(e: BaseException) -> str:
    """An exception as a short one-line reason."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def require_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: no such file or directory")
    return p


def some(found: list[Path], where: Path, what: str) -> list[Path]:
    """The matches of a directory search; none is a SourceError."""
    if not found:
        raise SourceError(f"{where}: no {what} found")
    return sorted(found)
