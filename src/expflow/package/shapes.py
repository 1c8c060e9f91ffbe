"""The one reading layer of a save-package's files: each JSON file is read with
:func:`read_json` and checked against its shape here, before any reader looks inside.

A file that cannot be read, is not JSON, or is JSON of the wrong shape is one
:class:`~expflow.errors.PackageError` (or the subclass the caller names) that says which
file and which key: ``runs/r1/manifest.json: key 'status_history[2]': expected an object,
got a string``. Readers then rely on the shape (a history entry is a dict, a checkpoint's
step an int, a time an ISO string) and never raise a Python error on a damaged package.

Shapes check what expflow itself reads; unknown keys are allowed (other tools and later
versions may add their own), and a key may be missing where every reader has a default.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from expflow.errors import ExpflowError, PackageError

# -- shapes ------------------------------------------------------------------------


class Mismatch(Exception):
    """A value is not of its shape; ``key`` is where, e.g. ``status_history[2].time``."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message

    def describe(self) -> str:
        return f"key {self.key!r}: {self.message}" if self.key else self.message


def kind_of(value: Any) -> str:
    """A JSON value's kind, as a message names it."""
    if value is None:
        return "null"
    for kind, name in _KINDS:  # bool before int: a boolean is an int to isinstance
        if isinstance(value, kind):
            return name
    return type(value).__name__


_KINDS = ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
          (list, "a list"), (dict, "an object"))


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


class Shape:
    """What a JSON value must look like. ``check`` raises :class:`Mismatch`."""

    expected = "a value"

    def check(self, value: Any, key: str = "") -> None:
        raise NotImplementedError

    def fail(self, value: Any, key: str, expected: str | None = None) -> Mismatch:
        return Mismatch(key, f"expected {expected or self.expected}, got {_shown(value)}")


def _shown(value: Any) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = json.dumps(value)
        if len(text) <= 40:
            return f"{kind_of(value)} ({text})"
    return kind_of(value)


class _Anything(Shape):
    expected = "any value"

    def check(self, value: Any, key: str = "") -> None:
        return None


class Type(Shape):
    """An instance of one of ``types`` (a boolean is never an integer or a number)."""

    def __init__(self, expected: str, *types: type, test: Callable[[Any], bool] | None = None):
        self.expected = expected
        self.types = types
        self.test = test

    def check(self, value: Any, key: str = "") -> None:
        if isinstance(value, bool) and bool not in self.types:
            raise self.fail(value, key)
        if not isinstance(value, self.types) or (self.test is not None and not self.test(value)):
            raise self.fail(value, key)


class Nullable(Shape):
    def __init__(self, inner: Shape):
        self.inner = inner
        self.expected = f"{inner.expected} or null"

    def check(self, value: Any, key: str = "") -> None:
        if value is not None:
            try:
                self.inner.check(value, key)
            except Mismatch as e:
                if e.key == key:  # the value itself is wrong, not something inside it
                    raise self.fail(value, key) from None
                raise


class Choice(Shape):
    def __init__(self, values: Iterable[str]):
        self.values = tuple(values)
        self.expected = "one of " + ", ".join(self.values)

    def check(self, value: Any, key: str = "") -> None:
        if not isinstance(value, str) or value not in self.values:
            raise self.fail(value, key)


class Pattern(Shape):
    def __init__(self, expected: str, regex: str):
        self.expected = expected
        self.regex = re.compile(regex)

    def check(self, value: Any, key: str = "") -> None:
        if not isinstance(value, str) or not self.regex.fullmatch(value):
            raise self.fail(value, key)


class _IsoTime(Shape):
    expected = "an ISO date-time string"

    def check(self, value: Any, key: str = "") -> None:
        if not isinstance(value, str):
            raise self.fail(value, key)
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise self.fail(value, key) from None


class _RelativePath(Shape):
    expected = "a relative path inside the package"

    def check(self, value: Any, key: str = "") -> None:
        if not isinstance(value, str) or not value or "\\" in value or "\0" in value:
            raise self.fail(value, key)
        p = PurePosixPath(value)
        if p.is_absolute() or not p.parts or ".." in p.parts:
            raise self.fail(value, key)


