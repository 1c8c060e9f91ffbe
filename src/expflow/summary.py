"""What `expflow show` reports about one package, as data and as rich text."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from expflow.analysis import analysis_records, headline
from expflow.errors import ExpflowError
from expflow.gpu import cpu_fallback_line
from expflow.launch import asked_devices
from expflow.package import SavePackage, last_values
from expflow.package.records import RecordScan
from expflow.package.status import Status


def _one_line(e: Exception) -> str:
    return e.one_line() if isinstance(e, ExpflowError) else f"{e.__class__.__name__}: {' '.join(str(e).split())}"


def package_summary(pkg: SavePackage) -> dict[str, Any]:
    """What `show` reports. A damaged manifest raises (nothing can be shown without it);
    a damaged checkpoint index or record file is listed under ``damaged`` and the rest is
    still reported; a damaged heartbeat is ignored (no heartbeat) and listed under ``warnings``."""
    m = pkg.manifest()
    status = pkg.status()
    damaged: list[str] = []
    records_error = None
    try:
        scan = pkg.scan_records()
    except ExpflowError as e:
        scan, records_error = RecordScan(), e.one_line()
        damaged.append(records_error)
    try:
        checkpoints = [
            {"step": c.step, "epoch": c.epoch, "number": c.number, "tracks": list(c.tracks), "file": c.file}
            for c in pkg.checkpoints().list()
        ]
    except Exception as e:  # an unreadable index must not hide the rest
        checkpoints = [{"error": _one_line(e)}]
        damaged.append(_one_line(e))
    heartbeat, heartbeat_problem = pkg.read_heartbeat()
    gpu_count, trainer_device = asked_devices(pkg)
    analyses = sorted(p.name for p in pkg.analysis_dir.iterdir() if not p.name.startswith(".")) if pkg.analysis_dir.is_dir() else []
    return {
        "run_id": m.get("run_id"),
        "path": str(pkg.path),
        "status": status.value,
        "recorded_status": m.get("status"),
        "seed": m.get("seed"),
        "fingerprint": m.get("fingerprint"),
        "overrides": m.get("overrides", []),
        "created": m.get("created"),
        "started": m.get("started"),
        "finished": m.get("finished") if status in (Status.COMPLETED, Status.CRASHED, Status.PRUNED) else None,
        "device": m.get("device"),
        "gpus": m.get("gpus", []),
        "gpu_count": gpu_count,
        "trainer_device": trainer_device,
        "progress": m.get("progress"),
        "command": m.get("command"),  # a command run's program: argv, pid, cwd
        "git": m.get("git"),
        "versions": m.get("versions"),
        "origin": m.get("origin"),
        "error": m.get("error"),
        "search": m.get("search"),  # a search trial's study, trial number and parameters
        "pruned": m.get("pruned"),  # where the search's pruner stopped it
        "checkpoints": checkpoints,
        "metrics_last": last_values(scan.records),
        "records": {"count": len(scan.records), "problems": [str(p) for p in scan.problems],
                    **({"error": records_error} if records_error else {})},
        "analyses": analyses,
        "analysis_records": analysis_records(pkg),
        "status_history": m.get("status_history", []),
        "attempts": m.get("attempts", []),
        "leases": m.get("leases", []),
        "heartbeat": heartbeat,
        "pending": pkg.pending(m),
        "damaged": damaged,
        "warnings": [f"{heartbeat_problem} (ignored: treated as no heartbeat)"] if heartbeat_problem else [],
    }


def error_tail(pkg: SavePackage, lines: int = 30, log: str | None = None) -> list[str]:
    err = Path(log) if log and Path(log).is_file() else pkg.log_path(0, "err")  # a moved package: its own log
    try:
        return err.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def render_summary(summary: dict[str, Any], pkg: SavePackage, console: Console) -> None:
    from expflow.status_board import STATUS_STYLE

    status = summary["status"]
    color = STATUS_STYLE.get(status, "yellow")
    shown_status = f"{status} (not started)" if summary.get("pending") else status
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")
    prog = summary.get("progress") or {}
    rows = [
        ("run", escape(str(summary["run_id"]))),
        ("path", escape(summary["path"])),
        ("status", f"[{color}]{shown_status}[/]"),
        ("seed", str(summary["seed"])),
        ("overrides", escape(" ".join(summary["overrides"])) or "none (the config's defaults)"),
        ("config fingerprint", str(summary["fingerprint"])[:16]),
        ("device", escape(device_text(summary))),
        ("progress", progress_words(prog)),
        *([("command", escape(" ".join(str(a) for a in (summary["command"].get("argv") or []))))]
          if isinstance(summary.get("command"), dict) else []),
        ("created", _when(summary["created"])),
        ("started", _when(summary["started"]) if summary["started"] else "not yet"),
        ("finished", _when(summary["finished"]) if summary["finished"] else "not yet"),
        ("time training", trained_text(summary)),
    ]
    git = summary.get("git") or {}
    if git:
        rows.append(("git commit", f"{git.get('commit') or '(no commit)'}{' (with uncommitted changes)' if git.get('dirty') else ''}"))
    origin = summary.get("origin")
    if origin:
        rows.append(("origin", escape(f"a rerun of {origin['rerun_of']} ({origin.get('path')})"
                                      if isinstance(origin, dict) and origin.get("rerun_of") else str(origin))))
    for k, v in rows:
        head.add_row(k, v)
    console.print(head)
    fallback = cpu_fallback_line(summary.get("device"), summary.get("gpus"), summary.get("gpu_count") or 0,
                                 summary.get("trainer_device"))
    if fallback:
        console.print(f"[yellow]{escape(fallback)}[/]")
    ck = Table(title="checkpoints", title_justify="left")
    for col in ("step", "epoch", "kept in tracks", "file"):
        ck.add_column(col)
    for c in summary["checkpoints"]:
        if "error" in c:
            ck.add_row("!", "", escape(c["error"]), "")
        else:
            ck.add_row(str(c["step"]), str(c["epoch"]), ",".join(c["tracks"]), c["file"])
    if summary["checkpoints"]:
        console.print(ck)
    else:
        console.print("checkpoints: none saved yet")
    mt = Table(title="last value of each metric", title_justify="left")
    mt.add_column("metric")
    mt.add_column("value", justify="right")
    for k, v in sorted(summary["metrics_last"].items()):
        mt.add_row(k, f"{v:.6g}")
    if summary["metrics_last"]:
        console.print(mt)
    else:
        console.print("metrics: none recorded yet")
    problems = summary["records"]["problems"]
    if problems:
        console.print(f"[yellow]metric records: {len(problems)} invalid line(s): {escape(problems[0])}[/]")
    if summary["records"].get("error"):
        console.print(f"[red]metric records: {escape(summary['records']['error'])}[/]", soft_wrap=True)
    for warning in summary.get("warnings") or []:
        console.print(f"[yellow]warning: {escape(warning)}[/]", soft_wrap=True)
    render_history(summary, console)
    render_analyses(summary, console)
    search = summary.get("search")
    if isinstance(search, dict):
        params = " ".join(f"{k}={v}" for k, v in (search.get("params") or {}).items())
        console.print(f"search: {escape(str(search.get('study')))} trial {search.get('trial')} ({escape(params)})",
                      highlight=False)
    pruned = summary.get("pruned")
    if status == "PRUNED" and isinstance(pruned, dict):
        console.print(f"[magenta]pruned by its study's pruner at step {pruned.get('step')} "
                      f"({escape(str(pruned.get('objective')))} = {pruned.get('value')})[/]", highlight=False)
    if status == "CRASHED":
        err = summary.get("error") or {}
        if err:
            console.print(f"[red]error: {escape(str(err.get('type')))}: {escape(str(err.get('message')))}[/]",
                          highlight=False)
        else:
            last = (summary.get("status_history") or [{}])[-1]
            beat = (summary.get("heartbeat") or {}).get("time")
            seen = f"; last heartbeat {datetime.fromtimestamp(beat):%Y-%m-%d %H:%M:%S}" if beat else ""
            console.print(f"[red]process {last.get('pid')} on {last.get('host')} died while "
                          f"{summary.get('recorded_status')} without recording an error (killed?){seen}[/]")
        tail = error_tail(pkg, log=err.get("log"))
        if tail:
            console.print("[bold]last lines of the error log:[/]")
            console.print("\n".join(tail), markup=False, highlight=False)


def device_text(summary: dict[str, Any]) -> str:
    """Where the run trained, in words: its GPUs, or the CPU."""
    gpus = summary.get("gpus") or []
    device = summary.get("device")
    if gpus:
        return f"GPU {', '.join(map(str, gpus))}" + (f" ({device})" if device else "")
    if device is None:
        return "not chosen yet"
    return "the CPU" if str(device) == "cpu" else str(device)


def trained_text(summary: dict[str, Any]) -> str:
    """Time spent training (the sum of its attempts), and since its first start where that differs."""
    from expflow.status_board import duration_text, training_seconds

    history = summary.get("status_history") or []
    live = summary["status"] in ("RUNNING", "PREPARING")
    beat = (summary.get("heartbeat") or {}).get("time")
    end = datetime.now().timestamp() if live else (float(beat) if summary["status"] == "CRASHED" and beat else None)
    trained = training_seconds(history, end)
    if trained is None:
        return "not yet"
    attempts = len(summary.get("attempts") or [])
    over = f" over {attempts} attempts" if attempts > 1 else ""
    return f"{duration_text(trained)}{over}"


def progress_words(prog: dict[str, Any]) -> str:
    if not prog:
        return "not started"
    step = f"step {prog.get('step')}"
    if prog.get("max_epochs"):
        return f"epoch {prog.get('epoch')} of {prog.get('max_epochs')}, {step}"
    return step


def render_history(summary: dict[str, Any], console: Console) -> None:
    """Status transitions, attempts (train/continue) and GPU leases, one line each."""
    history = summary.get("status_history") or []
    if history:
        steps = [f"{h.get('status')} {_clock(h.get('time'))}" + (f" ({h['note']})" if h.get("note") else "")
                 for h in history]
        console.print(f"status history ({_date(history[0].get('time'))}): " + " -> ".join(steps),
                      markup=False, highlight=False)
    for a in summary.get("attempts") or []:
        start = f"from the checkpoint at step {a['from_step']}" if "from_step" in a else "from the start"
        console.print(f"attempt: {a.get('kind')} {start}, at {_clock(a.get('time'))}", markup=False, highlight=False)
    for lease in summary.get("leases") or []:
        released = lease.get("released")
        held = f"held {released - lease['acquired']:.1f} s" if released and lease.get("acquired") else "held now"
        gpus = f"GPU {', '.join(map(str, lease['gpus']))}" if lease.get("gpus") else "no GPU (the CPU)"
        console.print(f"device lease: {gpus}, {held}", markup=False, highlight=False)


def render_analyses(summary: dict[str, Any], console: Console) -> None:
    """One line per analysis: which checkpoint, when, its scalar results and its files."""
    records = summary.get("analysis_records") or {}
    if not summary.get("analyses"):
        return
    console.print("[bold]analyses[/] (in analysis/):")
    for name in summary["analyses"]:
        rec = records.get(name)
        if rec is None:
            console.print(f"  {name}: incomplete (no analysis.json)", markup=False, highlight=False)
            continue
        if rec.get("error"):
            console.print(f"  {name}: unreadable ({rec['error']})", markup=False, highlight=False)
            continue
        if not rec.get("applicable", True):
            console.print(f"  {name}: does not apply ({rec.get('reason')})", markup=False, highlight=False)
            continue
        ck = rec.get("checkpoint") or {}
        on = f"the checkpoint at step {ck['step']}" if ck.get("step") is not None else "no checkpoint"
        results = headline(summary["path"], name, rec)
        files = rec.get("files") or []
        console.print(f"  {name}: ran at {_clock(rec.get('time'))} on {on}; "
                      f"results: {results or 'none (files only)'}; files: {', '.join(files) or 'none'}",
                      markup=False, highlight=False)


def _when(value: Any) -> str:
    t = _local(value)
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else str(value)


def _local(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value)).astimezone()
    except ValueError:
        return None


def _clock(value: Any) -> str:
    t = _local(value)
    return t.strftime("%H:%M:%S") if t else str(value)


def _date(value: Any) -> str:
    t = _local(value)
    return t.strftime("%Y-%m-%d") if t else "?"
