"""The ``expflow`` command line. Thin: each command parses its arguments and calls
the package; every ExpflowError becomes one line and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from expflow import __version__
from expflow.errors import ExpflowError, PackageError

if TYPE_CHECKING:
    from expflow.package import SavePackage


def cmd_show(args: argparse.Namespace) -> int:
    from expflow.package import SavePackage
    from expflow.summary import output_console, package_summary, render_summary

    pkg = SavePackage.open(args.package)
    summary = package_summary(pkg)
    if args.json:
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
    from expflow.package import SavePackage, Status

    pkg = SavePackage.open(args.package)
    pkg.check()  # every file it reads or appends to: a damaged one is one line, before anything is touched
    status = pkg.status()
    if pkg.pending():
        raise PackageError(f"{pkg.path}: the run was never started (QUEUED, nothing to continue); "
                           f"train it with `expflow run {pkg.path}`")
    if status.active:
        raise PackageError(f"{pkg.path}: the run is {status.value} in a live process; stop it before continuing")
    store = pkg.checkpoints()
    if status is Status.COMPLETED and args.checkpoint is None:
        if not args.force:
            raise PackageError(f"{pkg.path}: the run is already COMPLETED; nothing to continue (--force continues it "
                               "from its latest checkpoint, --checkpoint STEP from an earlier one)")
        if not store.list():
            raise PackageError(f"{pkg.path}: the run is COMPLETED and has no checkpoint to continue from")
    if args.checkpoint is not None or store.list():
        # Fail early, in this process, on a missing or corrupt checkpoint.
        store.load(store.find(args.checkpoint), map_location="cpu")
    resume = args.checkpoint if args.checkpoint is not None else "latest"
    # Through run_package: the run leases its GPUs like any train job (waiting as QUEUED).
    result = run_package(pkg, resume=resume, from_snapshot=not args.working_tree, completed=True)
    Console().print(f"[green]{pkg.run_id} COMPLETED[/]")
    say_cpu_fallback(pkg)
    for k, v in sorted(result.metrics.items()):
        Console().print(f"  {k} = {v:.6g}")
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from expflow.config import compose_config
    from expflow.launch import create_package
    from expflow.package import SavePackage
    from expflow.workflow import config_id

    overrides = [*args.overrides, f"paths.runs={args.runs}"]
    cfg = compose_config(overrides, config_dir=args.config_dir)
    actual = config_id(OmegaConf.to_container(cfg, resolve=False))  # type: ignore[arg-type]
    if args.run_id and actual != args.run_id:
        raise PackageError(
            f"run {args.run_id}: the config composed now has id {actual}; the config files changed "
            "after the workflow was planned (run snakemake again)"
        )
    run_id = args.run_id or actual
    target = Path(args.runs) / run_id
    if (target / "manifest.json").exists():
        SavePackage.open(target)  # an existing package of this very config: nothing to do
        print(f"{target}: package exists")
        return 0
    pkg = create_package(cfg, overrides=overrides, package_dir=target)
    print(f"{pkg.path}: package materialized (QUEUED)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    # The train job's command. It leases its GPUs first, from the request the manifest
    # records, and only then imports the package, OmegaConf and the launcher (~0.3 s): a
    # device freed by one job is taken by the next within ~0.1 s. A package that cannot say
    # (damaged, older, finished) is leased the usual way, after its checks.
    from expflow.gpu import LeaseError, place_job
    from expflow.package.manifest import lease_request

    request = lease_request(args.package)
    owner = str(Path(args.package).resolve())

    def waiting() -> None:  # only while it waits: then the imports cost nothing
        from expflow.package import SavePackage, Status

        SavePackage.open(args.package).set_status(
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

        pkg = SavePackage.open(args.package)
        if placement is not None and request != config_lease_request(pkg):
            leased.close()  # the manifest's copy disagrees with the config (edited): the config decides
            placement = None
        if placement is not None:  # recorded on every path, just before the release

            def released(exc_type: object, *_: object) -> bool:
                record_release(pkg, quiet=exc_type is not None)  # never hides the error on its way out
                return False

            leased.push(released)
        result = run_package(pkg, from_snapshot=not args.working_tree, placement=placement)
        note = cpu_fallback_note(pkg)
    # Released: from here to the exit, the freed device waits for the next job. The final
    # garbage collection of the ~300 modules loaded would take ~50 ms of that; frozen, it is
    # skipped (reference counting still closes and flushes everything as the modules go).
    import gc

    gc.freeze()
    print(f"{pkg.run_id}: {result.status.value}")
    if note:
        print(note, file=sys.stderr)
    return 0


def config_lease_request(pkg: SavePackage) -> dict | None:
    """The lease request of the package's config (what its manifest's copy must equal)."""
    from omegaconf import OmegaConf

    from expflow.package.manifest import lease_request_of

    try:
        gpu = OmegaConf.to_container(pkg.config().gpu, resolve=True)
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


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming what is wrong (and where help is),
    not a usage block; subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs to the terminal; keeps indented lines (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for para in text.strip("\n").split("\n\n"):
            lines = para.splitlines()
            if lines and all(line.startswith("  ") for line in lines[1:]) and lines[0].endswith(":"):
                paragraphs.append("\n".join(indent + line for line in lines))  # "Examples:" + commands
            else:
                import textwrap

                paragraphs.append(textwrap.fill(" ".join(para.split()), width, initial_indent=indent,
                                                subsequent_indent=indent))
        return "\n\n".join(paragraphs)


# What `expflow COMMAND --help` says, for people: what the command does (first line), what it
# reads and writes, and examples. One place for every command, the ones other modules register too.
COMMAND_HELP: dict[str, tuple[str, str]] = {
    "show": (
        "Show one save-package: its status, config, progress, metrics, checkpoints and analyses.",
        """Reads the package directory (manifest, config, metric records, checkpoint index, analyses);
        writes nothing. Exits non-zero when a file of the package is damaged (shown as far as readable).

        Examples:
          expflow show runs/3f2a9c1b7d4e
          expflow show runs/3f2a9c1b7d4e --json""",
    ),
    "continue": (
        "Continue a stopped or crashed run from its latest checkpoint (or the one at --checkpoint STEP).",
        """Reads the package's config, code snapshot and checkpoint; writes into the same package: new
        metric records and checkpoints, and an attempt of kind "continue" in its manifest. Leases the
        run's GPUs like any training job.

        Examples:
          expflow continue runs/3f2a9c1b7d4e
          expflow continue runs/3f2a9c1b7d4e --checkpoint 460
          expflow continue runs/3f2a9c1b7d4e --force      # a COMPLETED run, from its latest checkpoint""",
    ),
    "materialize": (
        "Create a run's save-package (resolved config, code snapshot, status QUEUED) without training it.",
        """Reads the Hydra config directory (default ./conf) and the project's code; writes
        <runs>/<run_id>/ with the config and a manifest, and the code snapshot into the shared store
        <runs>/.store. An existing package of the same config is left as it is. The workflow's package
        rule calls this.

        Examples:
          expflow materialize --runs runs -- optim.lr=3e-3 seed=1   # prints runs/<run_id>: ... (QUEUED)
          expflow materialize --config-dir conf -- model=cnn +freq=smoke""",
    ),
    "run": (
        "Train a package to the end, leasing its GPUs (a package that crashed continues from its last checkpoint).",
        """Reads the package's config and code snapshot (or, with --working-tree, the working tree);
        writes into the package: metric records, checkpoints, logs and the manifest's status and
        attempts. Prints the run id and its final status. The workflow's train rule calls this.

        Examples:
          expflow run runs/3f2a9c1b7d4e
          expflow run runs/3f2a9c1b7d4e --working-tree""",
    ),
    "rerun": (
        "Train a COMPLETED package again from its own code snapshot and config, and compare every metric.",
        """Reads the package (config, code snapshot, metric records); writes a new package beside it,
        <runs>/<run_id>-rerun-<time>/, and prints the comparison. Exits 0 only when every compared
        metric is bit-identical.

        Examples:
          expflow rerun runs/3f2a9c1b7d4e
          expflow rerun runs/3f2a9c1b7d4e --ignore 'time/*'""",
    ),
    "sync": (
        "Upload save-packages' metrics to SwanLab or an MLflow server; only what is not there yet goes up.",
        """Reads each package's metric records and tracker logs; writes to the tracking server, and the
        package's sync state (what went up) under <package>/tracker/sync/. Invalid records are reported
        with their position and skipped (--strict: fail the package). No network or no credentials
        defers a package: exit 0, and the next sync catches up.

        Examples:
          expflow sync runs/* --target swanlab --project digits
          expflow sync runs/3f2a9c1b7d4e --target mlflow --uri http://localhost:5000""",
    ),
    "align": (
        "Align the metrics of several frameworks (VERL, ROLL, SLIME, expflow) onto one naming, and check them.",
        """Reads the alignment spec and each framework's metrics it names (SwanLab, W&B, TensorBoard,
        CSV, expflow packages); writes into --out (default outputs/align/<spec name>): aligned.parquet
        and aligned.csv, check.json, plots with an HTML page, a cache of the sources; and one tracker
        experiment per framework.

        Examples:
          expflow align conf/align/example.yaml
          expflow align conf/align/example.yaml frameworks.roll.enabled=false --no-tracker""",
    ),
    "analyze": (
        "Run an analysis script over a trained package (its latest checkpoint, or --checkpoint STEP).",
        """Reads the package (config, code snapshot, checkpoint) and the script, from the project's
        analysis/ folder or expflow's own; writes <package>/analysis/<script>/: the script's record,
        metrics and files. Leases GPUs when --gpus is above 0.

        Examples:
          expflow analyze runs/3f2a9c1b7d4e --list
          expflow analyze runs/3f2a9c1b7d4e accuracy
          expflow analyze runs/3f2a9c1b7d4e learning_curves --checkpoint 460 --json""",
    ),
    "status": (
        "Show a table of every run in a runs directory: status, devices, progress, metric, times.",
        """Reads every package's manifest, heartbeat and last metric records under --runs (a run whose
        process died shows CRASHED); writes nothing. Time spent training sums a run's attempts.

        Examples:
          expflow status
          expflow status --runs runs --status RUNNING,CRASHED --sort duration
          expflow status --watch --interval 5""",
    ),
    "diff": (
        "Show what differs between two save-packages: overrides, config, code, environment, metrics.",
        """Reads both packages (manifest, resolved config, code snapshot and its listing, the recorded
        software environment and machines, metric records); writes nothing. The config is compared
        key by key (the run id aside), changed code files as a unified diff, the environment by
        distribution and version, the metrics at the last step both recorded.

        Examples:
          expflow diff runs/3f2a9c1b7d4e runs/8c01d2e3f4a5
          expflow diff runs/3f2a9c1b7d4e runs/.reruns/3f2a9c1b7d4e-1 --json""",
    ),
    "report": (
        "Write one self-contained HTML page about a runs directory: run table, learning curves, sweep, analyses.",
        """Reads every package under --runs (manifest, config, metric records, analyses); writes one
        HTML file (default <runs>/report.html) that loads nothing from anywhere: the charts, style and
        script are inline.

        Examples:
          expflow report
          expflow report --runs runs --out report.html --title 'lr sweep'""",
    ),
    "new": (
        "Create a new project that trains out of the box (Snakefile, workflows/, conf/, src/, analysis/).",
        """Reads expflow's own project files and the chosen example; writes the new project's directory
        (which must not exist, or be empty): the Snakefile and workflows/ as expflow has them, conf/
        pointing at the project's own module, the example's model and data module, and its analysis
        scripts.

        Examples:
          expflow new my-project
          expflow new my-regression --example regression && cd my-regression && snakemake --cores 2""",
    ),
}


