"""What ``expflow show`` reports about one package, as data and as rich text."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from expflow.analysis import analysis_records, headline
from expflow.errors import ExpflowError
from expflow.package import SavePackage, last_values
from expflow.package.records import RecordScan
from expflow.package.status import Status


def _one_line(e: Exception) -> str:
    return e.one_line() if isinstance(e, ExpflowError) else f"{e.__class__.__name__}: {' '.join(str(e).split())}"


def package_summary(pkg: SavePackage) -> dict[str, Any]:
    """What ``show`` reports. A damaged manifest raises (nothing can be shown without it);
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
        "finished": m.get("finished") if status in (Status.COMPLETED, Status.CRASHED) else None,
        "device": m.get("device"),
        "gpus": m.get("gpus", []),
        "progress": m.get("progress"),
        "command": m.get("command"),  # a command run's program: argv, pid, cwd
        "git": m.get("git"),
        "versions": m.get("versions"),
        "origin": m.get("origin"),
        "error": m.get("error"),
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
    status = summary["status"]
    color = {"COMPLETED": "green", "CRASHED": "red", "RUNNING": "cyan"}.get(status, "yellow")
    shown_status = f"{status} (not started)" if summary.get("pending") else status
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    prog = summary.get("progress") or {}
    rows = [
        ("run", summary["run_id"]),
        ("path", summary["path"]),
        ("status", f"[{color}]{shown_status}[/]"),
        ("seed", str(summary["seed"])),
        ("overrides", " ".join(summary["overrides"]) or "-"),
        ("fingerprint", str(summary["fingerprint"])[:16]),
        ("device", f"{summary.get('device')} gpus={summary.get('gpus')}"),
        ("progress", f"epoch {prog.get('epoch')}/{prog.get('max_epochs')} step {prog.get('step')}"
                     if prog.get("max_epochs") else f"step {prog.get('step')}"),
        *([("command", " ".join(str(a) for a in (summary["command"].get("argv") or [])))]
          if isinstance(summary.get("command"), dict) else []),
        ("created", str(summary["created"])),
        ("started", str(summary["started"])),
        ("finished", str(summary["finished"])),
    ]
    git = summary.get("git") or {}
    if git:
        rows.append(("git", f"{git.get('commit') or '(no commit)'}{' (dirty)' if git.get('dirty') else ''}"))
    if summary.get("origin"):
        rows.append(("origin", str(summary["origin"])))
    for k, v in rows:
        head.add_row(k, v)
    console.print(head)
    ck = Table(title="checkpoints", title_justify="left")
    for col in ("step", "epoch", "tracks", "file"):
        ck.add_column(col)
    for c in summary["checkpoints"]:
        if "error" in c:
            ck.add_row("!", "", escape(c["error"]), "")
        else:
            ck.add_row(str(c["step"]), str(c["epoch"]), ",".join(c["tracks"]), c["file"])
    console.print(ck)
    mt = Table(title="last metrics", title_justify="left")
    mt.add_column("metric")
    mt.add_column("value", justify="right")
    for k, v in sorted(summary["metrics_last"].items()):
        mt.add_row(k, f"{v:.6g}")
    console.print(mt)
    problems = summary["records"]["problems"]
    if problems:
        console.print(f"[yellow]metric records: {len(problems)} invalid line(s): {escape(problems[0])}[/]")
    if summary["records"].get("error"):
        console.print(f"[red]metric records: {escape(summary['records']['error'])}[/]", soft_wrap=True)
    for warning in summary.get("warnings") or []:
        console.print(f"[yellow]warning: {escape(warning)}[/]", soft_wrap=True)
    render_history(summary, console)
    render_analyses(summary, console)
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


def render_history(summary: dict[str, Any], console: Console) -> None:
    """Status transitions, attempts (train/continue) and GPU leases, one line each."""
    history = summary.get("status_history") or []
    if history:
        steps = [f"{h.get('status')} {_clock(h.get('time'))}" + (f" ({h['note']})" if h.get("note") else "")
                 for h in history]
        console.print(f"history ({_date(history[0].get('time'))}): " + " -> ".join(steps),
                      markup=False, highlight=False)
    for a in summary.get("attempts") or []:
        start = f" from step {a['from_step']}" if "from_step" in a else ""
        console.print(f"attempt: {a.get('kind')}{start} at {_clock(a.get('time'))}", markup=False, highlight=False)
    for lease in summary.get("leases") or []:
        released = lease.get("released")
        held = f"held {released - lease['acquired']:.1f}s" if released and lease.get("acquired") else "held now"
        gpus = f"gpus {lease['gpus']}" if lease.get("gpus") else "no GPU (cpu)"
        console.print(f"lease: {gpus}, {held}", markup=False, highlight=False)


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
        at = f" at step {ck['step']}" if ck else ""
        results = headline(summary["path"], name, rec) or "-"
        console.print(f"  {name}{at} ({_clock(rec.get('time'))}): {results} -> {', '.join(rec.get('files', []))}",
                      markup=False, highlight=False)


def _local(value: Any) -> datetime | None:
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
