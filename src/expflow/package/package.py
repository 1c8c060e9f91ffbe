"""The save-package: one directory per run, the contract every stage reads and writes.

Layout of ``runs/<run_id>/``::

    manifest.json          format, run id, seed, overrides, fingerprint, git, versions,
                           status history, devices, started/finished (written last on create)
    config.yaml            the fully resolved config
    .hydra/                Hydra's own config.yaml, hydra.yaml, overrides.yaml
    code/  code.json       the code snapshot (hardlinks into the shared store) and its listing
    checkpoints/           step-XXXXXXXX.pt files and index.json (fast/slow/persistent tracks)
    metrics/records.log    append-only checksummed metric records
    logs/rank<R>.out|err   stdout/stderr per rank
    heartbeat.json         liveness of the process working on the package
    tracker/  analysis/    tracker offline files, analysis outputs
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

from expflow.atomic import atomic_write_json, atomic_write_text, write_unpublished
from expflow.errors import CheckpointError, ExpflowError, PackageError
from expflow.package import shapes
from expflow.package.checkpoints import CheckpointStore, RetentionPolicy
from expflow.package.codestore import CodeFile, CodeStore, code_fingerprint, link_or_copy
from expflow.package.manifest import FORMAT, MANIFEST, MANIFEST_LOCK, RECORDS, lease_request_of
from expflow.package.records import RecordScan, RecordWriter, scan_records
from expflow.package.status import Status, derive_status, is_claim, process_identity
from expflow.package.versions import GitProbe, environment_versions
from expflow.paths import translate_write_errors
from expflow.runid import config_hash
from expflow.timestamps import utc_now


def dump_config(config: dict[str, Any]) -> str:
    """A resolved config as YAML that OmegaConf reads back as written: a string its loader
    would take for a number (``6099e1067548``, a run id, is a float to OmegaConf though not to
    PyYAML) is quoted. PyYAML (its C emitter where built) writes it ~20x faster than an
    OmegaConf round trip."""
    return yaml.dump(config, Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True)


class _ConfigDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    _resolver: Any = None

    def represent_str(self, data: str) -> yaml.ScalarNode:  # type: ignore[override]
        resolver = _ConfigDumper._resolver
        if resolver is None:
            from omegaconf._utils import get_yaml_loader

            resolver = _ConfigDumper._resolver = get_yaml_loader()("")
        if resolver.resolve(yaml.ScalarNode, data, (True, False)) != "tag:yaml.org,2002:str":
            return self.represent_scalar("tag:yaml.org,2002:str", data, style="'")
        return yaml.representer.SafeRepresenter.represent_str(self, data)


_ConfigDumper.add_representer(str, _ConfigDumper.represent_str)


def _environment(store: str | os.PathLike[str], package_dir: Path) -> str:
    """The software environment, stored once in the store and linked into the package."""
    from expflow.package import environment

    sha = environment.store_environment(store)
    environment.link_into(store, sha, package_dir)
    return sha


def read_plain_config(path: Path) -> dict[str, Any]:
    """A package's resolved config as plain data (PyYAML's C loader: ~10x OmegaConf's speed);
    {} when it is missing or not a mapping. Wrong types are a PackageError naming the file."""
    try:
        cfg = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    if not isinstance(cfg, dict):
        return {}
    shapes.check(cfg, shapes.config_shape(), path, "config")  # wrong types: the package is listed as unreadable
    return cfg


def config_fingerprint(config: dict[str, Any]) -> str:
    """Hash of the resolved config, without what names or places the run (run id, paths;
    a package's config holds no hydra node)."""
    return config_hash(config)


class SavePackage:
    """A save-package directory. Create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    # -- layout ------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def hydra_dir(self) -> Path:
        return self.path / ".hydra"

    @property
    def code_dir(self) -> Path:
        return self.path / "code"

    @property
    def code_listing_path(self) -> Path:
        return self.path / "code.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def heartbeat_path(self) -> Path:
        return self.path / "heartbeat.json"

    @property
    def tracker_dir(self) -> Path:
        return self.path / "tracker"

    @property
    def analysis_dir(self) -> Path:
        return self.path / "analysis"

    def log_path(self, rank: int, stream: str) -> Path:
        return self.logs_dir / f"rank{rank}.{stream}"

    # -- creation ------------------------------------------------------------------
    @classmethod
    @translate_write_errors  # a full disk or read-only place mid-creation: one line naming the path
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        config: dict[str, Any],
        overrides: Iterable[str] = (),
        store: str | os.PathLike[str],
        code_root: str | os.PathLike[str] | None = None,
        code_include: Iterable[str] | None = None,
        code_exclude: Iterable[str] | None = None,
        code_from: SavePackage | None = None,
        hydra_files: dict[str, str] | None = None,
        origin: dict[str, Any] | None = None,
        claim: bool = False,
    ) -> SavePackage:
        """Materialize a new package. The manifest is written last: a directory without
        one is an interrupted creation, never a package.

        The code comes from ``code_root`` (snapshot of the working tree) or, for a
        rerun, from another package's snapshot (``code_from``). ``claim``: this process
        goes on to run the package (see :meth:`claim`); without it the package is pending,
        for whoever runs it later (``expflow materialize``).
        """
        pkg = cls(path)
        if pkg.manifest_path.exists():
            raise PackageError(f"{pkg.path}: a package already exists here (use `expflow continue`)")
        created = not pkg.path.exists()
        pkg.path.mkdir(parents=True, exist_ok=True)
        try:
            run_id = str(config.get("run_id") or pkg.path.name)
            code_store = CodeStore(store)
            if code_from is not None:
                entries = code_from.code_files()
                pkg.code_dir.mkdir(exist_ok=True)
                for e in entries:
                    dest = pkg.code_dir / e.path
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    link_or_copy(code_from.code_dir / e.path, dest)
                git = code_from.manifest().get("git")
            else:
                from expflow.package import codestore

                root = Path(code_root or ".").resolve()
                probe = GitProbe(root)  # runs beside the snapshot
                try:
                    entries = code_store.snapshot(
                        root,
                        pkg.code_dir,
                        include=code_include or codestore.DEFAULT_INCLUDE,
                        exclude=code_exclude or codestore.DEFAULT_EXCLUDE,
                        skip_dirs=[pkg.path.parent, code_store.root],
                    )
                finally:
                    git = probe.result()  # waited for on every path (no process left behind)
            # Files of a package nobody reads before its manifest exists: written in place and
            # fsync'd; the manifest's atomic write (its directory fsync included) publishes them.
            write_unpublished(pkg.code_listing_path, (json.dumps([vars(e) for e in entries], indent=2) + "\n").encode())
            # Already resolved plain data: PyYAML writes it ~20x faster than an OmegaConf round trip.
            write_unpublished(pkg.config_path, dump_config(config).encode("utf-8"))
            for name, text in (hydra_files or {}).items():
                atomic_write_text(pkg.hydra_dir / name, text)
            software = _environment(store, pkg.path)
            code_fp = code_fingerprint(entries)
            cfg_fp = config_fingerprint(config)
            now = utc_now()
            manifest = {
                "format": FORMAT,
                "run_id": run_id,
                "created": now,
                "seed": config.get("seed"),
                "overrides": list(overrides),
                "fingerprint": hashlib.sha256(f"{code_fp}:{cfg_fp}".encode()).hexdigest(),
                "fingerprints": {"code": code_fp, "config": cfg_fp},
                "code": {"files": len(entries), "bytes": sum(e.size for e in entries), "store": str(Path(store).resolve())},
                "git": git,
                "versions": environment_versions(),
                "environment": software,  # the software environment's id (environment/<id>.json)
                "status": Status.QUEUED.value,
                "status_history": [{"status": Status.QUEUED.value, "time": now, **process_identity(),
                                    **({"note": "starting", "claim": True} if claim else {})}],
                "gpus": [],
                "lease_request": lease_request_of(config),  # read by `expflow run` before anything else
                "device": None,
                "started": None,
                "finished": None,
                "attempts": [],
                "error": None,
                "origin": origin,
                "progress": {"epoch": 0, "step": 0, "max_epochs": _max_epochs(config)},
            }
            atomic_write_json(pkg.manifest_path, manifest)
        except BaseException:
            # No manifest: an interrupted creation, never a package. Where there was nothing,
            # leave nothing (a refused snapshot, a full disk, Ctrl-C).
            if created and not pkg.manifest_path.exists():
                shutil.rmtree(pkg.path, ignore_errors=True)
            raise
        return pkg

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SavePackage:
        pkg = cls(path)
        if not pkg.path.exists():
            raise PackageError(f"{pkg.path}: no such directory (expected a save-package, e.g. runs/<run_id>)")
        if not pkg.path.is_dir():
            raise PackageError(f"{pkg.path}: not a directory (expected a save-package)")
        if not pkg.manifest_path.is_file():
            raise PackageError(f"{pkg.path}: not a save-package (no {MANIFEST})")
        m = pkg.manifest()
        if m.get("format") != FORMAT:
            raise PackageError(f"{pkg.manifest_path}: unknown package format {m.get('format')!r} (expected {FORMAT!r})")
        return pkg

    # -- manifest ----------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The manifest, checked against its shape (:data:`expflow.package.shapes.MANIFEST`)."""
        if not self.manifest_path.exists() and not self.manifest_path.is_symlink():
            raise PackageError(f"{self.path}: not a save-package (no {MANIFEST})")
        data = shapes.read_json(self.manifest_path, shapes.OBJECT, "manifest")
        if data.get("format") != FORMAT:
            raise PackageError(f"{self.manifest_path}: unknown package format {data.get('format')!r} (expected {FORMAT!r})")
        shapes.check(data, shapes.MANIFEST, self.manifest_path, "manifest")
        return data

    @property
    def run_id(self) -> str:
        return str(self.manifest().get("run_id", self.path.name))

    def update_manifest(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read-modify-write the manifest under the package lock; atomic on disk."""
        with FileLock(str(self.path / MANIFEST_LOCK), timeout=60):
            m = self.manifest()
            change(m)
            atomic_write_json(self.manifest_path, m)
            return m

    def set_status(self, status: Status, *, claim: bool = False, **fields: Any) -> dict[str, Any]:
        """Record ``status`` (an entry of ``status_history`` naming this process); ``note``
        goes into the entry, the other ``fields`` into the manifest. ``claim`` (QUEUED):
        this process is about to run the package (see :meth:`claim`)."""
        now = utc_now()

        def change(m: dict[str, Any]) -> None:
            m["status"] = status.value
            entry = {"status": status.value, "time": now, **process_identity()}
            if "note" in fields:
                entry["note"] = fields.pop("note")
            if claim:
                entry["claim"] = True
            m.setdefault("status_history", []).append(entry)
            if status is Status.RUNNING and not m.get("started"):
                m["started"] = now
            if status is Status.RUNNING:
                m["finished"] = None
            if status in (Status.COMPLETED, Status.CRASHED, Status.PRUNED):
                m["finished"] = now
            m.update(fields)

        return self.update_manifest(change)

    def record_stop(self, reason: str, signame: str, step: int | None, message: str, log: str,
                    **fields: Any) -> None:
        """CRASHED after a stop on a signal (TIMEOUT, PREEMPTED, CANCELLED) at ``step``: the
        reason as the error's type, and ``stopped`` on the current attempt (status counts them)."""
        stopped = {"reason": reason, "signal": signame, "step": step, "time": utc_now()}
        self.set_status(Status.CRASHED, error={"type": reason, "message": message, "log": log}, **fields)
        self.update_manifest(lambda m: (m.get("attempts") or [{}])[-1].update(stopped=stopped))

    def beat(self, **fields: Any) -> None:
        atomic_write_json(self.heartbeat_path, {"format": shapes.HEARTBEAT_FORMAT, "time": time.time(),
                                                **process_identity(), **fields})

    def read_heartbeat(self) -> tuple[dict[str, Any] | None, str | None]:
        """(heartbeat, problem): a damaged heartbeat file is no heartbeat, and says why.

        The heartbeat is liveness only (the live process rewrites it every few seconds), so
        a damaged one never makes a package unusable: it is ignored and reported."""
        try:
            return shapes.read_json(self.heartbeat_path, shapes.HEARTBEAT, "heartbeat", missing=None), None
        except PackageError as e:
            return None, e.one_line()

    def heartbeat(self) -> dict[str, Any] | None:
        return self.read_heartbeat()[0]

    def recorded_status(self, m: dict[str, Any] | None = None) -> Status:
        m = self.manifest() if m is None else m
        try:
            return Status(m.get("status"))
        except ValueError:
            raise PackageError(f"{self.manifest_path}: invalid manifest: key 'status': "
                               f"unknown status {m.get('status')!r}") from None

    def pending(self, m: dict[str, Any] | None = None) -> bool:
        """QUEUED and never taken by a process (materialized for whoever runs it later)."""
        m = self.manifest() if m is None else m
        history = m.get("status_history") or [{}]
        return self.recorded_status(m) is Status.QUEUED and not m.get("attempts") and not is_claim(history[-1])

    def status(self, heartbeat_timeout: float = 60.0) -> Status:
        """The status as it is now: a recorded active status whose process died is CRASHED.

        Every active status names the process it is up to (the last ``status_history``
        entry, or a newer heartbeat), QUEUED included once a process has claimed the
        package; only a pending package (:meth:`pending`) names none and stays QUEUED.
        """
        m = self.manifest()
        recorded = self.recorded_status(m)
        if self.pending(m):
            return recorded
        history = m.get("status_history") or [{}]
        hb = self.heartbeat()
        writer: dict[str, Any] = history[-1]
        if hb and hb.get("pid") is not None and hb["time"] >= _iso_to_ts(writer.get("time")):
            writer = hb
        return derive_status(recorded, writer, hb["time"] if hb else None, heartbeat_timeout)

    @contextmanager
    def claim(self, note: str = "starting") -> Iterator[None]:
        """Run the body as the process that takes this package to run it.

        A QUEUED package is claimed first (a history entry naming this process, unless it
        already names it): killed from then on before the run leaves QUEUED, the package
        shows CRASHED, not pending. An exception out of the body while the claim is still
        the package's last word (the run never got to PREPARING: no GPU, interrupted while
        waiting) withdraws it: the package is pending again, with the reason as its note.
        Not QUEUED: nothing to claim, the body just runs.
        """
        mine = self._claim(note)
        try:
            yield
        except BaseException as e:
            if mine:
                self._withdraw_claim(e)
            raise

    def _claim(self, note: str) -> bool:
        me = process_identity()
        claimed = False

        def change(m: dict[str, Any]) -> None:
            nonlocal claimed
            if m.get("status") != Status.QUEUED.value:
                return
            history = m.setdefault("status_history", [])
            if history and is_claim(history[-1]) and _same_process(history[-1], me):
                claimed = True
                return
            history.append({"status": Status.QUEUED.value, "time": utc_now(), **me, "note": note, "claim": True})
            claimed = True

        self.update_manifest(change)
        return claimed

    def _withdraw_claim(self, error: BaseException) -> None:
        me = process_identity()
        reason = error.one_line() if isinstance(error, ExpflowError) else (str(error) or error.__class__.__name__)

        def change(m: dict[str, Any]) -> None:
            history = m.get("status_history") or [{}]
            if m.get("status") == Status.QUEUED.value and is_claim(history[-1]) and _same_process(history[-1], me):
                m["status_history"].append({"status": Status.QUEUED.value, "time": utc_now(), **me,
                                            "note": f"not started: {' '.join(reason.split())[:500]}"})

        try:
            self.update_manifest(change)
        except Exception:  # the original error matters more than the withdrawal
            pass

    # -- contents ------------------------------------------------------------------
    def snapshot_env(self, env: dict[str, str], config: Any = None) -> dict[str, str]:
        """``env`` with the package's code snapshot first on the import path
        (``code.pythonpath`` of ``config``, default the package's own), and the working
        directory kept off it: how a run's and an analysis's processes import the run's code."""
        from omegaconf import OmegaConf

        entries = OmegaConf.select(self.config() if config is None else config, "code.pythonpath",
                                   default=["src", "."])
        paths = [str((self.code_dir / p).resolve()) for p in entries]
        env = dict(env)
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["PYTHONSAFEPATH"] = "1"  # the working directory must not shadow the snapshot
        return env

    def config(self) -> Any:
        from omegaconf import DictConfig, OmegaConf

        from expflow.config import placeholders

        placeholders.register()  # a command run's ${expflow:checkpoint} resolves to itself
        data = shapes.read_bytes(self.config_path, "config", "a YAML file")
        if data is None:
            raise PackageError(f"{self.config_path}: missing resolved config")
        try:
            cfg = OmegaConf.create(data.decode("utf-8"))
        except Exception as e:
            raise PackageError(f"{self.config_path}: unreadable config ({e.__class__.__name__})") from None
        if not isinstance(cfg, DictConfig):
            raise PackageError(f"{self.config_path}: not a valid config (expected a mapping, got a list)")
        # The types of every key the schemas declare (what continue, analyze and rerun rely on).
        shapes.check(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True), shapes.config_shape(), self.config_path, "config")
        return cfg

    def code_files(self) -> list[CodeFile]:
        listing = shapes.read_json(self.code_listing_path, shapes.CODE_LISTING, "code listing")
        names = {f.name for f in fields(CodeFile)}
        try:
            return [CodeFile(**{k: v for k, v in e.items() if k in names}) for e in listing]
        except TypeError as e:
            raise PackageError(f"{self.code_listing_path}: invalid code listing ({e})") from None

    def retention_policy(self) -> RetentionPolicy:
        """The config's ``checkpoint`` section as a policy (its defaults where absent)."""
        ck = self.config().get("checkpoint")
        if ck is None:
            ck = {}
        if not hasattr(ck, "get"):
            raise PackageError(f"{self.config_path}: invalid config: key 'checkpoint': expected a mapping")
        try:
            return RetentionPolicy(**{f.name: ck[f.name] for f in fields(RetentionPolicy) if f.name in ck})
        except CheckpointError as e:
            raise CheckpointError(f"{self.config_path}: {e.one_line()}") from None

    def checkpoints(self, policy: RetentionPolicy | None = None) -> CheckpointStore:
        return CheckpointStore(self.checkpoints_dir, policy or self.retention_policy())

    def scan_records(self, strict: bool = False) -> RecordScan:
        return scan_records(self.records_path, strict=strict)

    def check(self) -> None:
        """Every file a run reads or appends to, checked before the package is touched:
        one PackageError naming the first damaged file (and key). A damaged heartbeat is
        not damage (see :meth:`read_heartbeat`); invalid metric record lines are reported
        by :meth:`scan_records`, a torn last one is cut off by the next writer."""
        self.recorded_status(self.manifest())
        self.config()
        self.code_files()
        self.checkpoints().list()
        for path, what in ((self.checkpoints_dir, "checkpoint directory"), (self.records_path.parent, "metrics directory"),
                           (self.logs_dir, "log directory")):
            shapes.expect_dir(path, what)
        shapes.expect_file(self.records_path, "metric records")
        if self.logs_dir.is_dir():
            for p in sorted(self.logs_dir.glob("rank*.*")):
                shapes.expect_file(p, "log")

    def record_writer(self, *, wake: bool = True) -> RecordWriter:
        return RecordWriter(self.records_path, wake=wake)


def _max_epochs(config: dict[str, Any]) -> int | None:
    trainer = config.get("trainer") or {}
    return trainer.get("max_epochs") if isinstance(trainer, dict) else None


def _same_process(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("host", "pid", "pid_started"))


def _iso_to_ts(value: Any) -> float:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except (TypeError, ValueError):
        return 0.0