def describe_commands(sub: argparse._SubParsersAction) -> None:
    """Give every subcommand its help from COMMAND_HELP: the summary and what it reads and
    writes above the arguments, the examples below them."""
    for name, parser in sub.choices.items():
        describe(parser, name)


def describe(parser: argparse.ArgumentParser, name: str) -> None:
    """The help of command ``name`` from COMMAND_HELP, on ``parser`` (also the parser of its
    ``python -m expflow.<module>`` form)."""
    import inspect

    summary, details = COMMAND_HELP[name]
    reads_writes, _, examples = inspect.cleandoc(details).partition("\n\nExamples:")
    parser.description = f"{summary}\n\n{reads_writes}"
    parser.epilog = f"Examples:{examples}" if examples else None
    parser.formatter_class = HelpFormatter


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train a package to the end (or continue it after a crash), leasing its GPUs")
    p.add_argument("package", help="the save-package directory")
    p.add_argument("--working-tree", action="store_true",
                   help="import code from the working tree instead of the package's snapshot")
    p.set_defaults(func=cmd_run)


def run_parser() -> argparse.ArgumentParser:
    """The parser of `expflow run` alone. Every train job starts with that command; the
    full parser imports each command's module (~0.2 s), which would keep a freed GPU idle."""
    parser = OneLineParser(prog="expflow")
    add_run_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def build_parser() -> argparse.ArgumentParser:
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
]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    plain_run = argv[:1] == ["run"] and not {"-h", "--help"} & set(argv)
    parser = run_parser() if plain_run else build_parser()
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
    except BrokenPipeError:  # `expflow show --json | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
