"""`expflow status`: the board of every package in a runs directory (like SwanLab Task's
`task list`): run id, status as it is now (a dead process shows CRASHED), devices, progress,
the main metric's last value, started, finished, time spent training.

`Board.rows` is what the report's run table reads too.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expflow.errors import ExpflowError
from expflow.gpu import cpu_fallback
from expflow.package.manifest import package_dirs as listed_packages

if TYPE_CHECKING:
    from rich.console import Console

STATUS_ORDER = ("RUNNING", "PREPARING", "QUEUED", "CRASHED", "PRUNED", "COMPLETED")
STATUS_STYLE = {"COMPLETED": "green", "RUNNING": "cyan", "PREPARING": "blue", "QUEUED": "yellow",
                "CRASHED": "bold red", "PRUNED": "magenta"}
SORT_KEYS = ("created", "started", "finished", "duration", "status", "run", "metric")


@dataclass
class RunRow:
    """One package as the board shows it (times are ISO strings, UTC)."""

    run_id: str
    path: str
    status: str
    recorded_status: str
    devices: str
    step: int
    total_steps: int | None
    epoch: int
    max_epochs: int | None
    metric: str | None
    value: float | None
    created: str | None
    started: str | None
    finished: str | None
    finished_estimated: bool  # a killed run: its last heartbeat, not a recorded finish
    duration_s: float | None  # time spent training: the sum of its attempts' RUNNING spans
    note: str
    overrides: list[str] = field(default_factory=list)
    last_metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float | None = None  # from its first start to its finish (or now): continued later, far more
    attempts: int = 0
    cpu_fallback: bool = False  # it asked for GPUs, none was available, and it trained on the CPU
    rerun_of: str | None = None  # the run it reran (`expflow rerun`)
    # attempts that stopped on a signal and were continued (or wait to be), by reason
    stops: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def package_dirs(runs_dir: str | os.PathLike[str], *, reruns: bool = False) -> list[Path]:
    """The package directories directly under ``runs_dir`` (hidden ones are expflow's own), and
    with ``reruns`` those of its reruns directory; a missing or unreadable one is one line."""
    root = Path(runs_dir)
    if not root.is_dir():
        what = "not a directory" if root.exists() else "no such runs directory"
        raise ExpflowError(f"{root}: {what} (pass --runs DIR, a directory of save-packages)")
    try:
        return listed_packages(root, reruns=reruns)
    except OSError as e:
        raise ExpflowError(f"{root}: unreadable runs directory ({e.strerror or e.__class__.__name__})") from None


class Board:
    """Reads the packages of a runs directory; caches what only changes with a file's size
    or mtime (metric records, configs), so ``--watch`` rereads little."""

    def __init__(self, runs_dir: str | os.PathLike[str]):
        self.runs_dir = Path(runs_dir)
        self._cache: dict[tuple[str, Path], tuple[tuple[int, int], Any]] = {}
        self.skipped: list[str] = []

    def _cached(self, kind: str, path: Path, load: Any) -> Any:
        try:
            st = path.stat()
            key = (st.st_size, st.st_mtime_ns)
        except OSError:
            key = (-1, -1)
        hit = self._cache.get((kind, path))
        if hit is not None and hit[0] == key:
            return hit[1]
        value = load(path)
        self._cache[(kind, path)] = (key, value)
        return value

    def rows(self) -> list[RunRow]:
        from expflow.package import SavePackage

        rows, self.skipped = [], []
        for path in package_dirs(self.runs_dir, reruns=True):  # reruns: listed with the run they reran
            try:
                rows.append(self.row(SavePackage.open(path)))
            except ExpflowError as e:
                self.skipped.append(e.one_line())
            except (KeyError, TypeError, ValueError) as e:  # a manifest of the right format but odd content
                self.skipped.append(f"{path}: unreadable package ({e.__class__.__name__}: {e})")
        return rows

    def row(self, pkg: Any) -> RunRow:
        from expflow.analysis.metrics import main_metric

        m = pkg.manifest()
        status = pkg.status().value
        hb = pkg.heartbeat() or {}
        scan = self._cached("records", pkg.records_path, _records_summary)
        cfg = self._cached("config", pkg.config_path, _config_summary)
        progress = m.get("progress") or {}
        step = max(int(progress.get("step") or 0), int(hb.get("step") or 0), scan["step"])
        epoch = max(int(progress.get("epoch") or 0), int(hb.get("epoch") or 0))
        max_epochs = progress.get("max_epochs") or cfg["max_epochs"]
        per_epoch = progress.get("steps_per_epoch")
        metric = main_metric(scan["last"], cfg["hold_best"])
        started, finished = m.get("started"), m.get("finished")
        estimated = False
        if status == "CRASHED" and m.get("status") != "CRASHED":
            # Killed: nothing recorded its end; the last heartbeat is when it was last alive.
            finished = _iso(hb.get("time")) if hb.get("time") else None
            estimated = finished is not None
        elif status not in ("COMPLETED", "CRASHED", "PRUNED"):
            finished = None
        end = _ts(finished) if finished else (time.time() if status in ("RUNNING", "PREPARING") else None)
        wall = max(end - _ts(started), 0.0) if started and end is not None else None
        training = training_seconds(m.get("status_history") or [], end)
        duration = training if training is not None else wall
        origin = m.get("origin") if isinstance(m.get("origin"), dict) else {}
        return RunRow(
            run_id=str(m.get("run_id") or pkg.path.name),
            path=str(pkg.path),
            status=status,
            recorded_status=str(m.get("status")),
            devices=_devices(m),
            step=step,
            total_steps=int(max_epochs) * int(per_epoch) if max_epochs and per_epoch else None,
            epoch=epoch,
            max_epochs=int(max_epochs) if max_epochs else None,
            metric=metric,
            value=scan["last"].get(metric) if metric else None,
            created=m.get("created"),
            started=started,
            finished=finished,
            finished_estimated=estimated,
            duration_s=round(duration, 3) if duration is not None else None,
            note=_note(status, m),
            overrides=list(m.get("overrides") or []),
            last_metrics=scan["last"],
            wall_s=round(wall, 3) if wall is not None else None,
            attempts=len(m.get("attempts") or []),
            cpu_fallback=cpu_fallback(m.get("device"), m.get("gpus"), cfg["gpu_count"], cfg["trainer_device"]),
            rerun_of=str(origin["rerun_of"]) if origin.get("rerun_of") else None,
            stops=dict(Counter(str(x["reason"]) for x in _stops(m))),
        )


def training_seconds(history: Sequence[dict[str, Any]], end: float | None) -> float | None:
    """Time spent training: the sum of the spans the run was RUNNING (one per attempt), the
    last one up to ``end`` while nothing closed it (now for a live run, the last heartbeat
    of a killed one). None when it never ran."""
    total, since, ran = 0.0, None, False
    for entry in history:
        try:
            t = _ts(entry.get("time"))
        except (TypeError, ValueError):
            continue
        if since is not None:
            total += max(t - since, 0.0)
            since = None
        if entry.get("status") == "RUNNING":
            since, ran = t, True
    if since is not None and end is not None:
        total += max(end - since, 0.0)
    return total if ran else None


def _records_summary(path: Path) -> dict[str, Any]:
    from expflow.package import effective_metrics, last_values, scan_records

    records = scan_records(path).records
    effective = effective_metrics(records)
    return {"last": last_values(records), "step": int(effective[-1]["step"]) if effective else 0}


def _config_summary(path: Path) -> dict[str, Any]:
    from expflow.package.package import read_plain_config

    cfg = read_plain_config(path)
    lifecycle = cfg.get("lifecycle") or {}
    trainer = cfg.get("trainer") or {}
    from expflow.runner import is_command

    # A command run's epochs are its program's: trainer.max_epochs says nothing about them.
    epochs = None if is_command(cfg) else trainer.get("max_epochs")
    gpu = cfg.get("gpu") if isinstance(cfg.get("gpu"), dict) else {}
    try:
        gpu_count = int(gpu.get("count") or 0)
    except (TypeError, ValueError):
        gpu_count = 0
    return {"hold_best": lifecycle.get("hold_best"), "max_epochs": epochs, "gpu_count": gpu_count,
            "trainer_device": trainer.get("device")}


def _devices(m: dict[str, Any]) -> str:
    parts = []
    if m.get("gpus"):
        parts.append("gpu " + ",".join(str(g) for g in m["gpus"]))
    device = m.get("device")
    if device and not str(device).startswith("cuda"):
        parts.append(str(device))
    return " · ".join(parts) or "-"


def _stops(m: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempts' stops on a signal (TIMEOUT, PREEMPTED, CANCELLED, REQUEUED), in order."""
    attempts = m.get("attempts") if isinstance(m.get("attempts"), list) else []
    return [a["stopped"] for a in attempts if isinstance(a, dict) and isinstance(a.get("stopped"), dict)
            and a["stopped"].get("reason")]


def _note(status: str, m: dict[str, Any]) -> str:
    stops = _stops(m)
    counts = ", ".join(f"{reason} {n}" for reason, n in Counter(str(x["reason"]) for x in stops).items())
    attempts = m.get("attempts") if isinstance(m.get("attempts"), list) else []
    last_stop = attempts[-1].get("stopped") if attempts and isinstance(attempts[-1], dict) else None
    if status == "CRASHED" and isinstance(last_stop, dict) and m.get("status") == "CRASHED":
        where = f"stopped on {last_stop.get('reason')} at step {last_stop.get('step')}, checkpointed (a retry continues)"
        return where + (f"; stops so far: {counts}" if len(stops) > 1 else "")
    note = _plain_note(status, m)
    if stops:
        requeued = f"requeued {len(stops)}x ({counts})"
        note = f"{requeued}; {note}" if note else requeued
    return note


def _plain_note(status: str, m: dict[str, Any]) -> str:
    last = (m.get("status_history") or [{}])[-1]
    if status == "QUEUED":
        return str(last.get("note") or "not started")
    if status == "CRASHED":
        err = m.get("error") or {}
        if err.get("type"):
            return f"{err['type']}: {' '.join(str(err.get('message') or '').split())}"
        if m.get("status") != "CRASHED":
            return f"process {last.get('pid')} on {last.get('host')} died ({m.get('status')})"
    origin = m.get("origin")
    if isinstance(origin, dict) and origin.get("rerun_of"):
        return f"rerun of {origin['rerun_of']}"
    return ""


def _ts(value: str | None) -> float:
    return datetime.fromisoformat(str(value)).timestamp()


def _iso(ts: float) -> str:
    from datetime import UTC

    return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="milliseconds")


