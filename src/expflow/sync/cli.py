"""``expflow sync <packages…> --target swanlab|mlflow``: thin; the work is in expflow.sync."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from expflow.sync import TARGETS


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sync", help="upload packages' metrics to SwanLab or an MLflow server (idempotent, incremental)",
        description="Upload save-packages to a tracking server. Only what is not there yet goes up; "
                    "invalid records are reported with their position and skipped (--strict: fail); "
                    "no network or no credentials defers a package (exit 0), the next sync catches up.",
    )
    p.add_argument("packages", nargs="+", help="save-package directories (runs/<run_id>)")
    p.add_argument("--target", required=True, choices=TARGETS, help="where to upload")
    p.add_argument("--id", dest="experiment", default="auto", metavar="new|auto|ID",
                   help="new: a new experiment/run (later syncs continue it); auto (default): the one "
                        "recorded in the package's logs or tagged with its run id; ID: that existing one")
    p.add_argument("--strict", action="store_true", help="fail a package on its first invalid record")
    p.add_argument("--uri", default=None,
                   help="the server: MLflow tracking URI, or SwanLab API host of a private deployment "
                        "(default: the package's tracker config, then $MLFLOW_TRACKING_URI / SwanLab cloud)")
    p.add_argument("--project", default=None, help="SwanLab project / MLflow experiment (default: the package's)")
    p.add_argument("--workspace", default=None, help="SwanLab workspace (organization)")
    p.add_argument("--artifact", dest="artifacts", action="append", default=[], metavar="GLOB",
                   help="MLflow: also upload these package files (relative glob, repeatable)")
    from expflow.config.numbers import number_option

    p.add_argument("--timeout", type=number_option(0), default=120.0, help="seconds an upload may take before it is deferred")
    p.add_argument("--done", default=None, metavar="FILE",
                   help="(workflow) write this marker when no package failed; a deferred sync's marker "
                        "is removed by the next workflow run, which syncs again")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from expflow.sync import sync_packages, validate_experiment_id

    experiment = validate_experiment_id(args.experiment)
    options: dict[str, Any] = {"uri": args.uri, "project": args.project, "timeout": args.timeout}
    if args.target == "swanlab":
        options["workspace"] = args.workspace
    else:
        options["artifacts"] = args.artifacts
    results = sync_packages(args.packages, args.target, experiment=experiment, strict=args.strict,
                            report=report_result, **options)
    counts = {o: sum(r.outcome == o for r in results) for o in ("synced", "up to date", "deferred", "failed")}
    print("sync: " + ", ".join(f"{n} {o}" for o, n in counts.items() if n), flush=True)
    if counts["failed"]:
        return 1
    if args.done:
        write_marker(args.done, results, deferred=bool(counts["deferred"]))
    return 0


def report_result(result: Any) -> None:
    """One line per package: on stdout, or stderr for a package that failed."""
    print(result.line(), file=sys.stderr if result.outcome == "failed" else sys.stdout, flush=True)


def write_marker(path: str, results: list[Any], *, deferred: bool) -> None:
    """The workflow's output of a sync job: its first line is ``deferred`` when a package
    was deferred (see :func:`forget_deferred`), else ``done``; then one line per package."""
    from expflow.atomic import atomic_write_text

    lines = ["deferred" if deferred else "done", *(r.line() for r in results)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def forget_deferred(markers: Iterable[str | Path]) -> list[Path]:
    """Remove the markers of deferred syncs (the workflow calls this when it plans the DAG),
    so their jobs run again: the next workflow run catches up. Returns the removed ones."""
    removed = []
    for marker in map(Path, markers):
        try:
            with marker.open("rb") as f:
                deferred = f.readline().strip() == b"deferred"
        except OSError:
            continue
        if deferred:
            marker.unlink(missing_ok=True)
            removed.append(marker)
    return removed