class ListOf(Shape):
    def __init__(self, item: Shape):
        self.item = item
        self.expected = "a list"

    def check(self, value: Any, key: str = "") -> None:
        if not isinstance(value, list):
            raise self.fail(value, key)
        for i, v in enumerate(value):
            self.item.check(v, f"{key}[{i}]")


class Obj(Shape):
    """A JSON object with these keys (each of its shape); ``required`` must be present."""

    expected = "an object"

    def __init__(self, fields: dict[str, Shape], required: Iterable[str] = ()):
        self.fields = fields
        self.required = tuple(required)

    def check(self, value: Any, key: str = "") -> None:
        if not isinstance(value, dict):
            raise self.fail(value, key)
        for name in self.required:
            if name not in value:
                raise Mismatch(_join(key, name), "missing")
        for name, shape in self.fields.items():
            if name in value:
                shape.check(value[name], _join(key, name))


class Format(Shape):
    """A file's format version: exactly ``version`` (a file another expflow wrote is refused,
    never misread)."""

    def __init__(self, version: Any):
        self.version = version
        self.expected = f"format {version!r}"

    def check(self, value: Any, key: str = "") -> None:
        if value != self.version or type(value) is not type(self.version):
            raise Mismatch(key, f"format {json.dumps(value, default=str)}, this expflow reads "
                                f"{json.dumps(self.version)} (written by another version of expflow?)")


class MapOf(Shape):
    """A JSON object used as a map: every key matches ``key_regex``, every value ``value``."""

    expected = "an object"

    def __init__(self, key_regex: str, key_expected: str, value: Shape):
        self.key_regex = re.compile(key_regex)
        self.key_expected = key_expected
        self.value = value

    def check(self, value: Any, key: str = "") -> None:
        if not isinstance(value, dict):
            raise self.fail(value, key)
        for k, v in value.items():
            if not self.key_regex.fullmatch(k):
                raise Mismatch(_join(key, k), f"not a valid key (expected {self.key_expected})")
            self.value.check(v, _join(key, k))


def _finite(value: Any) -> bool:
    return math.isfinite(value)


ANY: Shape = _Anything()
STR = Type("a string", str)
INT = Type("an integer", int)
COUNT = Type("an integer >= 0", int, test=lambda v: v >= 0)
NUMBER = Type("a number", int, float, test=_finite)
BOOL = Type("a boolean", bool)
OBJECT = Obj({})
ISO_TIME: Shape = _IsoTime()
RELATIVE_PATH: Shape = _RelativePath()
SHA256 = Pattern("a SHA-256 hex digest", r"[0-9a-f]{64}")

# -- the package's files ---------------------------------------------------------------

STATUSES = ("QUEUED", "PREPARING", "RUNNING", "COMPLETED", "CRASHED", "PRUNED")

PROCESS = {"host": STR, "pid": INT, "pid_started": Nullable(NUMBER)}

HISTORY_ENTRY = Obj(
    {"status": Choice(STATUSES), "time": ISO_TIME, **PROCESS, "note": Nullable(STR), "claim": BOOL},
    required=("status", "time"),
)