# -- filtering and sorting ---------------------------------------------------------------
def parse_statuses(values: Iterable[str]) -> set[str]:
    wanted = {v.strip().upper() for value in values for v in value.split(",") if v.strip()}
    wanted = {"QUEUED" if w == "QUEUING" else "PREPARING" if w == "PREPARE" else w for w in wanted}
    unknown = sorted(wanted - set(STATUS_ORDER))
    if unknown:
        raise ExpflowError(f"--status {','.join(unknown)}: unknown status; valid: {', '.join(STATUS_ORDER)}")
    return wanted


def select(rows: list[RunRow], statuses: set[str] | None = None, sort: str = "created",
           reverse: bool = False) -> list[RunRow]:
    """Rows with one of ``statuses`` (all when empty), sorted by ``sort`` (missing values last).

    ``metric`` puts the best value first (highest accuracy, lowest loss)."""
    from expflow.analysis.metrics import higher_is_better

    if sort not in SORT_KEYS:
        raise ExpflowError(f"--sort {sort}: unknown key; valid: {', '.join(SORT_KEYS)}")
    chosen = [r for r in rows if not statuses or r.status in statuses]

    def key(r: RunRow) -> Any:
        if sort == "run":
            return r.run_id
        if sort == "status":
            return STATUS_ORDER.index(r.status)
        if sort == "metric":
            sign = -1.0 if r.metric and higher_is_better(r.metric) else 1.0
            return None if r.value is None else sign * r.value
        if sort == "duration":
            return r.duration_s
        return getattr(r, sort)

    present = sorted((r for r in chosen if key(r) is not None), key=key, reverse=reverse)
    return present + [r for r in chosen if key(r) is None]


