"""expflow save-packages: one package, or a runs directory of them.

Points come from the package's checksummed metric records (rollbacks applied, so a
continued run counts once). A damaged line (bad checksum, torn tail, malformed record)
is skipped and the valid records are aligned; the read's ``damage`` names the file, how
many lines were bad and the first of them: a warning, or with ``--strict`` the package's
error. A runs directory stands for one aligned series per package, labelled
``<framework>/<run_id>``; ``runs:`` in the spec (or the workflow) picks which, and one
package that cannot be read fails alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expflow.align.sources.base import (
    DAMAGE,
    FileSource,
    PointBuffer,
    RawRun,
    Source,
    SourceError,
    reason,
    require_path,
)
from expflow.errors import PackageError
from expflow.package.manifest import MANIFEST, is_package, package_dirs


class ExpflowSource(FileSource):
    kind = "expflow"
    optional = ("runs",)
    many_paths = False

    def __init__(self, spec: object, package: Path | None = None):
        super().__init__(spec)
        self.package = package

    def instances(self) -> list[tuple[str | None, Source]]:
        root = require_path(self.spec.path)
        if is_package(root):
            return [(None, ExpflowSource(self.spec, root))]
        if not root.is_dir():
            raise SourceError(f"{root}: neither a save-package nor a directory of them")
        try:
            found = {p.name: p for p in package_dirs(root)}
        except OSError as e:
            raise SourceError(f"{root}: cannot list: {reason(e)}") from None
        wanted = self.spec.runs
        if wanted is not None:
            unknown = [r for r in wanted if r not in found]
            if unknown:
                raise SourceError(f"{root}: no package for run(s) {', '.join(unknown)}")
            found = {r: found[r] for r in wanted}
        if not found:
            raise SourceError(f"{root}: no save-packages (directories with {MANIFEST})")
        return [(run_id, ExpflowSource(self.spec, path)) for run_id, path in found.items()]

    def _package(self) -> Path:
        if self.package is None:
            raise SourceError(f"{self.spec.path}: expand the runs directory first")
        return self.package

    def identity(self) -> str:
        return f"{self.kind}:{self._package().resolve()}"

    def describe(self) -> str:
        return f"{self.kind} {self._package()}"

    def files(self) -> list[Path]:
        from expflow.package import SavePackage

        records = SavePackage(self._package()).records_path
        return [records] if records.exists() else [self._package() / MANIFEST]

    def parse(self, files: list[Path]) -> RawRun:
        from expflow.package import SavePackage
        from expflow.package.records import metric_points

        try:
            pkg = SavePackage.open(self._package())
            run_id = pkg.run_id
            scan = pkg.scan_records(strict=False)
        except PackageError as e:
            raise SourceError(e.one_line()) from None
        except OSError as e:
            raise SourceError(f"{self._package()}: cannot read: {reason(e)}") from None
        # (byte offset, what is wrong) of every bad line, in file order
        bad = [(p.offset, str(p)) for p in scan.problems]
        records = []
        for offset, record in zip(scan.offsets, scan.records, strict=True):
            problem = _malformed(record)
            if problem is None:
                records.append(record)
            else:
                bad.append((offset, f"byte {offset}: {problem}"))
        buf = PointBuffer()
        for step, name, value in metric_points(records):
            if _is_value(value):
                buf.add(name, step, value)
        info: dict[str, Any] = {"package": str(pkg.path), "run_id": run_id}
        if bad:
            bad.sort()
            n = len(bad)
            valid = len(records)
            info[DAMAGE] = (
                f"{pkg.records_path}: {n} bad record line{'s' if n > 1 else ''} "
                f"(first: {bad[0][1]}), {valid} valid record{'' if valid == 1 else 's'}"
            )
        return RawRun(buf.frame(), {}, info)


def _malformed(record: dict[str, Any]) -> str | None:
    """Why a record whose line checks out cannot be used, or None."""
    if record["kind"] == "rollback":
        return None if _is_step(record.get("to_step")) else "rollback record without an integer to_step"
    if not _is_step(record.get("step")):
        return "metrics record without an integer step"
    values = record.get("values")
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        return "metrics record without a values mapping"
    return None


def _is_step(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_value(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
