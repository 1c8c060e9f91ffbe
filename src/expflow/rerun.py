"""Rerun a package from its own code snapshot and config into a new package, and
compare every metric record with the original's.

``python -m expflow.rerun <package>`` and ``expflow rerun <package>`` exit 0 only when
the metrics are bit-identical.
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from expflow.errors import ExpflowError, PackageError, ReproductionMismatch
from expflow.package import SavePackage, Status, effective_metrics
from expflow.package.manifest import RERUNS, is_package
from expflow.package.records import same_value
from expflow.paths import check_writable


@dataclass
class Comparison:
    compared: int = 0
    mismatches: list[tuple[int, str, float | None, float | None]] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.mismatches and self.compared > 0


def metric_table(pkg: SavePackage, ignore: Sequence[str] = ()) -> dict[tuple[int, int, str], float]:
    """(step, occurrence, name) -> value over the effective records, ignoring patterns."""
    table: dict[tuple[int, int, str], float] = {}
    seen: dict[tuple[int, str], int] = {}
    for rec in effective_metrics(pkg.scan_records().records):
        for name, value in rec["values"].items():
            if any(fnmatch.fnmatch(name, p) for p in ignore):
                continue
            k = (rec["step"], name)
            n = seen.get(k, 0)
            seen[k] = n + 1
            table[(rec["step"], n, name)] = value
    return table


def compare(original: SavePackage, new: SavePackage, ignore: Sequence[str] = ()) -> Comparison:
    a, b = metric_table(original, ignore), metric_table(new, ignore)
    result = Comparison()
    for key in sorted(set(a) | set(b)):
        result.compared += 1
        if not same_value(a.get(key), b.get(key)):
            result.mismatches.append((key[0], key[2], a.get(key), b.get(key)))
    return result


def rerun(path: str | Path, *, ignore: Sequence[str] = (), console: Console | None = None) -> tuple[SavePackage, Comparison]:
    from expflow.launch import launch

    console = console or Console(stderr=True)
    original = SavePackage.open(path)
    status = original.status()
    if status is not Status.COMPLETED:
        raise PackageError(f"{original.path}: status is {status.value}; only a COMPLETED package can be rerun "
                           "(continue it first)")
    target = _rerun_dir(original)
    new_id = target.name
    config = original.config()
    config.run_id = new_id
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    m = original.manifest()
    hydra_files = {}
    if original.hydra_dir.is_dir():
        hydra_files = {p.name: p.read_text() for p in original.hydra_dir.iterdir() if p.is_file()}
    try:
        new = SavePackage.create(
            target,
            config=container,  # type: ignore[arg-type]
            overrides=m.get("overrides", []),
            store=(m.get("code") or {}).get("store") or original.path.parent / ".store",
            code_from=original,
            hydra_files=hydra_files,
            origin={"rerun_of": original.run_id, "path": str(original.path)},
        )
    except BaseException:
        if not is_package(target):
            shutil.rmtree(target, ignore_errors=True)
        raise
    console.print(f"rerunning {original.run_id} from its code snapshot into {new.path}")
    launch(new, from_snapshot=True)
    return new, compare(original, new, ignore)


def _rerun_dir(original: SavePackage) -> Path:
    """A new, empty directory for the next rerun of ``original``: <runs>/.reruns/<run id>-<n>
    (the first free n; made here, so two reruns at once never take the same one)."""
    parent = original.path.parent
    reruns = parent if parent.name == RERUNS else parent / RERUNS  # a rerun of a rerun: beside it
    check_writable(reruns, what="the reruns directory")
    reruns.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        target = reruns / f"{original.run_id}-{n}"
        try:
            target.mkdir()
            return target
        except FileExistsError:
            n += 1


def print_comparison(original: str, new: SavePackage, result: Comparison, console: Console) -> None:
    if result.identical:
        console.print(f"[green]bit-identical[/]: {result.compared} metric values of {original} reproduced in {new.path}")
        return
    table = Table(title=f"{len(result.mismatches)} of {result.compared} metric values differ", title_justify="left")
    for col in ("step", "metric", "original", "rerun"):
        table.add_column(col)
    for step, name, a, b in result.mismatches[:20]:
        table.add_row(str(step), name, repr(a), repr(b))
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    from expflow.clihelp import OneLineParser, describe

    parser = OneLineParser(prog="python -m expflow.rerun")
    describe(parser, "rerun")
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package", help="the save-package directory to rerun")
    parser.add_argument("--ignore", action="append", default=[], metavar="GLOB",
                        help="metric names to leave out of the comparison (e.g. 'time/*'); repeatable")


def run_command(args: argparse.Namespace) -> int:
    console = Console()
    try:
        new, result = rerun(args.package, ignore=args.ignore)
        print_comparison(args.package, new, result, console)
        if not result.identical:
            raise ReproductionMismatch(f"rerun {new.path} differs from {args.package}")
    except ExpflowError as e:
        return e.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
