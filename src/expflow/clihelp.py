"""What the command line says to people: one-line usage errors, help paragraphs wrapped to
the terminal, and every command's description, what it reads and writes, and examples.

A base for the ``expflow`` parser and for the modules that are also commands of their own
(``python -m expflow.rerun``): none of them imports :mod:`expflow.cli` for it.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


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
        """Reads the package (config, code snapshot, metric records); writes a new package apart from
        the runs, <runs>/.reruns/<run_id>-<n>/ (status and the report list it as a rerun of its run),
        and prints the comparison. Exits 0 only when every compared metric is bit-identical.

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
    "search": (
        "List a search's trials by objective, with its best trial and package; --html adds the plots.",
        """Reads the study journals of the workflow's searches (<runs>/.search/<name>/study.journal)
        and each trial's package status; writes nothing but the --html page. Trials are listed
        complete ones first, best first (pruned ones at the last value they reported), with
        their parameters and run ids. The page plots the objective of each trial, the best
        value so far, and each parameter's importance (Optuna's fANOVA evaluator). Needs
        Optuna (pip install 'expflow[search]').

        Examples:
          expflow search runs
          expflow search runs --name lr_width --json
          expflow search runs --html runs/search.html""",
    ),
    "search-slot": (
        "Run trials of a workflow search until its trial budget is spent (the search rule's job).",
        """Reads the search settings (--spec, the workflow's search section as JSON), the Hydra
        config and the study journal in <runs>/.search/<name>/. Each trial asked of the study
        becomes a save-package <runs>/<run_id>/ (the id of its composed config), trained on
        GPUs leased like any train job, its objective reported as it is recorded (the pruner
        may stop it: PRUNED) and told to the study. Writes the packages and the study's
        journal. A trial whose slot died is continued from its package. The workflow runs
        search.parallel of these; one by hand is the same.

        Examples:
          expflow search-slot --runs runs --slot 0 --spec '{"name": "s", "objective": "val/acc", "direction": "max", "params": {"optim.lr": "tag(log, interval(1e-4, 1e-1))"}, "n_trials": 4}'""",
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
