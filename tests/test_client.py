"""expflow.log from a program that knows nothing else of expflow, and the supervisor's channel."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import expflow
from expflow.client import ENV_VAR, activate, socket_address
from expflow.package.records import RecordWriter, metric_points, scan_records
from expflow.runner.channel import MetricsChannel

SRC = Path(__file__).resolve().parents[1] / "src"


def wait_for(condition, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def child_env(channel: MetricsChannel | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    if channel is not None:
        env.update(channel.env())
    env.update(extra)
    return env


def run_child(code: str, env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=60, **kw)


def start_child(code: str, env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True, **kw)


@pytest.fixture
def channel(tmp_path):
    problems: list[str] = []
    writer = RecordWriter(tmp_path / "records.log")
    ch = MetricsChannel(writer, on_problem=problems.append).start()
    ch.reported = problems  # type: ignore[attr-defined]
    yield ch
    ch.close(timeout=1.0)
    writer.close()


def points(ch: MetricsChannel) -> list[tuple[int, str, float]]:
    scan = scan_records(ch.writer.path, strict=True)
    return list(metric_points(scan.records))


# -- in-process ------------------------------------------------------------------------
def test_outside_any_run_log_is_a_silent_no_op(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    expflow.log({"loss": 1.0})
    expflow.log({"loss": object()}, step=3)  # values are not even looked at
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr() == ("", "")


def test_import_expflow_does_not_import_the_client():
    out = run_child("import sys, expflow; print('expflow.client' in sys.modules); "
                    "expflow.log; print('expflow.client' in sys.modules)", child_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_an_active_run_receives_checked_values(monkeypatch):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    monkeypatch.setenv(ENV_VAR, "@expflow-test-not-listening")  # route 1 wins over route 2
    calls = []
    with activate(lambda values, step, epoch: calls.append((values, step, epoch))):
        expflow.log({"a": 1, "b": np.float32(0.5), "c": torch.tensor(2.5)}, step=7, epoch=2)
        expflow.log({"nan": float("nan")})
        with pytest.raises(TypeError, match="'flag'"):
            expflow.log({"ok": 1.0, "flag": True})
        with pytest.raises(TypeError, match="'vec'"):
            expflow.log({"vec": torch.ones(3)})
        with pytest.raises(TypeError, match="'s'"):
            expflow.log({"s": "1.0"})
    monkeypatch.delenv(ENV_VAR)
    expflow.log({"after": 1.0})  # inactive again: a no-op
    assert calls[0] == ({"a": 1.0, "b": 0.5, "c": 2.5}, 7, 2)
    assert calls[1][1:] == (None, None) and math.isnan(calls[1][0]["nan"])
    assert len(calls) == 2
    assert all(type(v) is float for v in calls[0][0].values())


# -- command runs: a subprocess and the channel --------------------------------------------
def test_a_program_logs_implicit_and_explicit_steps_numpy_torch_and_nan(channel):
    code = """
        import numpy as np, torch, expflow
        expflow.log({"loss": 0.1})                      # step 0
        expflow.log({"loss": 1/3, "n": 7})              # step 1
        expflow.log({"loss": np.float64(2/3), "acc": np.float32(0.25)}, step=10, epoch=1)
        expflow.log({"loss": torch.tensor(0.125, dtype=torch.float64), "i": np.int64(5)})  # step 11
        expflow.log({"loss": float("nan"), "big": float("inf")}, step=20)
        expflow.log({"loss": 1e-300})                   # step 21
    """
    out = run_child(code, child_env(channel))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    stats = channel.close()
    assert (stats.received, stats.rejected, stats.connections) == (6, 0, 1)
    got = points(channel)
    nan = [p for p in got if p[1] == "loss" and p[0] == 20]
    assert len(nan) == 1 and math.isnan(nan[0][2])
    assert [p for p in got if p not in nan] == [
        (0, "loss", 0.1), (1, "loss", 1 / 3), (1, "n", 7.0), (10, "loss", 2 / 3), (10, "acc", 0.25),
        (11, "loss", 0.125), (11, "i", 5.0), (20, "big", math.inf), (21, "loss", 1e-300),
    ]
    records = scan_records(channel.writer.path).records
    assert [r["epoch"] for r in records] == [None, None, 1, None, None, None]
    assert [r["seq"] for r in records] == list(range(6))


def test_a_value_whose_log_returned_survives_sigkill(channel):
    code = """
        import os, signal, expflow
        expflow.log({"last": 0.7}, step=41)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    out = run_child(code, child_env(channel))
    assert out.returncode == -9
    stats = channel.close()
    assert (stats.received, stats.rejected) == (1, 0)
    assert points(channel) == [(41, "last", 0.7)]


def test_a_bad_value_raises_in_the_program_naming_the_metric(channel):
    code = """
        import expflow
        try:
            expflow.log({"fine": 1.0, "bad": [1, 2]})
        except TypeError as e:
            print(e)
        expflow.log({"fine": 2.0})
    """
    out = run_child(code, child_env(channel))
    assert out.returncode == 0, out.stderr
    assert "'bad'" in out.stdout
    channel.close()
    assert points(channel) == [(0, "fine", 2.0)]


def test_rank_1_sends_nothing(channel):
    out = run_child("import expflow\nfor i in range(3): expflow.log({'x': float(i)})", child_env(channel, RANK="1"))
    assert out.returncode == 0, out.stderr
    stats = channel.close()
    assert (stats.received, stats.connections) == (0, 0)
    assert points(channel) == []


