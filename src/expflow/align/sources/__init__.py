"""Sources: where a framework's metrics come from.

Every kind reads its files (or its cloud run) into a :class:`RawRun`: a long table of
``(metric, row, value)`` points in log order, plus the step keys the source declared.
``fingerprint()`` is cheap (a ``stat``, or one metadata call for cloud runs) and changes
whenever the data could have: it keys the cache, so an unchanged source is never read
again. A corrupt or truncated file is a :class:`SourceError` naming the file; a source
that can skip what is damaged (expflow packages) reads the rest and says what it skipped
in ``info[DAMAGE]``: a warning, or with ``--strict`` the framework's error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd

from expflow.errors import AlignError

T = TypeVar("T")


# RawRun.info key: one line saying what a read skipped as damaged (file, count, first bad line)
DAMAGE = "damage"


class SourceError(AlignError):
    """A source cannot be read: missing, corrupt, truncated, or refused by its service."""


@dataclass
class RawRun:
    """A source's points, in log order; ``row`` is the source's own step."""

    points: pd.DataFrame  # metric (categorical), row (int64), value (float64)
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
    return pd.DataFrame(
        {
            "metric": pd.Categorical(list(metrics)),
            "row": np.fromiter(rows, dtype=np.int64),
            "value": np.fromiter(values, dtype=np.float64),
        }
    )


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

    def __init__(self, spec: Any):
        self.spec = spec

    # -- spec ----------------------------------------------------------------------
    @classmethod
    def check_spec(cls, spec: Any) -> str | None:
        """A one-line problem with the spec's fields for this kind (prefixed by the caller
        with ``frameworks.<name>.source``), or None."""
        from expflow.align.spec import SourceSpec

        defaults = SourceSpec(kind=cls.kind)
        for name in cls.required:
            if getattr(spec, name) in (None, ""):
                return f".{name}: required by kind {cls.kind}"
        for name in SourceSpec.__dataclass_fields__:
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


class FileSource(Source):
    """A source in local files: its fingerprint is their ``stat``, never their content.
    One-file kinds set ``find_file`` (spec path -> the file) and ``read_file``."""

    find_file: ClassVar[Callable[[Path], Path]]
    read_file: ClassVar[Callable[[Path], RawRun]]

    def files(self) -> list[Path]:
        """The files the source is read from (a SourceError when there are none)."""
        return [self.find_file(Path(self.spec.path))]

    def parse(self, files: list[Path]) -> RawRun:
        return self.read_file(files[0])

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


def single(found: list[Path], where: Path, what: str) -> Path:
    """The one match of a directory search; none or several is a SourceError."""
    if not found:
        raise SourceError(f"{where}: no {what} found")
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(where)) for p in sorted(found)[:5])
        raise SourceError(f"{where}: {len(found)} found where one {what} was expected ({names}); name one")
    return found[0]


def _kinds() -> dict[str, type[Source]]:
    from expflow.align.sources.csvfile import CsvSource
    from expflow.align.sources.packages import ExpflowSource
    from expflow.align.sources.swanlab import SwanLabCloudSource, SwanLabOfflineSource
    from expflow.align.sources.tensorboard import TensorBoardSource
    from expflow.align.sources.wandb import WandbCloudSource, WandbOfflineSource

    kinds: list[type[Source]] = [
        SwanLabOfflineSource,
        SwanLabCloudSource,
        WandbOfflineSource,
        WandbCloudSource,
        TensorBoardSource,
        CsvSource,
        ExpflowSource,
    ]
    return {k.kind: k for k in kinds}


SOURCE_KINDS: dict[str, type[Source]] = _kinds()


def make_source(spec: Any) -> Source:
    return SOURCE_KINDS[spec.kind](spec)
