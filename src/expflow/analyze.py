"""``expflow analyze <package> <script>`` and ``python -m expflow.analyze <package> script=<name>``:
run an analysis script over a trained package (see :mod:`expflow.analysis`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    from expflow.config.numbers import int_option

    p.add_argument("package", help="the save-package directory (runs/<run_id>)")
    p.add_argument("script", nargs="*", default=[],
                   help="the scripts' names (or script=<name>, or paths to .py files), run one after the other "
                        "in one analysis process; see --list")
    p.add_argument("--checkpoint", type=int_option(0), default=None, metavar="STEP",
                   help="analyze the checkpoint at this step (default: the latest)")
    p.add_argument("--gpus", type=int_option(0), default=None, metavar="N",
                   help="GPUs the analysis leases (default: 1 when the run used GPUs, else 0)")
    p.add_argument("--project", default=".", metavar="DIR",
                   help="the project whose analysis/ folder is searched first (default: .)")
    p.add_argument("--working-tree", action="store_true",
                   help="import code from the working tree instead of the package's snapshot")
    p.add_argument("--list", action="store_true", help="list the scripts that can run, and exit")
    p.add_argument("--json", action="store_true", help="print the analysis record as JSON")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("analyze", help="run an analysis script over a package (results in <package>/analysis/)",
                              description=__doc__)
    add_arguments(p)
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from expflow.analysis import available_scripts, headline, run_analyses
    from expflow.errors import ExpflowError
    from expflow.package import SavePackage

    pkg = SavePackage.open(args.package)
    if args.list or not args.script:
        scripts = available_scripts(args.project, pkg)
        if not args.list:
            raise ExpflowError(f"name a script to run; valid: {', '.join(sorted(scripts))}")
        for name, ref in sorted(scripts.items()):
            print(f"{name:24} {ref.origin:9} {ref.describe()}")
        return 0
    names = [script.removeprefix("script=") for script in args.script]
    console = Console(stderr=True)
    records = run_analyses(pkg, names, checkpoint=args.checkpoint, gpus=args.gpus, project_dir=args.project,
                           working_tree=args.working_tree,
                           on_wait=lambda: console.print(f"[yellow]{pkg.run_id}: analysis waiting for a GPU lease[/]"))
    if args.json:
        print(json.dumps(records[0] if len(records) == 1 else records, indent=2))
        return 0
    for record in records:
        if not record.get("applicable", True):
            continue  # the analysis process said why
        shown = headline(pkg.path, record["script"], record, limit=8)
        if shown:
            print(f"  {record['script'] + ': ' if len(records) > 1 else ''}{shown}")
        print(f"  files: {', '.join(record['files'])}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The same as ``expflow analyze`` (one-line errors included)."""
    from expflow.cli import main as cli_main

    return cli_main(["analyze", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
