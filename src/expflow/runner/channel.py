"""The supervisor's end of ``expflow.log`` in a command run: a socket that writes records.

In a command run expflow starts the user's program (``python train.py``, ``torchrun ...``)
and owns the package's record file through one :class:`~expflow.package.records.RecordWriter`.
The program calls :func:`expflow.log` (:mod:`expflow.client`), which sends its metrics here.

Why a socket rather than a second writer in the program: a record file has exactly one
writer. It assigns the ``seq`` numbers (two writers would both start from the same next
``seq``), it cuts a torn tail off when it opens the file (a second one opening it would cut
the first one's line in progress), and its appends are whole lines only because one thread
writes them. The program may be killed at any moment (SIGKILL, OOM, a scheduler), may fork
(DataLoader workers) and may be a different Python with another expflow, or none at all:
the only thing it shares with the supervisor is a byte stream. So the program sends lines
and the supervisor, which outlives it, writes them:

- **Durability**: the client's ``sendall`` returns once the line is in the kernel's socket
  buffer; the kernel keeps it after the sender dies, and :meth:`MetricsChannel.close`
  (called once the program has exited) reads every connection to EOF, so a value whose
  ``log`` returned is recorded even if the program was SIGKILLed right after.
- **Order**: one ``SOCK_STREAM`` connection per process (a forked child opens its own), read
  by one thread: each connection's lines are written in the order they were sent.
- **No file**: a Linux abstract-namespace name (``@expflow-<random>``) vanishes with the
  listening socket: nothing to clean up after a crash, no 108-byte path limit. Abstract
  names have no file permissions, so a connection from another user is refused (checked
  with ``SO_PEERCRED``).
- **Robustness**: a bad line (bad JSON, wrong shape, a value that is not a number, a torn
  last line from a killed client) is counted in :attr:`rejected` and reported once through
  ``on_problem``; it never raises and never stops the other lines.

Line protocol: one JSON object a line, ``{"values": {name: number}, "step": int, "epoch":
int|null}`` (NaN and inf as JSON's ``NaN``/``Infinity``); the client resolves an implicit
step, so a line without an integer ``step`` is invalid. Other keys are ignored.

While the channel runs, its thread calls ``writer.log``: the supervisor must not log to the
same writer from another thread meanwhile (``RecordWriter.log`` is single-threaded).
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from expflow.client import ENV_VAR, socket_address

if TYPE_CHECKING:
    from expflow.package.records import RecordWriter

# A line longer than this is rejected without being kept in memory whole.
MAX_LINE_BYTES = 1 << 20
_RECV_BYTES = 1 << 16


@dataclass(frozen=True)
class ChannelStats:
    received: int  # lines written as records
    rejected: int  # invalid lines (each reported once through on_problem)
    connections: int  # connections accepted
    problems: tuple[str, ...] = ()  # every report, in order


class _Conn:
    __slots__ = ("sock", "number", "pid", "buf", "line", "skipping")

    def __init__(self, sock: socket.socket, number: int, pid: int | None):
        self.sock = sock
        self.number = number
        self.pid = pid
        self.buf = bytearray()
        self.line = 0  # lines seen so far (1-based numbers in reports)
        self.skipping = False  # inside an over-long line: drop bytes until its newline

    def __str__(self) -> str:
        return f"connection #{self.number}" + (f" (pid {self.pid})" if self.pid else "")


_LISTENER = object()
_WAKE = object()


class MetricsChannel:
    """Serves ``EXPFLOW_METRICS_SOCKET`` for a command run: each valid line -> ``writer.log``.

    ``start()`` before starting the program (its environment gets :meth:`env`), ``close()``
    after it exited: reads every connection to EOF, writes what came, flushes the writer
    (which stays open: the caller owns it).
    """

    def __init__(self, writer: RecordWriter, *, name: str | None = None,
                 on_problem: Callable[[str], None] | None = None):
        self.writer = writer
        self.name = name or f"@expflow-{secrets.token_hex(8)}"
        self.on_problem = on_problem
        self.received = 0
        self.rejected = 0
        self.connections = 0
        self.problems: list[str] = []
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._conns: dict[int, _Conn] = {}
        self._thread: threading.Thread | None = None
        self._closing = False
        self._deadline = 0.0
        self._stats: ChannelStats | None = None
        self._uid = os.getuid() if hasattr(os, "getuid") else None

    def env(self) -> dict[str, str]:
        """The environment the program needs: ``{"EXPFLOW_METRICS_SOCKET": name}``."""
        return {ENV_VAR: self.name}

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> MetricsChannel:
        if self._thread is not None or self._stats is not None:
            raise RuntimeError("MetricsChannel.start: already started")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(socket_address(self.name))
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, _LISTENER)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._thread = threading.Thread(target=self._serve, name="expflow-metrics-channel", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> ChannelStats:
        """Stop accepting, read each open connection to EOF (for at most ``timeout`` seconds),
        write what came and stop. Idempotent: later calls return the same stats."""
        if self._stats is not None:
            return self._stats
        thread = self._thread
        if thread is not None:
            self._deadline = time.monotonic() + max(timeout, 0.0)
            self._closing = True
            self._wake()
            thread.join(max(timeout, 0.0) + 5.0)
            if thread.is_alive():  # writer.log stuck (it never blocks): give up on the thread
                self._problem("the metrics channel's thread did not stop")
            try:
                self.writer.flush(timeout=max(timeout, 1.0))
            except Exception as e:  # noqa: BLE001 - the writer's owner sees it again on close
                self._problem(f"flushing the record writer failed: {e}")
            if self._wake_w is not None:
                self._wake_w.close()
        self._stats = self.stats()
        return self._stats

    def stats(self) -> ChannelStats:
        return ChannelStats(self.received, self.rejected, self.connections, tuple(self.problems))

    def __enter__(self) -> MetricsChannel:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")  # type: ignore[union-attr]
        except OSError:
            pass

    # -- the thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while True:
                if self._closing:
                    if self._listener is not None:
                        # Connections in the backlog carry lines too (a client may have sent
                        # and died before this thread accepted it): take them, then stop.
                        self._accept_all()
                        self._close_listener()
                    remaining = self._deadline - time.monotonic()
                    if not self._conns or remaining <= 0:
                        break
                    events = sel.select(remaining)
                else:
                    events = sel.select()
                for key, _ in events:
                    if key.data is _LISTENER:
                        self._accept_all()
                    elif key.data is _WAKE:
                        try:
                            self._wake_r.recv(4096)  # type: ignore[union-attr]
                        except OSError:
                            pass
                    else:
                        self._read(key.data)
        except Exception as e:  # noqa: BLE001 - never raise in the supervisor
            self._problem(f"the metrics channel failed: {e.__class__.__name__}: {e}")
        finally:
            for conn in list(self._conns.values()):
                self._read_available(conn)
                if conn.sock.fileno() >= 0:
                    self._problem(f"{conn}: still open when the channel closed; stopped reading it")
                    if conn.buf and not conn.skipping:
                        conn.line += 1
                        self._reject(conn, f"unfinished line ({len(conn.buf)} bytes) when the channel closed")
                    self._end(conn)
            self._close_listener()
            sel.close()
            if self._wake_r is not None:
                self._wake_r.close()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        try:
            self._sel.unregister(listener)  # type: ignore[union-attr]
        except (KeyError, ValueError):
            pass
        listener.close()
        if not self.name.startswith("@"):
            try:
                os.unlink(self.name)
            except OSError:
                pass

    def _accept_all(self) -> None:
        while self._listener is not None:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. out of file descriptors: report, try again later
                self._problem(f"accepting a metrics connection failed: {e.strerror or e}")
                return
            self.connections += 1
            pid, uid = _peer(sock)
            conn = _Conn(sock, self.connections, pid)
            if self._uid is not None and uid is not None and uid != self._uid:
                self._problem(f"{conn}: refused (user id {uid}, not {self._uid})")
                sock.close()
                continue
            sock.setblocking(False)
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)  # type: ignore[union-attr]

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # ECONNRESET and the like: what came before is kept
            data = b""
        if data:
            self._feed(conn, data)
        else:
            self._eof(conn)

    def _read_available(self, conn: _Conn) -> None:
        """Everything already in the kernel for ``conn``, without waiting."""
        while conn.sock.fileno() >= 0:
            try:
                data = conn.sock.recv(_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._eof(conn)
                return
            self._feed(conn, data)

    def _eof(self, conn: _Conn) -> None:
        if conn.buf and not conn.skipping:
            conn.line += 1
            self._reject(conn, f"torn last line ({len(conn.buf)} bytes without a newline at EOF)")
        self._end(conn)

    def _end(self, conn: _Conn) -> None:
        self._conns.pop(conn.sock.fileno(), None)
        try:
            self._sel.unregister(conn.sock)  # type: ignore[union-attr]
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.buf.clear()

    def _feed(self, conn: _Conn, data: bytes) -> None:
        buf = conn.buf
        start = len(buf)
        buf += data
        pos = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if conn.skipping:
                conn.skipping = False
            else:
                conn.line += 1
                self._line(conn, bytes(buf[pos:nl]))
            pos = start = nl + 1
        del buf[:pos]
        if conn.skipping:
            buf.clear()
        elif len(buf) > MAX_LINE_BYTES:
            conn.line += 1
            self._reject(conn, f"line longer than {MAX_LINE_BYTES} bytes")
            conn.skipping = True
            buf.clear()

    def _line(self, conn: _Conn, raw: bytes) -> None:
        try:
            values, step, epoch = parse_line(raw)
        except ValueError as e:
            self._reject(conn, str(e))
            return
        try:
            self.writer.log(values, step=step, epoch=epoch)
        except Exception as e:  # noqa: BLE001 - a closed or failed writer: reported per line
            self._reject(conn, f"the record writer refused it ({e.__class__.__name__}: {e})")
            return
        self.received += 1

    def _reject(self, conn: _Conn, reason: str) -> None:
        self.rejected += 1
        self._problem(f"metrics {conn}, line {conn.line}: {reason}")

    def _problem(self, message: str) -> None:
        self.problems.append(message)
        if self.on_problem is not None:
            try:
                self.on_problem(message)
            except Exception:  # noqa: BLE001 - a failing reporter must not stop the channel
                pass


def parse_line(raw: bytes) -> tuple[dict[str, float], int, int | None]:
    """``(values, step, epoch)`` of one protocol line; ValueError says why it is invalid."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"bad JSON ({e.__class__.__name__})") from None
    if type(obj) is not dict:
        raise ValueError(f"expected a JSON object, got {_json_type(obj)}")
    values = obj.get("values")
    if type(values) is not dict:
        raise ValueError(f"'values': expected an object, got {_json_type(values)}")
    step = obj.get("step")
    if type(step) is not int:
        raise ValueError(f"'step': expected an integer, got {_json_type(step)}")
    epoch = obj.get("epoch")
    if epoch is not None and type(epoch) is not int:
        raise ValueError(f"'epoch': expected an integer or null, got {_json_type(epoch)}")
    checked: dict[str, float] = {}
    for name, value in values.items():
        if type(value) is not float and type(value) is not int:
            raise ValueError(f"metric {name!r}: expected a number, got {_json_type(value)}")
        try:
            checked[name] = float(value)
        except OverflowError:
            raise ValueError(f"metric {name!r}: too large for a float") from None
    return checked, step, epoch


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def _peer(sock: socket.socket) -> tuple[int | None, int | None]:
    """The connecting process's (pid, uid), where the platform says (Linux SO_PEERCRED)."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None, None
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i")))
    except OSError:
        return None, None
    return pid or None, uid
