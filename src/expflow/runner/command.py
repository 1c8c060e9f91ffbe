"""``runner=command``: a whole program as the run (a plain ``train.py``, ``accelerate launch``,
``torchrun``, an RL framework's entry point).

expflow materializes the package first, leases the GPUs, then supervises the program: it runs
from the package's code snapshot (never the working tree), with

- ``CUDA_VISIBLE_DEVICES`` of the lease;
- ``EXPFLOW_PACKAGE``, ``EXPFLOW_CHECKPOINT_DIR`` (``<package>/checkpoints/program/``: write
  checkpoints there, named with their step, e.g. ``step_120.pt``), ``EXPFLOW_SEED``,
  ``EXPFLOW_RESUME_CHECKPOINT`` (empty on a fresh start) and ``EXPFLOW_METRICS_SOCKET``
  (what :func:`expflow.log` sends to);
- every Python process of the program seeded before user code runs
  (:mod:`expflow.runner.pyseed`, unless ``runner.seed_python=false``);
- SwanLab and W&B steered to offline logs under ``<package>/tracker/``, which expflow reads
  into the package's records while the program runs and at its end (``runner.ingest``).

stdout and stderr go to the terminal and to ``logs/rank0.out`` / ``logs/rank0.err``. The
status, heartbeat and CRASHED detection are those of any run (this process beats the
heartbeat). SIGTERM and SIGINT (Ctrl-C) are forwarded to the program's whole process group
(torchrun's workers included); after ``runner.stop_grace_s`` seconds the group is killed.
A program that checkpoints on a signal declares it, ``runner.stop_signal`` (e.g. SIGUSR1): a
time limit's warning (SIGUSR1) or a preemption or cancel (SIGTERM) is then passed on as that
signal, and once the program has exited the run is CRASHED with the reason (TIMEOUT,
PREEMPTED, CANCELLED), for a retry to continue it with ``runner.resume_argv``.

Continue: with a ``runner.resume_argv`` (``[--resume, "${expflow:checkpoint}"]``) and a
checkpoint in the checkpoint directory, the program is restarted with those arguments and the
records after the checkpoint's step are rolled back; otherwise it starts over (and says so).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from expflow.config import placeholders
from expflow.errors import CheckpointError, ConfigError, ExpflowError, PackageError, RunCrashed
from expflow.package import SavePackage, Status, last_values, utc_now
from expflow.paths import WriteError, check_package_writable, write_error

PROGRAM_CHECKPOINTS = "program"  # <package>/checkpoints/program/
_STEP = re.compile(r"(\d+)")


class CommandRunner:
    """The config node of ``runner=command`` (see the module doc); it has no Python step."""

    def __init__(self, argv: list[str], resume_argv: list[str] | None = None, cwd: str = ".",
                 env: dict[str, str] | None = None, ingest: list[Any] | None = None,
                 ingest_every_s: float = 2.0, seed_python: bool = True, stop_grace_s: float = 10.0,
                 stop_signal: str | None = None):
        self.spec = CommandSpec(list(argv), list(resume_argv or []), cwd, dict(env or {}),
                                list(ingest) if ingest is not None else None,
                                float(ingest_every_s), bool(seed_python), float(stop_grace_s),
                                _signal(stop_signal, "runner.stop_signal"))

    def build(self, ctx: Any) -> None:
        raise ConfigError("runner=command runs a program, not a training step: run it with "
                          "`python -m expflow.train runner=command ...`, `expflow run` or the workflow")

    train_data = train_step = build  # type: ignore[assignment]


@dataclass(frozen=True)
class CommandSpec:
    argv: list[str]
    resume_argv: list[str]
    cwd: str
    env: dict[str, str]
    ingest: list[Any] | None
    ingest_every_s: float
    seed_python: bool
    stop_grace_s: float
    stop_signal: int | None = None  # what tells the program to checkpoint and exit

    @classmethod
    def from_config(cls, cfg: Any, where: str) -> CommandSpec:
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(cfg.runner, resolve=True, enum_to_str=True)
        assert isinstance(node, dict)

        def strings(key: str, allow_empty: bool) -> list[str]:
            value = node.get(key)
            if value is None:
                value = []
            if not isinstance(value, list) or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool)
                                                      for a in value):
                raise ConfigError(f"{where}: runner.{key}: expected a list of strings, got {value!r}")
            if not value and not allow_empty:
                raise ConfigError(f"{where}: runner.{key}: empty; give the program and its arguments, "
                                  f"e.g. runner.argv='[python,train.py]'")
            return [str(a) for a in value]

        env = node.get("env") or {}
        if not isinstance(env, dict):
            raise ConfigError(f"{where}: runner.env: expected a mapping of variable names to values")
        return cls(
            argv=strings("argv", False),
            resume_argv=strings("resume_argv", True),
            cwd=str(node.get("cwd") or "."),
            env={str(k): str(v) for k, v in env.items()},
            ingest=node.get("ingest"),  # None: the default sources
            ingest_every_s=float(node.get("ingest_every_s") or 2.0),
            seed_python=bool(node.get("seed_python", True)),
            stop_grace_s=float(node.get("stop_grace_s", 10.0)),
            stop_signal=_signal(node.get("stop_signal"), f"{where}: runner.stop_signal"),
        )


def _signal(name: Any, where: str) -> int | None:
    """A signal named like SIGUSR1 (or USR1), as its number; None for none."""
    if name is None or name == "":
        return None
    text = str(name).upper()
    try:
        return int(signal.Signals[text if text.startswith("SIG") else f"SIG{text}"])
    except KeyError:
        raise ConfigError(f"{where}: {name!r} is not a signal; e.g. SIGUSR1, SIGUSR2, SIGTERM, SIGINT") from None


def program_checkpoint_dir(pkg: SavePackage) -> Path:
    return pkg.checkpoints_dir / PROGRAM_CHECKPOINTS


def program_checkpoints(pkg: SavePackage) -> list[tuple[Path, int | None]]:
    """The program's checkpoints (files or directories) with the step in each name, oldest
    first (by step, then time); names starting with '.' or ending in .tmp/.partial are writes
    in progress."""
    directory = program_checkpoint_dir(pkg)
    try:
        entries = [p for p in directory.iterdir()
                   if not p.name.startswith(".") and not p.name.endswith((".tmp", ".partial"))]
    except FileNotFoundError:
        return []
    except OSError as e:
        raise write_error(e) from None

    def key(p: Path) -> tuple[int, float]:
        steps = _STEP.findall(p.name)
        try:
            mtime = p.stat().st_mtime
        except OSError:
            mtime = 0.0
        return (int(steps[-1]) if steps else -1, mtime)

    ordered = sorted(entries, key=key)
    return [(p, key(p)[0] if key(p)[0] >= 0 else None) for p in ordered]


def program_checkpoint(pkg: SavePackage, resume: str | int) -> tuple[Path, int | None] | None:
    """The checkpoint a continue resumes from: the newest (``"latest"``), or the one whose name
    holds step ``resume``; None when the program has written none."""
    found = program_checkpoints(pkg)
    if resume == "latest" or not found:
        return found[-1] if found else None
    for path, step in found:
        if step == int(resume):
            return path, step
    valid = ", ".join(str(s) for _, s in found if s is not None) or "none with a step in its name"
    raise CheckpointError(f"{program_checkpoint_dir(pkg)}: no checkpoint at step {resume}; valid steps: {valid}")


# -- supervising the program ---------------------------------------------------------
class _Tee(threading.Thread):
    """Copies one of the program's streams to a log file and to the terminal."""

    def __init__(self, source: IO[bytes], log: IO[bytes], terminal: IO[bytes] | None, keep_last: bool):
        super().__init__(daemon=True, name="expflow-command-tee")
        self.source, self.log, self.terminal = source, log, terminal
        self.keep_last = keep_last
        self.last_line = b""

    def run(self) -> None:
        fd = self.source.fileno()
        tail = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            for out in (self.log, self.terminal):
                if out is None:
                    continue
                try:
                    out.write(chunk)
                    out.flush()
                except (OSError, ValueError):
                    if out is self.terminal:
                        self.terminal = None  # a closed terminal never stops the program's logs
            if self.keep_last:
                tail = (tail + chunk)[-4096:]
                lines = [ln for ln in tail.splitlines() if ln.strip()]
                if lines:
                    self.last_line = lines[-1]
        self.source.close()


