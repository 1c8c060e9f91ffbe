"""Tracker ingest: the metrics a program logs to its own tracker, copied into the package's records.

A command run's program may log only to its own tracker (SwanLab or W&B offline, TensorBoard
event files, a CSV file). :class:`TrackerIngest` reads those files with the alignment readers
(:mod:`expflow.align.sources`) while the program runs (:meth:`TrackerIngest.poll`, every ~2 s)
and once after it exited (:meth:`TrackerIngest.final`), and appends the points it has not
ingested yet to the package's records: consecutive points of one file at the same step become
one record ``writer.log({m1: v1, m2: v2}, step=row)`` (epoch None), in the file's log order.

Where the trackers write: :func:`tracker_env` gives the environment a supervisor sets for the
program, so that each tracker writes under ``<package>/tracker/`` where the default sources look:

======================  =================================  ======================================
variable                value                              read by
======================  =================================  ======================================
``SWANLAB_MODE``        ``offline``                        swanlab (0.10: ``Settings.mode``)
``SWANLAB_LOG_DIR``     ``<pkg>/tracker/swanlog``          swanlab 0.10 (``Settings.log_dir``),
                                                           VERL's SwanLab adapter
``SWANLAB_LOGDIR``      ``<pkg>/tracker/swanlog``          swanlab's older name for the same
``WANDB_MODE``          ``offline``                        wandb
``WANDB_DIR``           ``<pkg>/tracker``                  wandb (runs in ``tracker/wandb/``)
``TENSORBOARD_DIR``     ``<pkg>/tracker/tensorboard``      VERL's TensorBoard adapter (a
                                                           convention, not TensorBoard's own)
``EXPFLOW_TRACKER_DIR`` ``<pkg>/tracker``                  the program, to place its own files
======================  =================================  ======================================

A program that passes a directory to its tracker itself (``swanlab.init(logdir=...)``) wins over
the environment: point ``runner.ingest`` at it. No variable steers ``torch.utils.tensorboard``'s
``SummaryWriter()``: its default ``runs/<date>_<host>/`` lies under the program's working directory,
which for a command run is in the code snapshot, hence the default source ``code/runs/**``.

Sources (``runner.ingest``, see :func:`parse_sources`): a kind and a glob relative to the package
(absolute allowed). A match that is a file is one run; a directory holds runs, found as the
readers find them: ``*.swanlab`` and ``run-*/*.swanlab`` (SwanLab), ``*.wandb``, ``*run-*/*.wandb``
and ``wandb/*run-*/*.wandb`` (W&B, never through ``latest-run``), every ``*tfevents*`` file below
it (TensorBoard); a CSV source names files. A file is a *run*, identified by its resolved path
relative to the package (absolute when outside it); the first source that matches a file owns it.

Metric names are what the program logged: a SwanLab key, a W&B history key, a TensorBoard tag, a
CSV column (or the ``metric`` column of a long CSV). TensorBoard event files are read one at a
time (no prefix); a directory of event files below another one of the same source (the
``<logdir>/<tag>_<key>/`` writers of ``SummaryWriter.add_scalars``) prefixes its tags with its path
relative to that top directory (``loss_train/loss``), while separate top directories (one per
start of the program) keep bare tags, so a restarted program continues the same series.

Incremental reading: a file is read again only when its ``stat`` (size, mtime) changed, so a poll
on an unchanged tree costs a directory walk and a ``stat`` per file. Per file and metric the
number of points ingested is remembered; a read appends only the points past it. A file whose
size went down was rewritten (a program restarted from scratch rewriting its CSV): its counts
start over. A step going backwards inside one file is not replayed: the TensorBoard reader drops
the earlier points at or after that step (as TensorBoard does), and the ingest keeps counting
from what it had ingested. A file that cannot be read (being written: a torn last record, a
SwanLab file still empty) is skipped by ``poll`` silently and retried when it changes; ``final``
reads it once more and returns one warning line per file still unreadable.

The ingest state, ``<pkg>/metrics/ingest.json`` (written atomically)::

    {"format": "expflow.ingest/1",
     "files": {"tracker/swanlog/run-x/run-x.swanlab":
                 {"kind": "swanlab", "size": 1824, "mtime_ns": ..., "counts": {"loss": 5}}},
     "floor": 41,                                    # every pending record's seq is above it
     "pending": [["tracker/...", 5, ["loss", "acc"], 3735928559], ...]}

Records are appended in batches (at most ``BATCH`` records): the state is written first, holding
the counts *with* the batch and the batch as ``pending`` (file, step, metric names, CRC-32 of the
values); then the batch is logged and flushed. A supervisor killed anywhere in between leaves a
state whose pending records are checked on the next start (``expflow continue``): those found in
the records file (after ``floor``, in order, same step, names and values) count, the others are
taken off the counts and their files read again. So no point is ingested twice, and none is lost.

A damaged state file (not JSON, wrong shape, unknown format) cannot say what was ingested: if the
records file holds no metric record, the ingest starts over (and ``final`` says so); otherwise it
raises :class:`~expflow.errors.PackageError` naming the file: deleting it ingests every tracker
file again from the start, and points already in the records would then be recorded twice.

Values are exact: TensorBoard's float32 scalars arrive as the float32 value widened to a Python
float; SwanLab, W&B and CSV values as their readers parse them (NaN and infinities kept).
"""

