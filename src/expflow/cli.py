"""The ``expflow`` command line. Thin: each command parses its arguments and calls
the package; every ExpflowError becomes one line and a non-zero exit."""

from __future__ import annotations

import os
import sys

from expflow import __version__
from expflow.errors import ExpflowError, PackageError

# Every train job starts with `expflow run DIR`, and the device it is about to lease waits
# meanwhile: this module imports nothing more at its top (argparse, json, pathlib and typing
# are imported where they are used), and `expflow run` leases before it parses with argparse.
TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from expflow.package import SavePackage


def cmd_show(args: argparse.Namespace) -> int:
    from expflow.package import SavePackage
    from expflow.status_board import output_console
    from expflow.summary import package_summary, render_summary

    pkg = SavePackage.open(args.package)
    summary = package_summary(pkg)
    if args.json:
        import json

        print(json.dumps(summary, indent=2, default=str))
    else:
        render_summary(summary, pkg, output_console())
    damaged = summary["damaged"]
    if damaged:  # shown above as far as readable; the exit status says the package is damaged
        more = f" (and {len(damaged) - 1} more damaged file(s))" if len(damaged) > 1 else ""
        raise PackageError(f"{damaged[0]}{more}")
    return 0


def cmd_continue(args: argparse.Namespace) -> int:
    from rich.console import Console

    from expflow.launch import run_package
    from expflow.package import SavePackage

    pkg = SavePackage.open(args.package)
    pkg.check()  # every file it reads or appends to: a damaged one is one line, before anything is touched
    status = pkg.status()
    if pkg.pending():
        raise PackageError(f"{pkg.path}: the run was never started (QUEUED, nothing to continue); "
                           f"train it with `expflow run {pkg.path}`")
    if status.active:
        raise PackageError(f"{pkg.path}: the run is {status.value} in a live process; stop it before continuing")
    store = pkg.checkpoints()
    if status.finished and args.checkpoint is None:
        if not args.force:
            raise PackageError(f"{pkg.path}: the run is already {status.value}; nothing to continue (--force continues "
                               "it from its latest checkpoint, --checkpoint STEP from an earlier one)")
        if not store.list():
            raise PackageError(f"{pkg.path}: the run is {status.value} and has no checkpoint to continue from")
    if args.checkpoint is not None or store.list():
        # Fail early, in this process, on a missing or corrupt checkpoint.
        store.load(store.find(args.checkpoint), map_location="cpu")
    resume = args.checkpoint if args.checkpoint is not None else "latest"
    # Through run_package: the run leases its GPUs like any train job (waiting as QUEUED).
    result = run_package(pkg, resume=resume, from_snapshot=not args.working_tree, completed=True)
    Console().print(f"[green]{pkg.run_id} {result.status.value}[/]")
    say_cpu_fallback(pkg)
    for k, v in sorted(result.metrics.items()):
        Console().print(f"  {k} = {v:.6g}")
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from expflow.config import compose_config
    from expflow.launch import create_package
    from expflow.package import SavePackage
    from expflow.package.manifest import is_package
    from expflow.runid import config_id

    overrides = [*args.overrides, f"paths.runs={args.runs}"]
    cfg = compose_config(overrides, config_dir=args.config_dir)
    actual = config_id(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))  # type: ignore[arg-type]
    if args.run_id and actual != args.run_id:
        raise PackageError(
            f"run {args.run_id}: the config composed now has id {actual}; the config files changed "
            "after the workflow was planned (run snakemake again)"
        )
    run_id = args.run_id or actual
    target = os.path.join(args.runs, run_id)
    if is_package(target):
        SavePackage.open(target)  # an existing package of this very config: nothing to do
        print(f"{target}: package exists")
        return 0
    pkg = create_package(cfg, overrides=overrides, package_dir=target)
    print(f"{pkg.path}: package materialized (QUEUED)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return run_job(args.package, working_tree=args.working_tree)


def run_job(package: str, *, working_tree: bool = False) -> int:
    """`expflow run`: the train job's command. It leases its GPUs first, from the request the
    manifest records, and only then imports the package, OmegaConf and the launcher (~0.3 s):
    a device freed by one job is taken by the next within ~0.1 s. A package that cannot say
    (damaged, older, finished) is leased the usual way, after its checks."""
    from contextlib import ExitStack

    from expflow.gpu import LeaseError, place_job
    from expflow.package.manifest import lease_request

    request = lease_request(package)
    owner = os.path.realpath(package)

    def waiting() -> None:  # only while it waits: then the imports cost nothing
        from expflow.package import SavePackage, Status

        SavePackage.open(package).set_status(
            Status.QUEUED, note=f"waiting for {request['count']} GPU(s)", claim=True)  # type: ignore[index]

    with ExitStack() as leased:
        placement = None
        if request:
            try:
                placement = leased.enter_context(place_job(**request, owner=owner, on_wait=waiting))
            except LeaseError:
                pass  # raised again below, the usual way: within the package's claim, recorded in it
        from expflow.launch import record_release, run_package
        from expflow.package import SavePackage

        pkg = SavePackage.open(package)
        if placement is not None and request != config_lease_request(pkg):
            leased.close()  # the manifest's copy disagrees with the config (edited): the config decides
            placement = None
        if placement is not None:  # recorded on every path, just before the release

            def released(exc_type: object, *_: object) -> bool:
                record_release(pkg, quiet=exc_type is not None)  # never hides the error on its way out
                return False

            leased.push(released)
        result = run_package(pkg, from_snapshot=not working_tree, placement=placement)
        note = cpu_fallback_note(pkg)
    # Released: from here to the exit, the freed device waits for the next job (see command()).
    print(f"{pkg.run_id}: {result.status.value}")
    if note:
        print(note, file=sys.stderr)
    return 0


def config_lease_request(pkg: SavePackage) -> dict | None:
    """The lease request of the package's config (what its manifest's copy must equal)."""
    from omegaconf import OmegaConf

    from expflow.package.manifest import lease_request_of

    try:
        gpu = OmegaConf.to_container(pkg.config().gpu, resolve=True, enum_to_str=True)
    except Exception:  # a damaged config: run_package reports it, the usual way
        return None
    return lease_request_of({"gpu": gpu})


def cpu_fallback_note(pkg: SavePackage) -> str | None:
    """The line to print when the run asked for GPUs and trained on the CPU."""
    from expflow.launch import fallback_note

    note = fallback_note(pkg)
    return f"{pkg.run_id}: {note}" if note else None


def say_cpu_fallback(pkg: SavePackage) -> None:
    """One line on stderr when the run asked for GPUs and trained on the CPU."""
    note = cpu_fallback_note(pkg)
    if note:
        print(note, file=sys.stderr)


def cmd_rerun(args: argparse.Namespace) -> int:
    from expflow.rerun import run_command

    return run_command(args)


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train a package to the end (or continue it after a crash), leasing its GPUs")
    p.add_argument("package", help="the save-package directory")
    p.add_argument("--working-tree", action="store_true",
                   help="import code from the working tree instead of the package's snapshot")
    p.set_defaults(func=cmd_run)


def plain_run(argv: list[str]) -> tuple[str, bool] | None:
    """(package, --working-tree) of `expflow run DIR [--working-tree]`, the train rule's
    command, read without argparse (~5 ms of a job's start); None for anything else,
    which the full parser reads (help, errors, other commands)."""
    if argv[:1] != ["run"]:
        return None
    rest = [a for a in argv[1:] if a != "--working-tree"]
    if len(rest) != 1 or rest[0].startswith("-") or not rest[0]:
        return None
    return rest[0], len(rest) != len(argv) - 1


def build_parser() -> argparse.ArgumentParser:
    from expflow.clihelp import HelpFormatter, OneLineParser, describe_commands

    parser = OneLineParser(
        prog="expflow", formatter_class=HelpFormatter,
        description="Declarative ML experiments: every run is a save-package (config, code snapshot, metrics, "
                    "checkpoints) under runs/; the Snakemake workflow plans, trains and reports them.",
        epilog="Examples:\n  expflow new my-project && cd my-project && snakemake --cores 2\n  expflow status\n"
               "  expflow show runs/3f2a9c1b7d4e\n  expflow COMMAND --help",
    )
    parser.add_argument("--version", action="version", version=f"expflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("show", help="details of one save-package: status, config, metrics, checkpoints")
    p.add_argument("package", help="the save-package directory (runs/<run_id>)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("continue", help="resume a package from its latest (or a chosen) checkpoint")
    p.add_argument("package", help="the save-package directory")
    from expflow.config.numbers import int_option

    p.add_argument("--checkpoint", type=int_option(0), default=None, metavar="STEP",
                   help="resume from the checkpoint at this step (default: the latest)")
    p.add_argument("--force", action="store_true", help="continue even a COMPLETED package (from its latest checkpoint)")
    p.add_argument("--working-tree", action="store_true",
                   help="import code from the working tree instead of the package's snapshot")
    p.set_defaults(func=cmd_continue)

    p = sub.add_parser("materialize", help="create a run's package (code snapshot, config) without training it")
    p.add_argument("--runs", default="runs", help="the directory packages go to (default: runs)")
    p.add_argument("--run-id", default=None, help="the planned run id; checked against the composed config")
    p.add_argument("--config-dir", default=None, help="the Hydra config directory (default: ./conf)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the run")
    p.set_defaults(func=cmd_materialize)

    add_run_parser(sub)

    from expflow.rerun import add_arguments

    p = sub.add_parser("rerun", help="rerun a package from its snapshot into a new one and compare metrics")
    add_arguments(p)
    p.set_defaults(func=cmd_rerun)

    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    describe_commands(sub)
    return parser


# Modules that add their own subcommands: each has ``register(subparsers)``, which adds
# parsers whose ``func(args) -> int`` does the work (imports stay inside ``func``).
COMMAND_MODULES: list[str] = [
    "expflow.sync.cli",
    "expflow.align.cli",
    "expflow.analyze",
    "expflow.status_board",
    "expflow.report",
    "expflow.scaffold",
    "expflow.diff",
    "expflow.search.cli",
]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run = plain_run(argv)
    try:
        if run is not None:
            return run_job(run[0], working_tree=run[1])
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except ExpflowError as e:
        return e.report()
    except KeyboardInterrupt:
        print("expflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `expflow show --json | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def command() -> None:
    """The ``expflow`` console script and ``python -m expflow``: :func:`main`, then the exit.
    The train job's `expflow run DIR` exits without the interpreter's teardown (see
    :func:`exit_now`): its device is released by then, and the next job cannot start before
    this process has exited."""
    code = main()
    if plain_run(sys.argv[1:]) is not None:
        exit_now(code)
    sys.exit(code)


def exit_now(code: int) -> None:
    """Exit as a normal exit would, less the teardown of the ~300 modules loaded (~10 ms,
    twice that with the cores busy): the atexit handlers run and the standard streams are
    flushed first, and every file expflow writes is closed (and its important ones synced)
    before it returns. With a thread of ours still running, the exit waits for it, as usual."""
    import atexit
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: an ordinary exit would fail to flush it too
            code = code or 120
    os._exit(code)


if __name__ == "__main__":
    command()
