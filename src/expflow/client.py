"""``expflow.log(metrics, step)``: record metrics from any program, expflow-aware or not.

A program calls ``expflow.log({"loss": loss}, step=step)`` and knows nothing else of
expflow. Where the metrics go, in this order:

1. **An in-process run**: expflow's own training loop enters :func:`activate` with a
   callback; while it is active, ``log`` hands the checked values to it.
2. **A command run**: expflow started this program (``python train.py``, ``torchrun ...``)
   and serves a :class:`expflow.runner.channel.MetricsChannel`; its name is in the
   environment variable ``EXPFLOW_METRICS_SOCKET``. ``log`` sends one line to it, from
   rank 0 only (``RANK`` unset or ``"0"``); the supervisor writes the record.
3. **Anything else**: a silent no-op; the values are not even looked at (a CUDA tensor is
   never synchronized), so the script runs unchanged outside expflow.

Values: numbers (``int``, ``float``; ``bool`` is refused), NumPy scalars and one-element
tensors (read with ``.item()``); NaN and inf are kept. A bad value raises ``TypeError`` or
``ValueError`` naming the metric, here, in the caller (routes 1 and 2).

``step=None`` takes a per-process counter: 0, 1, 2, ... for calls without a step, and
after an explicit step ``s`` the next implicit one is ``s + 1``. (Route 1 passes ``None``
through: the training loop knows its own step.)

Transport (route 2): an ``AF_UNIX`` ``SOCK_STREAM`` socket, a Linux abstract-namespace
name when it starts with ``@`` (no file, no path-length limit), else a file system path.
One newline-terminated JSON object a call, ``{"values": {...}, "step": int, "epoch":
int|null}``, NaN and inf written as JSON's ``NaN``/``Infinity``. The connection is opened
on the first call and again in a forked child (a child never shares its parent's
connection, so their lines never interleave). ``sendall`` is synchronous: when ``log``
returns, the line is in the kernel, and the supervisor writes it even if this program is
killed right after. If the supervisor cannot be reached, one warning line goes to stderr
and later metrics are dropped: ``log`` never crashes the program for that.
"""

from __future__ import annotations

import json
import operator
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

ENV_VAR = "EXPFLOW_METRICS_SOCKET"

MetricsCallback = Callable[[dict[str, float], "int | None", "int | None"], None]

# Route 1: the callback of the in-process run, if one is active.
_active: MetricsCallback | None = None

# Route 2: this process's connection to the supervisor. Guarded by _lock, so that the lines
# of concurrent threads never interleave; the lock and the connection are renewed in a
# forked child (see _after_fork).
_lock = threading.Lock()
_sock: socket.socket | None = None
_sock_pid = -1
_sock_name: str | None = None
_dropped: str | None = None  # the socket name that could not be reached (warned about once)
_next_step = 0


def socket_address(name: str) -> str | bytes:
    """The ``AF_UNIX`` address of a channel name: ``@name`` is the abstract name ``\\0name``."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


@contextmanager
def activate(fn: MetricsCallback) -> Iterator[None]:
    """While inside, :func:`log` calls ``fn(values, step, epoch)`` (expflow's own loop)."""
    global _active
    previous, _active = _active, fn
    try:
        yield
    finally:
        _active = previous


def log(metrics: Mapping[str, Any], step: int | None = None, epoch: int | None = None) -> None:
    """Record ``metrics`` (name -> number) at ``step``; see the module docstring for where."""
    global _next_step
    fn = _active
    if fn is not None:
        fn(_checked(metrics), _index("step", step), _index("epoch", epoch))
        return
    name = os.environ.get(ENV_VAR)
    if not name:
        return
    rank = os.environ.get("RANK")
    if rank is not None and rank.strip() not in ("", "0"):
        return
    if _dropped == name:
        return
    values = _checked(metrics)
    step = _index("step", step)
    epoch = _index("epoch", epoch)
    with _lock:
        if step is None:
            step = _next_step
        _next_step = step + 1
        line = json.dumps({"values": values, "step": step, "epoch": epoch}, allow_nan=True,
                          separators=(",", ":")) + "\n"
        _send(name, line.encode())


def flush() -> None:
    """Nothing to do: nothing is buffered here (``log`` returns once the kernel has the line)."""


# -- values ------------------------------------------------------------------------
def _checked(metrics: Mapping[str, Any]) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"expflow.log: metrics must be a mapping of name to number, "
                        f"got {type(metrics).__name__}")
    return {str(name): as_number(str(name), value) for name, value in metrics.items()}


def as_number(name: str, value: Any) -> float:
    """A metric value as a float: a number, a NumPy scalar or a one-element tensor."""
    if type(value) is float:
        return value
    if hasattr(value, "item"):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            raise TypeError(f"metric {name!r}: expected a number or a one-element tensor, "
                            f"got shape {list(getattr(value, 'shape', []))}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {name!r}: expected a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"metric {name!r}: {value} is too large for a float") from None


def _index(what: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"expflow.log: {what} must be an integer, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"expflow.log: {what} must be an integer, got {type(value).__name__}") from None


# -- the connection (called with _lock held) --------------------------------------------
def _send(name: str, line: bytes) -> None:
    global _sock, _sock_pid, _sock_name
    if _sock is not None and (_sock_pid != os.getpid() or _sock_name != name):
        _drop_connection()
    if _sock is None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(socket_address(name))
        except OSError as e:
            sock.close()
            _give_up(name, e)
            return
        _sock, _sock_pid, _sock_name = sock, os.getpid(), name
    try:
        # MSG_NOSIGNAL: a vanished supervisor is an EPIPE error, never a SIGPIPE that kills us.
        _sock.sendall(line, _MSG_NOSIGNAL)
    except OSError as e:
        _drop_connection()
        _give_up(name, e)
    except BaseException:
        # Interrupted part-way (KeyboardInterrupt from a signal handler): the supervisor may
        # hold part of this line. A new connection for the next one, so the torn part is
        # rejected on its own instead of swallowing a good line.
        _drop_connection()
        raise


_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def _drop_connection() -> None:
    global _sock
    if _sock is not None:
        try:
            _sock.close()  # a forked child's copy: closing it leaves the parent's connection open
        except OSError:
            pass
        _sock = None


def _give_up(name: str, error: OSError) -> None:
    global _dropped
    _dropped = name
    reason = error.strerror or error.__class__.__name__
    try:
        print(f"expflow: cannot send metrics to the supervisor ({ENV_VAR}={name}: {reason}); "
              f"further metrics are dropped", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):  # no usable stderr: stay silent
        pass


def _after_fork() -> None:
    # The parent's lock may have been held by another thread at fork(): a fresh one. The
    # inherited connection is the parent's: the child opens its own on its first log().
    global _lock
    _lock = threading.Lock()
    _drop_connection()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
