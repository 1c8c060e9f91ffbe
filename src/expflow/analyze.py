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
    p.add_argument("script", nargs="?", default=None,
                   help="the script's name (or script=<name>, or a path to a .py file); see --list")
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

    from expflow.analysis import available_scripts, headline, run_analysis
    from expflow.errors import ExpflowError
    from expflow.package import SavePackage

    pkg = SavePackage.open(args.package)
    if args.list or args.script is None:
        scripts = available_scripts(args.project, pkg)
        if not args.list:
            raise ExpflowError(f"name a script to run; valid: {', '.join(sorted(scripts))}")
        for name, ref in sorted(scripts.items()):
            print(f"{name:24} {ref.origin:9} {ref.describe()}")
        return 0
    script = args.script.removeprefix("script=")
    console = Console(stderr=True)
    record = run_analysis(pkg, script, checkpoint=args.checkpoint, gpus=args.gpus, project_dir=args.project,
                          working_tree=args.working_tree,
                          on_wait=lambda: console.print(f"[yellow]{pkg.run_id}: analysis waiting for a GPU lease[/]"))
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    if not record.get("applicable", True):
        return 0  # the analysis process said why
    shown = headline(pkg.path, record["script"], record, limit=8)
    if shown:
        print(f"  {shown}")
    print(f"  files: {', '.join(record['files'])}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The same as ``expflow analyze`` (one-line errors included)."""
    from expflow.cli import main as cli_main

    return cli_main(["analyze", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