MANIFEST = Obj(
    {
        "format": STR,
        "run_id": STR,
        "created": Nullable(ISO_TIME),
        "seed": ANY,
        "overrides": ListOf(STR),
        "fingerprint": Nullable(STR),
        "fingerprints": Nullable(OBJECT),
        "code": Nullable(Obj({"files": COUNT, "bytes": COUNT, "store": Nullable(STR)})),
        "git": Nullable(OBJECT),
        "versions": Nullable(OBJECT),
        "environment": Nullable(STR),
        "environments": ListOf(OBJECT),
        "status": Choice(STATUSES),
        "status_history": ListOf(HISTORY_ENTRY),
        "gpus": Nullable(ListOf(ANY)),
        "device": Nullable(STR),
        "world_size": Nullable(INT),
        "rank_hosts": Nullable(ListOf(STR)),  # the node (or host) of each rank, in rank order
        "started": Nullable(ISO_TIME),
        "finished": Nullable(ISO_TIME),
        "attempts": ListOf(Obj({"kind": STR, "time": Nullable(ISO_TIME), "from_step": INT}, required=("kind",))),
        "error": Nullable(Obj({"type": Nullable(STR), "message": Nullable(STR), "log": Nullable(STR)})),
        "origin": Nullable(OBJECT),
        "progress": Nullable(Obj({"epoch": Nullable(COUNT), "step": Nullable(COUNT), "max_epochs": Nullable(INT),
                                  "steps_per_epoch": Nullable(COUNT)})),
        "lease": Nullable(OBJECT),
        "lease_request": Nullable(Obj({"count": INT, "mem_mb": INT, "max_jobs_per_gpu": INT, "allow_cpu": BOOL})),
        "leases": ListOf(Obj({"gpus": Nullable(ListOf(ANY)), "acquired": Nullable(NUMBER),
                              "released": Nullable(NUMBER)})),
        "scheduler_jobs": ListOf(OBJECT),
        "command": Nullable(Obj({"argv": ListOf(STR), "pid": INT, "cwd": STR})),  # runner=command's program
        # A search trial's package (expflow.search): its study and trial, and where its pruner stopped it.
        "search": Nullable(Obj({"study": STR, "trial": INT, "params": OBJECT, "objective": STR})),
        "pruned": Nullable(Obj({"study": STR, "trial": Nullable(INT), "objective": STR, "step": Nullable(INT),
                                "value": Nullable(NUMBER)})),
    },
    required=("format",),
)

CHECKPOINT_ENTRY = Obj(
    {"step": COUNT, "epoch": COUNT, "file": Pattern("a file name step-<digits>.pt", r"step-\d+\.pt"),
     "sha256": SHA256, "time": NUMBER, "interim": BOOL},
    required=("step", "epoch", "file", "sha256", "time"),
)

CHECKPOINT_INDEX = Obj(
    {
        "format": INT,
        "next_number": Type("an integer >= 1", int, test=lambda v: v >= 1),
        "checkpoints": MapOf(r"[1-9]\d*", "a checkpoint number", CHECKPOINT_ENTRY),
        "tracks": Obj({t: ListOf(Type("an integer >= 1", int, test=lambda v: v >= 1))
                       for t in ("fast", "slow", "persistent")}, required=("fast", "slow", "persistent")),
    },
    required=("next_number", "checkpoints", "tracks"),
)

# heartbeat.json (SavePackage.beat writes it); heartbeats from before the format key have none.
HEARTBEAT_FORMAT = 1
HEARTBEAT = Obj({"format": Format(HEARTBEAT_FORMAT), "time": NUMBER, **PROCESS, "step": COUNT, "epoch": COUNT},
                required=("time",))

CODE_LISTING = ListOf(Obj({"path": RELATIVE_PATH, "sha256": SHA256, "size": COUNT, "executable": BOOL},
                          required=("path", "sha256", "size", "executable")))

# analysis/<script>/analysis.json (expflow.analysis.runner writes it)
ANALYSIS_RECORD = Obj(
    {
        "script": STR,
        "run_id": STR,
        "checkpoint": Nullable(Obj({"step": COUNT, "epoch": Nullable(COUNT), "file": STR}, required=("step",))),
        "device": Nullable(STR),
        "time": Nullable(ISO_TIME),
        "duration_s": Nullable(NUMBER),
        "results": RELATIVE_PATH,
        "figures": ListOf(ANY),
        "files": ListOf(RELATIVE_PATH),
        "applicable": BOOL,
        "reason": Nullable(STR),
    },
)


def _shape_of_type(hint: Any) -> Shape:
    """The shape of a value of a schema field's type (lenient: unknown types are ANY)."""
    import dataclasses
    import types
    import typing

    if hint is Any:
        return ANY
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = _shape_of_type(args[0]) if len(args) == 1 else ANY
        return Nullable(inner) if len(args) < len(typing.get_args(hint)) else inner
    if dataclasses.is_dataclass(hint):
        return schema_shape(hint)  # type: ignore[arg-type]
    simple = {bool: BOOL, int: INT, float: NUMBER, str: STR}
    if hint in simple:
        return simple[hint]
    if typing.get_origin(hint) in (list, tuple):
        return ListOf(ANY)
    if typing.get_origin(hint) is dict or hint is dict:
        return OBJECT
    return ANY