# -- rendering ----------------------------------------------------------------------------
def local_time(value: str | None) -> str:
    if not value:
        return "-"
    t = datetime.fromisoformat(value).astimezone()
    return t.strftime("%H:%M:%S") if t.date() == datetime.now().astimezone().date() else t.strftime("%m-%d %H:%M")


def duration_text(seconds: float | None) -> str:
    """A duration a person reads: 0.4 s, 42 s, 3:05, 1:02:03."""
    if seconds is None:
        return "-"
    if seconds < 59.5:
        return f"{seconds:.1f} s" if seconds < 9.95 else f"{seconds:.0f} s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def wall_differs(r: RunRow) -> bool:
    """Whether the wall time since the first start says more than the training time: a run
    continued later, or one that waited long between attempts."""
    return (r.wall_s is not None and r.duration_s is not None
            and r.wall_s - r.duration_s >= 60 and r.wall_s > 1.5 * r.duration_s)


def time_text(r: RunRow) -> str:
    """Time spent training, and the wall time since its first start where that differs."""
    trained = duration_text(r.duration_s)
    return f"{trained} ({duration_text(r.wall_s)} since first start)" if wall_differs(r) else trained


def progress_text(r: RunRow) -> str:
    steps = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step)
    if not r.max_epochs and not r.epoch:  # a command run: its steps only
        return f"step {steps}"
    epochs = f"ep {r.epoch}/{r.max_epochs}" if r.max_epochs else f"ep {r.epoch}"
    return f"{steps} {epochs}"


