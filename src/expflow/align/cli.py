"""``expflow align [SPEC] [--out DIR] [key=value ...]``: thin; the work is in ``pipeline``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUT = Path("outputs/align")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "align",
        help="align VERL/ROLL/SLIME/expflow metrics onto one naming (tables, check, plots, tracker)",
        description=(
            "Read each framework's metrics (SwanLab, W&B, TensorBoard, CSV, expflow packages), map "
            "them onto the spec's aligned names, and write aligned.parquet/.csv, check.json, plots "
            "and one tracker experiment per framework. Unchanged sources are served from the cache."
        ),
    )
    p.add_argument(
        "spec", nargs="?", default=None,
        help="the alignment spec, e.g. conf/align/example.yaml (default: secrets/config.yaml, then config.yaml)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="spec overrides in dot notation, e.g. frameworks.roll.enabled=false")
    p.add_argument("--out", default=None, metavar="DIR", help=f"output directory (default: {DEFAULT_OUT}/<spec name>)")
    p.add_argument("--cache", default=None, metavar="DIR", help="source cache directory (default: the spec's cache_dir, else DIR/cache)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots and the HTML page")
    p.add_argument("--no-tracker", action="store_true", help="skip the tracker experiments")
    p.add_argument("--workflow-runs", default=None, metavar="RUNS_DIR",
                   help="the workflow's runs directory: expflow sources on it align only --run-ids")
    p.add_argument("--run-ids", default="", metavar="ID,ID,...", help="the workflow's run ids (with --workflow-runs)")
    p.add_argument("--strict", action="store_true",
                   help="a package with damaged record lines fails its framework (default: align its valid "
                        "records and warn, one line per package)")
    p.set_defaults(func=cmd_align)


def cmd_align(args: argparse.Namespace) -> int:
    from expflow.align import rerun
    from expflow.align.spec import find_spec, load_spec

    spec_path = Path(args.spec) if args.spec else find_spec()
    plan = load_spec(spec_path, args.overrides)
    if plan.seed_equivalent:
        print(f"{spec_path}: read as a seed 002 config; the equivalent expflow spec is:\n{plan.seed_equivalent}")
    out = Path(args.out) if args.out else DEFAULT_OUT / spec_path.stem
    workflow = None
    if args.workflow_runs:
        ids = [r for r in args.run_ids.split(",") if r]
        workflow = _workflow(Path(args.workflow_runs), ids)
    options = {"plots": not args.no_plots, "tracker": not args.no_tracker, "strict": args.strict, "cache": args.cache}
    key = rerun.run_key(spec_path, args.overrides, options, plan, workflow)
    last = rerun.load_unchanged(out, key)
    if last is not None:  # nothing changed: nothing is read, aligned or written
        _print_last(out, last)
        return _exit(last)
    return _run(plan, out, args, workflow, key)


def _workflow(runs_dir: Path, ids: list[str]) -> object:
    from expflow.align.pipeline import WorkflowRuns

    return WorkflowRuns(runs_dir, ids)


def _run(plan: object, out: Path, args: argparse.Namespace, workflow: object, key: str | None) -> int:
    from rich.console import Console

    from expflow.align import rerun
    from expflow.align.pipeline import run_alignment, summary_error

    result = run_alignment(
        plan,  # type: ignore[arg-type]
        out,
        cache_dir=args.cache,
        workflow=workflow,  # type: ignore[arg-type]
        plots=not args.no_plots,
        tracker=not args.no_tracker,
        console=Console(),
        strict=args.strict,
    )
    summary = f"aligned {len(result.table):,} points into {out}"
    print(summary)
    for warning in result.warnings:
        print(f"expflow: warning: {warning}", file=sys.stderr)
    error = summary_error(result)
    rerun.save(out, key, rerun.tree_files(out), summary, error.exit_code if error else 0,
               error.one_line() if error else None, result.warnings)
    if error is not None:
        raise error
    return 0


def _print_last(out: Path, last: dict) -> None:
    import json

    from rich.console import Console

    from expflow.align.check import CHECK_FILE, FrameworkCheck, render_check

    report = json.loads((out / CHECK_FILE).read_text())
    checks = [FrameworkCheck(**{k: v for k, v in c.items() if k in FrameworkCheck.__dataclass_fields__})
              for c in report["frameworks"].values()]
    render_check(checks, report["aligned_metrics"], Console())
    print(f"{last['summary']} (unchanged: no source, spec or option changed since the last run; nothing written)")
    for warning in last.get("warnings") or []:
        print(f"expflow: warning: {warning}", file=sys.stderr)


def _exit(last: dict) -> int:
    if last.get("exit_code"):
        from expflow.align.pipeline import SourceFailures

        raise SourceFailures(last["error"])
    return 0