def schema_shape(cls: type) -> Shape:
    """A lenient shape of a structured-config dataclass: the types of the keys it declares
    (none required, extra keys allowed); ``Any`` sections must be mappings or null."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    fields_: dict[str, Shape] = {}
    for f in dataclasses.fields(cls):
        shape = _shape_of_type(hints[f.name])
        fields_[f.name] = Nullable(OBJECT) if shape is ANY and f.name in _SECTIONS else shape
    return Obj(fields_)


_SECTIONS = ("model", "dataset", "tracker", "lifecycle", "runner")
_CONFIG_SHAPE: Shape | None = None


def config_shape() -> Shape:
    """The shape of a package's ``config.yaml``, derived from ``expflow.config.schema``."""
    global _CONFIG_SHAPE
    if _CONFIG_SHAPE is None:
        from expflow.config.schema import ExpflowConfig

        _CONFIG_SHAPE = schema_shape(ExpflowConfig)
    return _CONFIG_SHAPE


# -- reading ---------------------------------------------------------------------------

_MISSING: Any = object()


def _reason(e: OSError) -> str:
    return e.strerror or e.__class__.__name__


def read_bytes(path: str | os.PathLike[str], what: str, expected: str, *,
               error: type[ExpflowError] = PackageError) -> bytes | None:
    """The bytes of ``path``, or None when it does not exist; anything else in the way (a
    directory, a parent that is a file, no permission) is one ``error`` naming the file."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise error(f"{path}: unreadable {what} (a directory, expected {expected})") from None
    except NotADirectoryError:
        raise error(f"{path}: unreadable {what} ({path.parent.name}/ is not a directory)") from None
    except OSError as e:
        raise error(f"{path}: unreadable {what} ({_reason(e)})") from None


def read_json(
    path: str | os.PathLike[str],
    shape: Shape,
    what: str,
    *,
    error: type[ExpflowError] = PackageError,
    missing: Any = _MISSING,
) -> Any:
    """The JSON value in ``path``, checked against ``shape``.

    Returns ``missing`` when given and the file does not exist; otherwise every failure
    (absent, a directory, unreadable, not UTF-8, not JSON, the wrong shape) is one
    ``error`` naming the file (and the key).
    """
    data = read_bytes(path, what, "a JSON file", error=error)
    if data is None:
        if missing is not _MISSING:
            return missing
        raise error(f"{path}: no {what}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: unreadable {what} (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: unreadable {what} (not valid JSON: {e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise error(f"{path}: unreadable {what} (JSON nested too deeply)") from None
    check(data, shape, path, what, error=error)
    return data


def check(data: Any, shape: Shape, path: str | os.PathLike[str], what: str, *,
          error: type[ExpflowError] = PackageError) -> None:
    """Raise ``error`` naming ``path`` and the key when ``data`` is not of ``shape``."""
    try:
        shape.check(data)
    except Mismatch as e:
        if not e.key:
            raise error(f"{path}: not a valid {what} ({e.message})") from None
        raise error(f"{path}: invalid {what}: {e.describe()}") from None


def expect_file(path: str | os.PathLike[str], what: str, *, error: type[ExpflowError] = PackageError) -> bool:
    """True if ``path`` is a readable regular file, False if it does not exist; anything
    else there (a directory, a parent that is a file, no permission) is ``error``."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise error(f"{path}: unreadable {what} ({path.parent.name}/ is not a directory)") from None
    except OSError as e:
        raise error(f"{path}: unreadable {what} ({_reason(e)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path}: unreadable {what} (a directory, expected a file)")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: unreadable {what} (not a regular file)")
    if not os.access(path, os.R_OK):
        raise error(f"{path}: unreadable {what} (Permission denied)")
    return True


def expect_dir(path: str | os.PathLike[str], what: str, *, error: type[ExpflowError] = PackageError) -> bool:
    """True if ``path`` is a directory, False if it does not exist; a file there is ``error``."""
    path = Path(path)
    try:
        if path.is_dir():
            return True
        exists = path.exists() or path.is_symlink()
    except OSError as e:
        raise error(f"{path}: unusable {what} ({_reason(e)})") from None
    if exists:
        raise error(f"{path}: unusable {what} (not a directory)")
    return False
