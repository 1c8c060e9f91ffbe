"""What ``expflow show`` reports about one package, as data and as rich text."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from expflow.package import SavePackage, last_values
from expflow.package.status import Status


def package_summary(pkg: SavePackage) -> dict[str, Any]:
    m = pkg.manifest()
    status = pkg.status()
    scan = pkg.scan_records()
    try:
        checkpoints = [
            {"step": c.step, "epoch": c.epoch, "number": c.number, "tracks": list(c.tracks), "file": c.file}
            for c in pkg.checkpoints().list()
        ]
    except Exception as e:  # an unreadable index must not hide the rest
        checkpoints = [{"error": str(e)}]
    analyses = sorted(p.name for p in pkg.analysis_dir.iterdir()) if pkg.analysis_dir.is_dir() else []
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
        "git": m.get("git"),
        "versions": m.get("versions"),
        "origin": m.get("origin"),
        "error": m.get("error"),
        "checkpoints": checkpoints,
        "metrics_last": last_values(scan.records),
        "records": {"count": len(scan.records), "problems": [str(p) for p in scan.problems]},
        "analyses": analyses,
    }


def error_tail(pkg: SavePackage, lines: int = 30) -> list[str]:
    err = pkg.log_path(0, "err")
    try:
        return err.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def render_summary(summary: dict[str, Any], pkg: SavePackage, console: Console) -> None:
    status = summary["status"]
    color = {"COMPLETED": "green", "CRASHED": "red", "RUNNING": "cyan"}.get(status, "yellow")
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    prog = summary.get("progress") or {}
    rows = [
        ("run", summary["run_id"]),
        ("path", summary["path"]),
        ("status", f"[{color}]{status}[/]"),
        ("seed", str(summary["seed"])),
        ("overrides", " ".join(summary["overrides"]) or "-"),
        ("fingerprint", str(summary["fingerprint"])[:16]),
        ("device", f"{summary.get('device')} gpus={summary.get('gpus')}"),
        ("progress", f"epoch {prog.get('epoch')}/{prog.get('max_epochs')} step {prog.get('step')}"),
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
            ck.add_row("!", "", c["error"], "")
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
        console.print(f"[yellow]metric records: {len(problems)} invalid line(s): {problems[0]}[/]")
    if summary["analyses"]:
        console.print("analyses: " + ", ".join(summary["analyses"]))
    if status == "CRASHED":
        err = summary.get("error") or {}
        if err:
            console.print(f"[red]error: {err.get('type')}: {err.get('message')}[/]")
        tail = error_tail(pkg)
        if tail:
            console.print("[bold]last lines of the error log:[/]")
            console.print("\n".join(tail), markup=False, highlight=False)