from __future__ import annotations

import glob
import io
import json
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from expflow.atomic import atomic_write_bytes
from expflow.errors import ConfigError, PackageError
from expflow.package.records import scan_records

if TYPE_CHECKING:
    from expflow.align.sources import RawRun

# The readers (and pandas under them) load on the first file to read: a command run whose
# program writes no tracker files never imports them (~0.5 s of its start-up).
_READERS = {
    "read_record_file": "expflow.align.sources.swanlab",
    "read_run_file": "expflow.align.sources.wandb",
    "read_event_files": "expflow.align.sources.tensorboard",
    "read_csv": "expflow.align.sources.csvfile",
}
EVENT_GLOB = "*tfevents*"  # as expflow.align.sources.tensorboard


def __getattr__(name: str) -> Any:
    if name in _READERS:
        import importlib

        value = getattr(importlib.import_module(_READERS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _reader(name: str) -> Any:
    return globals().get(name) or __getattr__(name)

KINDS = ("swanlab", "wandb", "tensorboard", "csv")
# Metrics a tracker logs about the machine (SwanLab's hardware monitor: __swanlab__.cpu.pct, ...):
# left out, they are not the program's, and differ between a run and its rerun.
MONITOR_PREFIXES = ("__swanlab__.",)
STATE_FORMAT = "expflow.ingest/1"
STATE_NAME = "ingest.json"
BATCH = 5000  # records per batch: bounds the state's pending list


@dataclass(frozen=True)
class IngestSource:
    """Where a tracker's files are: ``kind`` (swanlab | wandb | tensorboard | csv) and ``path``,
    a glob relative to the package directory (absolute allowed); ``step``: a CSV's step column."""

    kind: str
    path: str
    step: str = "step"


DEFAULT_PATHS: dict[str, tuple[str, ...]] = {
    "swanlab": ("tracker/swanlog",),
    "wandb": ("tracker/wandb",),
    "tensorboard": ("tracker/**", "code/runs/**"),
}

DEFAULT_SOURCES: tuple[IngestSource, ...] = tuple(
    IngestSource(kind, path) for kind in ("swanlab", "wandb", "tensorboard") for path in DEFAULT_PATHS[kind]
)

_VALID = ("a kind (swanlab, wandb, tensorboard: their default paths) or a mapping "
          "{kind: swanlab|wandb|tensorboard|csv, path: <glob relative to the package>, step: <csv step column>}")


def parse_sources(entries: Any) -> tuple[IngestSource, ...]:
    """The sources of a ``runner.ingest`` config value: None is :data:`DEFAULT_SOURCES`; a list of
    kind names (their default paths) or ``{kind, path, step}`` mappings; ``[]`` ingests nothing.
    A bad entry is a ConfigError naming ``runner.ingest[i]`` and what is valid."""
    if entries is None:
        return DEFAULT_SOURCES
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
        raise ConfigError(f"runner.ingest: expected a list, got {type(entries).__name__} (each entry: {_VALID})")
    out: list[IngestSource] = []
    for i, entry in enumerate(entries):
        where = f"runner.ingest[{i}]"
        if isinstance(entry, str):
            if entry not in DEFAULT_PATHS:
                hint = " (csv has no default path: give {kind: csv, path: ...})" if entry == "csv" else ""
                raise ConfigError(f"{where}: unknown kind {entry!r}{hint}; expected {_VALID}")
            out += [IngestSource(entry, p) for p in DEFAULT_PATHS[entry]]
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected {_VALID}, got {type(entry).__name__}")
        unknown = sorted(str(k) for k in entry if k not in ("kind", "path", "step"))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected {_VALID}")
        kind = entry.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
        path = entry.get("path")
        if path is None and kind in DEFAULT_PATHS:
            paths: tuple[str, ...] = DEFAULT_PATHS[kind]
        elif not isinstance(path, str) or not path.strip():
            raise ConfigError(f"{where}.path: expected a glob relative to the package (e.g. 'code/logs/*.csv'), "
                              f"got {path!r}")
        else:
            paths = (path,)
        step = entry.get("step", "step")
        if "step" in entry and kind != "csv":
            raise ConfigError(f"{where}.step: only a csv source takes a step column")
        if not isinstance(step, str) or not step:
            raise ConfigError(f"{where}.step: expected the name of the CSV's step column, got {step!r}")
        out += [IngestSource(str(kind), p, step) for p in paths]
    return tuple(out)


def tracker_env(pkg: Any) -> dict[str, str]:
    """The environment that makes SwanLab, W&B (and VERL's TensorBoard adapter) write offline
    files under ``<pkg>/tracker/``, where :data:`DEFAULT_SOURCES` look (see the module doc)."""
    tracker = Path(pkg.tracker_dir).resolve()
    swanlog = str(tracker / "swanlog")
    return {
        "SWANLAB_MODE": "offline",
        "SWANLAB_LOG_DIR": swanlog,
        "SWANLAB_LOGDIR": swanlog,
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tracker),
        "TENSORBOARD_DIR": str(tracker / "tensorboard"),
        "EXPFLOW_TRACKER_DIR": str(tracker),
    }


@dataclass
class _File:
    kind: str
    size: int = -1  # the stat of the last read (-1: read it)
    mtime_ns: int = -1
    counts: dict[str, int] = field(default_factory=dict)  # metric -> points ingested


@dataclass(frozen=True)
class _Found:
    key: str
    path: Path
    source: IngestSource
    prefix: str = ""


def _values_crc(names: Iterable[str], values: Iterable[Any]) -> int:
    text = "\n".join(f"{n}\0{float(v)!r}" for n, v in zip(names, values, strict=True))
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


class TrackerIngest:
    """Appends the points of a package's tracker files to its records (see the module doc)."""

    def __init__(self, pkg: Any, writer: Any, sources: Sequence[IngestSource] = DEFAULT_SOURCES):
        self.pkg = pkg
        self.writer = writer
        self.sources = tuple(sources)
        for s in self.sources:
            if s.kind not in KINDS:
                raise ValueError(f"unknown ingest kind {s.kind!r} (expected one of {', '.join(KINDS)})")
        self.root = Path(pkg.path).resolve()
        self.state_path = Path(pkg.records_path).parent / STATE_NAME
        self._files: dict[str, _File] = {}
        self._failed: dict[str, tuple[tuple[int, int], str]] = {}  # key -> (stat, why) of a failed read
        self._batch: list[tuple[str, int, dict[str, float]]] = []
        self._notes: list[str] = []
        self._load()

    # -- public ----------------------------------------------------------------------
    def poll(self) -> int:
        """Ingest the new points of every matching file; returns how many. A file that cannot
        be read yet is skipped (silently) until it changes."""
        return self._run(final=False)[0]

    def final(self) -> list[str]:
        """The last poll, after the program exited: every file not read at its current state is
        read; returns one warning line per file still unreadable (and any note of the ingest)."""
        _, failures = self._run(final=True)
        self._save(self._flush(), [])  # every record is flushed: nothing pending
        notes, self._notes = self._notes, []
        return notes + failures

    # -- one pass --------------------------------------------------------------------
    def _run(self, final: bool) -> tuple[int, list[str]]:
        total = 0
        failures: list[str] = []
        for found in self._discover():
            try:
                st = found.path.stat()
            except OSError:
                continue  # gone since the walk
            fp = (st.st_size, st.st_mtime_ns)
            entry = self._files.get(found.key)
            if entry is not None and entry.kind == found.source.kind and (entry.size, entry.mtime_ns) == fp:
                continue
            failed = self._failed.get(found.key)
            if failed is not None and failed[0] == fp and not final:
                continue
            try:
                run = self._read(found, final)
            except Exception as e:  # noqa: BLE001 - any reader failure: not readable (yet)
                why = _why(e, found.path)
                self._failed[found.key] = (fp, why)
                if final:
                    failures.append(f"{found.key}: {found.source.kind} file not ingested "
                                    f"(cannot be read: {why})")
                continue
            self._failed.pop(found.key, None)
            if entry is None or entry.kind != found.source.kind:
                entry = self._files[found.key] = _File(found.source.kind)
            elif fp[0] < entry.size:
                entry.counts.clear()  # smaller than when last read: rewritten from the start
            total += self._take(found, entry, run)
            # A prefix read of a file being written (swanlab's torn tail): read it again next time,
            # and strictly at the end, whether or not it changes.
            entry.size, entry.mtime_ns = (-1, -1) if run.info.get("torn") is not None else fp
        self._commit()
        return total, failures

    def _discover(self) -> list[_Found]:
        out: list[_Found] = []
        seen: set[Path] = set()
        for source in self.sources:
            files: list[Path] = []
            walked: set[Path] = set()
            for match in self._matches(source.path):
                if source.kind == "tensorboard":  # a walked directory holds every event file below it
                    if walked and any(p in walked for p in match.parents):
                        continue
                    if match.is_dir():
                        walked.add(match)
                files += _run_files(source.kind, match)
            found = []
            for f in files:
                if f in seen:
                    continue
                seen.add(f)
                found.append(f)
            prefixes = _tb_prefixes(found) if source.kind == "tensorboard" else {}
            out += [_Found(self._key(f), f, source, prefixes.get(f.parent, "")) for f in found]
        return out

    def _matches(self, pattern: str) -> list[Path]:
        absolute = os.path.isabs(pattern)
        if glob.has_magic(pattern):  # relative: globbed under the package (whose path may hold '[')
            found = glob.glob(pattern, recursive=True, root_dir=None if absolute else self.root)
        else:
            found = [pattern] if os.path.lexists(pattern if absolute else self.root / pattern) else []
        paths = [p if absolute else os.path.join(self.root, p) for p in found]
        resolved = {Path(os.path.realpath(p)) for p in paths if os.path.exists(p)}
        return sorted(resolved, key=lambda p: p.parts)

    def _key(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def _read(self, found: _Found, final: bool) -> RawRun:
        kind, path = found.source.kind, found.path
        if kind == "swanlab":  # while the program runs, the flushed prefix of its buffered writes
            return _reader("read_record_file")(path, partial=not final)
        if kind == "wandb":
            return _reader("read_run_file")(path)
        if kind == "tensorboard":
            return _reader("read_event_files")([path], path.parent)
        data = path.read_bytes()
        if not final:  # a line still being written would parse as a wrong value: up to the last newline
            data = data[: data.rfind(b"\n") + 1]
            if not data:
                from expflow.align.sources import SourceError

                raise SourceError(f"{path}: no complete line yet")
        return _reader("read_csv")(cast(Path, io.BytesIO(data)), found.source.step)

    def _take(self, found: _Found, entry: _File, run: RawRun) -> int:
        """Queue the points of ``run`` past the file's counts; returns how many."""
        import numpy as np
        import pandas as pd

        pts = run.points
        if not pts.empty:  # the tracker's own machine monitor (CPU, memory): not the program's metrics
            pts = pts[~pts["metric"].astype(str).str.startswith(MONITOR_PREFIXES)]
        if pts.empty:
            return 0
        codes, uniques = pd.factorize(pts["metric"].astype(str), sort=False)
        names = [found.prefix + str(n) for n in uniques]
        old = np.array([entry.counts.get(n, 0) for n in names], dtype=np.int64)
        index = pd.Series(codes).groupby(codes).cumcount().to_numpy()
        new = np.flatnonzero(index >= old[codes])
        totals = np.bincount(codes, minlength=len(names))
        rows = pts["row"].to_numpy()[new].tolist()
        values = pts["value"].to_numpy(dtype=np.float64)[new].tolist()
        record: dict[str, float] = {}
        step = 0
        for row, value, code in zip(rows, values, codes[new].tolist(), strict=True):
            name = names[code]
            if record and (row != step or name in record):
                self._add(found.key, entry, step, record)
                record = {}
            step = int(row)
            record[name] = value
        if record:
            self._add(found.key, entry, step, record)
        for name, total, before in zip(names, totals.tolist(), old.tolist(), strict=True):
            if total < before:  # the reader dropped points (a step went backwards): keep counting on
                entry.counts[name] = before
        return len(new)

    def _add(self, key: str, entry: _File, step: int, values: dict[str, float]) -> None:
        for name in values:
            entry.counts[name] = entry.counts.get(name, 0) + 1
        self._batch.append((key, step, values))
        if len(self._batch) >= BATCH:
            self._commit()

    def _commit(self) -> None:
        """State (with the batch as pending) first, then the records, then flush."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        floor = self._acknowledged()
        self._save(floor, [[key, step, list(values), _values_crc(values, values.values())]
                           for key, step, values in batch])
        for _, step, values in batch:
            self.writer.log(values, step=step)
        self.writer.flush()

    def _acknowledged(self) -> int:
        seq = getattr(self.writer, "acknowledged_seq", None)
        return int(seq) if isinstance(seq, int) else self._flush()

    def _flush(self) -> int:
        seq = self.writer.flush()
        return int(seq) if isinstance(seq, int) else -1

    # -- state -------------------------------------------------------------------------
    def _save(self, floor: int, pending: list[list[Any]]) -> None:
        state = {
            "format": STATE_FORMAT,
            "files": {k: {"kind": f.kind, "size": f.size, "mtime_ns": f.mtime_ns, "counts": f.counts}
                      for k, f in self._files.items()},
            "floor": floor,
            "pending": pending,
        }
        atomic_write_bytes(self.state_path, json.dumps(state, separators=(",", ":")).encode() + b"\n")

    def _load(self) -> None:
        path = self.state_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            raise PackageError(f"{path}: cannot read the tracker ingest state ({e.strerror or type(e).__name__})") from None
        try:
            state = json.loads(raw)
            problem = _state_problem(state)
        except (ValueError, UnicodeDecodeError) as e:
            problem = f"not JSON ({e.__class__.__name__})"
        if problem is not None:
            if any(r["kind"] == "metrics" for r in scan_records(self.pkg.records_path).records):
                raise PackageError(
                    f"{path}: damaged tracker ingest state ({problem}); the records already hold metrics, "
                    "so it cannot tell which tracker points were ingested. Delete it to ingest every "
                    "tracker file again from the start (points already recorded would be recorded twice)")
            self._notes.append(f"{path}: damaged tracker ingest state ({problem}); the records hold no "
                               "metrics yet: ingesting the tracker files from the start")
            return
        for key, f in state["files"].items():
            self._files[key] = _File(f["kind"], f["size"], f["mtime_ns"], dict(f["counts"]))
        if state["pending"]:
            self._recover(state["floor"], state["pending"])

    def _recover(self, floor: int, pending: list[list[Any]]) -> None:
        """The pending records of a supervisor killed mid-batch: those not in the records file
        come off the counts, and their files are read again."""
        done = 0
        for rec in scan_records(self.pkg.records_path).records:
            if done == len(pending):
                break
            if rec["kind"] != "metrics" or not isinstance(rec.get("seq"), int) or rec["seq"] <= floor:
                continue
            _, step, names, crc = pending[done]
            values = rec["values"]
            if rec["step"] == step and list(values) == names and _values_crc(names, values.values()) == crc:
                done += 1
        for key, _, names, _ in pending[done:]:
            entry = self._files.get(key)
            if entry is None:
                continue
            for name in names:
                entry.counts[name] = max(0, entry.counts.get(name, 0) - 1)
            entry.size = entry.mtime_ns = -1


def _state_problem(state: Any) -> str | None:
    """What is wrong with a parsed state, or None."""
    if not isinstance(state, dict):
        return "not an object"
    if state.get("format") != STATE_FORMAT:
        return f"format {state.get('format')!r}, expected {STATE_FORMAT!r}"
    files, floor, pending = state.get("files"), state.get("floor"), state.get("pending")
    if not isinstance(files, dict):
        return "key 'files': not an object"
    for key, f in files.items():
        if not (isinstance(f, dict) and f.get("kind") in KINDS and type(f.get("size")) is int
                and type(f.get("mtime_ns")) is int and isinstance(f.get("counts"), dict)
                and all(type(n) is int and n >= 0 for n in f["counts"].values())):
            return f"key 'files.{key}': not a file entry"
    if type(floor) is not int:
        return "key 'floor': not an integer"
    if not isinstance(pending, list):
        return "key 'pending': not a list"
    for i, p in enumerate(pending):
        if not (isinstance(p, list) and len(p) == 4 and isinstance(p[0], str) and type(p[1]) is int
                and isinstance(p[2], list) and all(isinstance(n, str) for n in p[2]) and type(p[3]) is int):
            return f"key 'pending[{i}]': not a pending record"
    return None


def _run_files(kind: str, match: Path) -> list[Path]:
    """The run files of ``kind`` a glob match stands for (the readers' own search patterns,
    without their one-run rule)."""
    if match.is_file():
        name = match.name
        wanted = {"swanlab": name.endswith(".swanlab"), "wandb": name.endswith(".wandb"),
                  "tensorboard": "tfevents" in name, "csv": True}[kind]
        return [match] if wanted else []
    if not match.is_dir():
        return []
    if kind == "swanlab":
        found = sorted(match.glob("*.swanlab")) + sorted(match.glob("run-*/*.swanlab"))
    elif kind == "wandb":
        found = sorted(match.glob("*.wandb")) + sorted(match.glob("*run-*/*.wandb")) \
            + sorted(match.glob("wandb/*run-*/*.wandb"))
        found = [p for p in found if "latest-run" not in p.parts]
    elif kind == "tensorboard":
        found = sorted(match.rglob(EVENT_GLOB))
    else:
        return []  # a csv source names files
    out = []
    for p in found:
        if p.is_file():
            out.append(Path(os.path.realpath(p)))
    return out


def _tb_prefixes(files: list[Path]) -> dict[Path, str]:
    """Event directory -> its tag prefix: its path relative to the topmost event directory of
    the source above it ('' for a topmost one)."""
    dirs = {f.parent for f in files}
    out = {}
    for d in dirs:
        tops = [a for a in (d, *d.parents) if a in dirs]
        top = tops[-1]
        out[d] = "" if top == d else d.relative_to(top).as_posix() + "/"
    return out


def _why(error: BaseException, path: Path) -> str:
    """A read failure as a short reason, without the reader's own path prefix."""
    from expflow.align.sources import SourceError, reason  # loaded by the reader that failed

    text = " ".join(str(error).split())
    if isinstance(error, SourceError):
        for prefix in (f"{path}: ", f"{os.path.realpath(path)}: "):
            if text.startswith(prefix):
                return text[len(prefix):]
        if text.startswith("<_io.BytesIO") and ">: " in text:
            return text.split(">: ", 1)[1]
        return text
    return reason(error)
