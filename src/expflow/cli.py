"""The ``expflow`` command line. Thin: each command parses its arguments and calls
the package; every ExpflowError becomes one line and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rich.console import Console

from expflow import __version__
from expflow.errors import ExpflowError, PackageError


def cmd_show(args: argparse.Namespace) -> int:
    from expflow.package import SavePackage
    from expflow.summary import package_summary, render_summary

    pkg = SavePackage.open(args.package)
    summary = package_summary(pkg)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        render_summary(summary, pkg, Console())
    return 0


def cmd_continue(args: argparse.Namespace) -> int:
    from expflow.package import SavePackage, Status
    from expflow.trainer import launch

    pkg = SavePackage.open(args.package)
    status = pkg.status()
    if status.active:
        raise PackageError(f"{pkg.path}: the run is {status.value} in a live process; stop it before continuing")
    store = pkg.checkpoints()
    if args.checkpoint is not None or store.list():
        # Fail early, in this process, on a missing or corrupt checkpoint.
        store.load(store.find(args.checkpoint), map_location="cpu")
    elif status is Status.COMPLETED and not args.force:
        Console().print(f"{pkg.run_id} is already COMPLETED; nothing to continue (use --checkpoint STEP to resume an earlier one)")
        return 0
    resume = args.checkpoint if args.checkpoint is not None else "latest"
    result = launch(pkg, resume=resume, from_snapshot=not args.working_tree)
    Console().print(f"[green]{pkg.run_id} COMPLETED[/]")
    for k, v in sorted(result.metrics.items()):
        Console().print(f"  {k} = {v:.6g}")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    from expflow.rerun import run_command

    return run_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expflow", description="Declarative ML experiments: save-packages, workflows, GPU leases.")
    parser.add_argument("--version", action="version", version=f"expflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("show", help="details of one save-package")
    p.add_argument("package", help="the save-package directory (runs/<run_id>)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("continue", help="resume a package from its latest (or a chosen) checkpoint")
    p.add_argument("package", help="the save-package directory")
    p.add_argument("--checkpoint", type=int, default=None, metavar="STEP",
                   help="resume from the checkpoint at this step (default: the latest)")
    p.add_argument("--force", action="store_true", help="continue even a COMPLETED package (from its latest checkpoint)")
    p.add_argument("--working-tree", action="store_true",
                   help="import code from the working tree instead of the package's snapshot")
    p.set_defaults(func=cmd_continue)

    from expflow.rerun import add_arguments

    p = sub.add_parser("rerun", help="rerun a package from its snapshot into a new one and compare metrics")
    add_arguments(p)
    p.set_defaults(func=cmd_rerun)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ExpflowError as e:
        if not e.reported:
            print(f"expflow: error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("expflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