def status_counts(rows: Sequence[RunRow]) -> str:
    counts = {s: sum(r.status == s for r in rows) for s in STATUS_ORDER}
    return " · ".join(f"[{STATUS_STYLE[s]}]{n} {s}[/]" for s, n in counts.items() if n) or "no runs"


def render_table(rows: Sequence[RunRow], title: str, skipped: Sequence[str] = ()) -> Any:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    metrics = {r.metric for r in rows if r.metric}
    shared = metrics.pop() if len(metrics) == 1 else None  # one metric for all: name it in the header
    caption = status_counts(rows) + (f" · {len(skipped)} unreadable" if skipped else "")
    fallbacks = sum(r.cpu_fallback for r in rows)
    if fallbacks:
        caption += (f"\n[yellow]{fallbacks} run(s) asked for GPUs and trained on the CPU: no GPU was available "
                    "(gpu.allow_cpu=true)[/]")
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, show_edge=False, collapse_padding=True)
    for name, kw in (("run", {"no_wrap": True}), ("status", {"no_wrap": True}), ("devices", {"min_width": 5}),
                     ("progress", {"no_wrap": True}), (shared or "main metric", {"justify": "right", "min_width": 7}),
                     ("started", {"min_width": 8}), ("finished", {"min_width": 8}),
                     ("trained", {"justify": "right"}),
                     ("note", {"overflow": "fold", "min_width": 10, "max_width": 48})):
        if name != "note" or any(r.note for r in rows):
            table.add_column(name, **kw)
    for r in rows:
        value = "-" if r.value is None else f"{r.value:.4g}" if shared else f"{r.metric}={r.value:.4g}"
        finished = ("~" if r.finished_estimated else "") + local_time(r.finished)
        devices = escape(r.devices) + (" [yellow](CPU fallback)[/]" if r.cpu_fallback else "")
        cells = [r.run_id, f"[{STATUS_STYLE[r.status]}]{r.status}[/]", devices, progress_text(r),
                 value, local_time(r.started), finished, time_text(r), escape(r.note)]
        table.add_row(*cells[:len(table.columns)])
    return table


# -- the command ----------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="a table of every package in a runs directory (--watch to follow)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs", metavar="DIR", help="the runs directory (default: runs)")
    p.add_argument("--watch", action="store_true", help="refresh the table in place until Ctrl-C")
    from expflow.config.numbers import number_option

    p.add_argument("--interval", type=number_option(0), default=2.0, metavar="S", help="seconds between refreshes (--watch)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--status", action="append", default=[], metavar="S",
                   help=f"only these statuses (comma-separated or repeated): {', '.join(STATUS_ORDER)}")
    p.add_argument("--sort", default="created", choices=SORT_KEYS, help="sort key (default: created)")
    p.add_argument("--reverse", action="store_true", help="reverse the order")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    import json

    statuses = parse_statuses(args.status)
    board = Board(args.runs)

    def current() -> list[RunRow]:
        return select(board.rows(), statuses, args.sort, args.reverse)

    if args.json:
        print(json.dumps([r.to_json() for r in current()], indent=2))
        return 0
    console = output_console()
    title = f"runs in {args.runs}"
    if not args.watch:
        console.print(render_table(current(), title, board.skipped))
        return 0
    from rich.live import Live

    interval = max(args.interval, 0.1)
    with Live(render_table(current(), title, board.skipped), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                stamp = datetime.now().strftime("%H:%M:%S")
                live.update(render_table(current(), f"{title} (at {stamp}, every {interval:g}s)", board.skipped),
                            refresh=True)
        except KeyboardInterrupt:
            pass
    return 0


def output_console() -> Console:
    """The console a command prints to: the terminal's width; piped or logged (no terminal and
    no COLUMNS), wide enough that table rows and lines stay whole."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        return Console(width=200)
    return console