class _SerialWriter:
    """The package's record writer, shared by the metrics channel's thread and the tracker
    ingest (this thread): RecordWriter.log is for one thread at a time."""

    def __init__(self, writer: Any, trial: Any = None):
        self._writer = writer
        self._lock = threading.Lock()
        self.trial = trial  # a search trial's TrialReport: sees every record the program writes

    def log(self, values: dict[str, Any], step: int, epoch: int | None = None) -> int:
        with self._lock:
            written = self._writer.log(values, step=step, epoch=epoch)
            if self.trial is not None:
                self.trial.observe(values, step)
            return written

    def rollback(self, to_step: int) -> int:
        with self._lock:
            return self._writer.rollback(to_step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


def run_command(pkg: SavePackage, *, resume: str | int | None = None,
                extra_env: dict[str, str] | None = None) -> Any:
    """Run a command package's program to its end (``resume``: a continue); returns a
    :class:`expflow.launch.RunResult`, raises RunCrashed when the program fails."""
    from expflow.outcome import RunResult

    check_package_writable(pkg.path)
    cfg = pkg.config()
    spec = CommandSpec.from_config(cfg, str(pkg.config_path))
    try:
        status = _supervise(pkg, cfg, spec, resume, extra_env or {})
    except WriteError as e:
        raise write_error(e) from None
    return RunResult(pkg, status, last_values(pkg.scan_records().records))


def _supervise(pkg: SavePackage, cfg: Any, spec: CommandSpec, resume: str | int | None,
               extra_env: dict[str, str]) -> Status:
    from expflow.outcome import die_with_parent
    from expflow.package.environment import record_attempt
    from expflow.rank import Heartbeat
    from expflow.runlog import RankLogs
    from expflow.runner.channel import MetricsChannel
    from expflow.runner.ingest import TrackerIngest, parse_sources, tracker_env
    from expflow.runner.pyseed import seeded_env
    from expflow.search.trial import TrialReport

    sources = parse_sources(spec.ingest)
    cwd = (pkg.code_dir / spec.cwd).resolve()
    if not cwd.is_dir():
        raise ConfigError(f"{pkg.config_path}: runner.cwd: {spec.cwd!r} is not a directory of the code snapshot")
    checkpoint_dir = program_checkpoint_dir(pkg)
    stop_left_over(pkg, spec)  # before the checkpoint to resume from is chosen: it may write one now
    found = program_checkpoint(pkg, resume) if resume is not None else None
    resuming = found is not None and bool(spec.resume_argv)
    logs = RankLogs(pkg.logs_dir, 0)
    logs.__enter__()  # the supervisor's own lines go to the logs too
    heartbeat = Heartbeat(pkg, float(cfg.trainer.heartbeat_s))
    channel: MetricsChannel | None = None
    proc: subprocess.Popen[bytes] | None = None
    writer: Any = None
    own_writer = None
    try:
        own_writer = pkg.record_writer()
        writer = _SerialWriter(own_writer, TrialReport.from_env())
        kind = "continue" if resume is not None else "train"
        pkg.set_status(Status.PREPARING, error=None, note=kind)
        name = pkg.path.name
        if resume is None:
            pkg.update_manifest(lambda m: m.setdefault("attempts", []).append({"kind": kind, "time": utc_now()}))
        else:
            if resuming:
                assert found is not None
                start = found[1]
                print(f"[{name}] resuming the command from {found[0]}", flush=True)
            else:
                start = -1
                why = "no runner.resume_argv" if not spec.resume_argv else "no checkpoint in " + str(checkpoint_dir)
                print(f"[{name}] {why}: the command starts over", flush=True)
            if start is not None:
                writer.rollback(start)  # the resumed program logs the later steps again
            attempt: dict[str, Any] = {"kind": "continue", "time": utc_now(),
                                       "checkpoint": str(found[0]) if resuming and found else None}
            if start is not None:
                attempt["from_step"] = start
            pkg.update_manifest(lambda m: m.setdefault("attempts", []).append(attempt))
        # The supervisor's software (the program's, when it runs on the same Python) and the
        # machine the program runs on, with the devices its lease gives it.
        record_attempt(pkg, (pkg.manifest().get("code") or {}).get("store"), {**os.environ, **extra_env})
        heartbeat.start()
        channel = MetricsChannel(writer, on_problem=lambda line: print(f"expflow: warning: {line}",
                                                                       file=sys.stderr, flush=True)).start()
        ingest = TrackerIngest(pkg, writer, sources)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        values = {
            "checkpoint": str(found[0]) if resuming and found else "",
            "checkpoint_dir": str(checkpoint_dir),
            "package": str(pkg.path.resolve()),
            "seed": str(int(cfg.seed)),
            "run_id": pkg.run_id,
            "code": str(pkg.code_dir.resolve()),
        }
        where = str(pkg.config_path)
        argv = [placeholders.substitute(a, values, f"{where}: runner.argv") for a in spec.argv]
        if resuming:
            argv += [placeholders.substitute(a, values, f"{where}: runner.resume_argv") for a in spec.resume_argv]
        env = dict(os.environ)
        env.update(extra_env)
        env.update(tracker_env(pkg))
        env.update(channel.env())
        env.update({
            "EXPFLOW_PACKAGE": values["package"],
            "EXPFLOW_CHECKPOINT_DIR": values["checkpoint_dir"],
            "EXPFLOW_SEED": values["seed"],
            "EXPFLOW_RESUME_CHECKPOINT": values["checkpoint"],
            "EXPFLOW_RUN_ID": pkg.run_id,
        })
        env.update({k: placeholders.substitute(v, values, f"{where}: runner.env.{k}") for k, v in spec.env.items()})
        if spec.seed_python:
            env = seeded_env(env, int(cfg.seed), deterministic=bool(cfg.trainer.deterministic))
        env.pop("PYTHONSAFEPATH", None)  # `python train.py` imports its neighbours
        out_log = open(logs.out_path, "ab")
        err_log = open(logs.err_path, "ab")
        try:
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True,
                                        preexec_fn=die_with_parent if sys.platform == "linux" else None)
            except OSError as e:
                raise ConfigError(f"{where}: runner.argv: cannot start {argv[0]!r}: {e.strerror or e} "
                                  f"(in {cwd})") from None
            tees = [_Tee(proc.stdout, out_log, _terminal(logs, "out"), False),  # type: ignore[arg-type]
                    _Tee(proc.stderr, err_log, _terminal(logs, "err"), True)]  # type: ignore[arg-type]
            for t in tees:
                t.start()
            pkg.set_status(Status.RUNNING, device=extra_env.get("CUDA_VISIBLE_DEVICES") or "cpu",
                           world_size=1, command={"argv": argv, "cwd": str(cwd), **_identity(proc.pid)})
            from expflow.interrupt import arm_time_limit_warning

            timer = arm_time_limit_warning()  # a Slurm job's warning: to this process, passed on by _wait
            try:
                code = _wait(proc, spec, ingest, writer.trial)
            finally:
                if timer is not None:
                    timer.cancel()
            for t in tees:
                t.join(timeout=10)
        finally:
            if proc is not None and proc.poll() is None:
                _stop_group(proc, signal.SIGTERM, spec.stop_grace_s)
            out_log.close()
            err_log.close()
        channel.close()
        channel = None
        for line in ingest.final():
            print(f"expflow: warning: {line}", file=sys.stderr, flush=True)
        writer.flush()  # every record is on disk before COMPLETED
        last_step = _last_step(pkg)
        trial = writer.trial
        if trial is not None and trial.pruned:  # stopped by the search's pruner, not failed
            pkg.set_status(Status.PRUNED, progress={"step": last_step}, pruned=trial.record())
            return Status.PRUNED
        if code == 0:
            pkg.set_status(Status.COMPLETED, progress={"step": last_step})
            return Status.COMPLETED
        detail = (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
        last = tees[1].last_line.decode("utf-8", "replace").strip()
        message = f"the command ended with {detail}" + (f": {last[:300]}" if last else "")
        pkg.set_status(Status.CRASHED, progress={"step": last_step},
                       error={"type": "CommandFailed", "message": message, "log": str(logs.err_path)})
        error = RunCrashed(f"run {pkg.run_id} crashed: {message} (logs in {pkg.logs_dir})")
        raise error
    except BaseException as e:
        from expflow.interrupt import Interrupted

        if isinstance(e, Interrupted):  # told to stop, and it did: a retry continues it
            saved = [st for _, st in program_checkpoints(pkg) if st is not None]
            step = saved[-1] if saved else _last_step(pkg)  # where a continue resumes
            message = f"{e.reason} ({e.signame}): the command was told and stopped at step {step}"
            try:
                pkg.record_stop(e.reason, e.signame, step, message, str(logs.err_path), progress={"step": step})
            except Exception:
                pass
            raise RunCrashed(f"run {pkg.run_id} interrupted: {message} (continue it with "
                             f"`expflow continue {pkg.path}`; a workflow retry does)") from None
        if not isinstance(e, RunCrashed):
            if proc is not None and proc.poll() is None:
                _stop_group(proc, signal.SIGTERM, spec.stop_grace_s)
            try:
                interrupted = isinstance(e, KeyboardInterrupt) or type(e).__name__ == "Terminated"
                message = (f"interrupted: {e or 'Ctrl-C'}" if interrupted else
                           (e.one_line() if isinstance(e, ExpflowError) else f"{e.__class__.__name__}: {e}"))
                pkg.set_status(Status.CRASHED, error={"type": e.__class__.__name__, "message": message[:2000],
                                                      "log": str(logs.err_path)})
            except Exception:
                pass
            if isinstance(e, KeyboardInterrupt) or type(e).__name__ == "Terminated":
                raise RunCrashed(f"run {pkg.run_id} interrupted (continue it with `expflow continue {pkg.path}`)") \
                    from None
        raise
    finally:
        if channel is not None:
            try:
                channel.close(timeout=1.0)
            except Exception:
                pass
        heartbeat.stop()
        try:
            if own_writer is not None:
                own_writer.close()
        finally:
            logs.__exit__(None, None, None)


def _identity(pid: int) -> dict[str, object]:
    """host, pid and start time of the program (what a later attempt knows it by, see
    :func:`stop_left_over`); the pid alone when it is gone already."""
    from expflow.package.status import process_identity

    try:
        return process_identity(pid)
    except Exception:  # exited at once (/proc or psutil: no such process)
        return {"pid": pid}


def stop_left_over(pkg: SavePackage, spec: CommandSpec) -> None:
    """Stop the program an earlier attempt started on this host if it still runs, before this
    attempt starts one writing into the same package. That attempt's expflow was killed
    (SIGKILL, the OOM killer): its program got SIGTERM then (PR_SET_PDEATHSIG) but may
    ignore it, and what it started in its process group got nothing. The group is told as
    a stop tells it (``runner.stop_signal``, else SIGTERM: a program that checkpoints on it
    does so now, and this attempt resumes from there), and killed after ``runner.stop_grace_s``."""
    from expflow.package.status import group_left_over

    command = pkg.manifest().get("command")
    if not isinstance(command, dict) or not group_left_over(command):
        return
    pgid = int(command["pid"])  # the program's, and its group's (it started a session of its own)
    what = f"{pkg.path}: the program an earlier attempt started (process group {pgid})"
    print(f"expflow: warning: {what} still runs: stopping it before this attempt starts", file=sys.stderr, flush=True)
    for sig, wait_s in ((spec.stop_signal or signal.SIGTERM, spec.stop_grace_s), (signal.SIGKILL, 10.0)):
        try:
            if pgid in group_left_over(command):
                with suppress(ProcessLookupError):
                    os.kill(pgid, sig)  # the program itself, wherever its group is now
            with suppress(ProcessLookupError):
                os.killpg(pgid, sig)
        except PermissionError:
            raise PackageError(f"{what} still runs and this user cannot stop it; stop it, then continue the run") \
                from None
        deadline = time.monotonic() + wait_s
        while group_left_over(command):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return
    raise PackageError(f"{what} still runs after SIGKILL; stop it, then continue the run")


def _terminal(logs: Any, stream: str) -> IO[bytes] | None:
    """The terminal stream behind the log tee (the real stdout/stderr)."""
    saved = getattr(logs, "_saved", None)
    target = saved[0 if stream == "out" else 1] if saved else (sys.stdout if stream == "out" else sys.stderr)
    return getattr(target, "buffer", None)


def _wait(proc: subprocess.Popen[bytes], spec: CommandSpec, ingest: Any, trial: Any = None) -> int:
    """Wait for the program, reading its tracker files every ``ingest_every_s`` seconds, and
    forward SIGTERM/SIGINT to its process group; a search trial the pruner stops gets SIGTERM
    (then SIGKILL after ``stop_grace_s``). Returns its exit code (negative: a signal)."""
    from expflow.interrupt import Interrupted, Terminated, reason_for

    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        first_stop = not any(s in (signal.SIGUSR1, signal.SIGTERM) for s in received)
        received.append(signum)
        sent = signum
        if signum in (signal.SIGUSR1, signal.SIGTERM) and first_stop and spec.stop_signal is not None:
            sent = spec.stop_signal  # the program's own way to be told
        elif signum == signal.SIGUSR1:
            return  # a time limit's warning, and the program declared no way to be told
        try:
            os.killpg(proc.pid, sent)
        except ProcessLookupError:
            pass

    main = threading.current_thread() is threading.main_thread()
    watched = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    saved = {s: signal.signal(s, forward) for s in watched} if main else {}
    try:
        deadline: float | None = None
        while True:
            try:
                code = proc.wait(timeout=spec.ingest_every_s)
                break
            except subprocess.TimeoutExpired:
                pass
            if trial is not None and trial.pruned and deadline is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + spec.stop_grace_s
            if deadline is None and any(s != signal.SIGUSR1 for s in received):  # a warning has no deadline
                deadline = time.monotonic() + spec.stop_grace_s
            if deadline is not None and time.monotonic() > deadline:
                _kill_group(proc)
            try:
                ingest.poll()
            except ExpflowError as e:
                print(f"expflow: warning: {e.one_line()}", file=sys.stderr, flush=True)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    _kill_group(proc)  # what the program left running in its group (a daemon, a stuck worker)
    stops = [s for s in received if s == signal.SIGTERM or (s == signal.SIGUSR1 and spec.stop_signal is not None)]
    if stops:  # told to stop: it exited (checkpointed, if it can); the step is the caller's to find
        raise Interrupted(reason_for(stops[0]), -1, signal.Signals(stops[0]).name)
    if received and received[0] == signal.SIGINT:
        raise KeyboardInterrupt(f"SIGINT, forwarded to the command (exit {code})")
    if received:
        raise Terminated(f"{signal.Signals(received[0]).name}, forwarded to the command (exit {code})")
    return code


def _stop_group(proc: subprocess.Popen[bytes], sig: int, grace: float) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _last_step(pkg: SavePackage) -> int | None:
    from expflow.package import effective_metrics

    steps = [r["step"] for r in effective_metrics(pkg.scan_records().records)]
    return max(steps) if steps else None