def test_two_concurrent_programs_both_arrive_each_in_its_own_order(channel, tmp_path):
    go = tmp_path / "go"
    code = f"""
        import os, sys, time, expflow
        who = float(sys.argv[1])
        deadline = time.monotonic() + 30
        while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:
            time.sleep(0.001)
        for i in range(300):
            expflow.log({{"who": who, "i": float(i)}})
    """
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(w)], env=child_env(channel))
             for w in (0, 1)]
    go.touch()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    stats = channel.close()
    assert (stats.received, stats.rejected, stats.connections) == (600, 0, 2)
    records = scan_records(channel.writer.path, strict=True).records
    for who in (0.0, 1.0):
        mine = [r for r in records if r["values"]["who"] == who]
        assert [r["step"] for r in mine] == list(range(300))
        assert [r["values"]["i"] for r in mine] == [float(i) for i in range(300)]


def test_a_forked_child_opens_its_own_connection(channel):
    code = """
        import os, expflow
        expflow.log({"parent": 1.0}, step=1)
        pid = os.fork()
        if pid == 0:
            for i in range(50):
                expflow.log({"child": float(i)}, step=100 + i)
            os._exit(0)
        for i in range(50):
            expflow.log({"parent": float(i)}, step=200 + i)
        assert os.waitpid(pid, 0)[1] == 0
    """
    out = run_child(code, child_env(channel))
    assert out.returncode == 0, out.stderr
    stats = channel.close()
    assert (stats.received, stats.rejected, stats.connections) == (101, 0, 2)
    got = points(channel)
    assert [s for s, n, _ in got if n == "child"] == list(range(100, 150))
    assert [s for s, n, _ in got if n == "parent"] == [1, *range(200, 250)]


def test_malformed_lines_are_rejected_counted_reported_and_later_lines_written(channel):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_address(channel.name))
    sock.sendall(b'{"values": {"a": 1.0}, "step": 1, "epoch": null}\n'
                 b"not json\n"
                 b'{"values": {"a": "x"}, "step": 2}\n'
                 b'{"values": {"a": 1.0}}\n'
                 b'{"values": {"a": true}, "step": 3}\n'
                 b'[1, 2]\n'
                 b'{"values": {"a": 2.0, "b": NaN}, "step": 4, "epoch": 3}\n'
                 b'{"values": {"a": 3.0}, "st')  # torn: the client died mid-line
    sock.close()
    wait_for(lambda: channel.received + channel.rejected == 8, what="eight lines")
    stats = channel.close()
    assert (stats.received, stats.rejected) == (2, 6)
    reported = channel.reported  # type: ignore[attr-defined]
    assert list(stats.problems) == reported and len(reported) == 6
    assert all("connection #1" in r for r in reported)
    assert "line 2: bad JSON" in reported[0]
    assert "line 3: metric 'a'" in reported[1]
    assert "line 4: 'step'" in reported[2]
    assert "line 5: metric 'a'" in reported[3]
    assert "line 6: expected a JSON object" in reported[4]
    assert "line 8: torn last line" in reported[5]
    got = points(channel)
    assert got[:2] == [(1, "a", 1.0), (4, "a", 2.0)]
    assert len(got) == 3 and got[2][:2] == (4, "b") and math.isnan(got[2][2])
    assert [r["epoch"] for r in scan_records(channel.writer.path).records] == [None, 3]


def test_supervisor_gone_before_the_program_starts(tmp_path):
    writer = RecordWriter(tmp_path / "records.log")
    ch = MetricsChannel(writer).start()
    ch.close()
    writer.close()
    out = run_child("import expflow\nfor i in range(5): expflow.log({'x': float(i)})\nprint('done')",
                    child_env(ch))
    assert out.returncode == 0
    assert out.stdout == "done\n"
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "expflow: cannot send metrics" in lines[0] and ch.name in lines[0]


def test_supervisor_gone_while_the_program_runs(channel):
    code = """
        import sys, expflow
        expflow.log({"x": 1.0})
        print("sent", flush=True)
        sys.stdin.readline()          # the supervisor goes away meanwhile
        for i in range(5):
            expflow.log({"x": float(i)})
        print("done", flush=True)
    """
    proc = start_child(code, child_env(channel), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    assert proc.stdout.readline() == "sent\n"
    wait_for(lambda: channel.received == 1, what="the first line")
    stats = channel.close(timeout=0.2)  # the program is still connected: close stops waiting
    assert stats.received == 1 and any("still open" in p for p in stats.problems)
    out, err = proc.communicate("\n", timeout=60)
    assert proc.returncode == 0
    assert out == "done\n"
    lines = err.splitlines()
    assert len(lines) == 1 and "expflow: cannot send metrics" in lines[0]
    assert points(channel) == [(0, "x", 1.0)]


def test_close_is_idempotent_and_the_name_is_freed(tmp_path):
    with RecordWriter(tmp_path / "records.log") as writer:
        ch = MetricsChannel(writer, name="@expflow-test-" + os.urandom(4).hex())
        assert ch.env() == {ENV_VAR: ch.name}
        with ch:
            pass
        assert ch.close() is ch.close()
        again = MetricsChannel(writer, name=ch.name).start()  # the abstract name is free again
        assert again.close().received == 0

