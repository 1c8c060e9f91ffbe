"""expflow save-packages: one package, or a runs directory of them.

Points come from the package's checksummed metric records (rollbacks applied, so a
continued run counts once), read strictly: a corrupt or torn record is an error naming
the file and line. A runs directory stands for one aligned series per package, labelled
``<framework>/<run_id>``; ``runs:`` in the spec (or the workflow) picks which.
"""

from __future__ import annotations

from pathlib import Path

from expflow.align.sources import (
    FileSource,
    PointBuffer,
    RawRun,
    Source,
    SourceError,
    require_path,
)
from expflow.errors import PackageError

MANIFEST = "manifest.json"


class ExpflowSource(FileSource):
    kind = "expflow"
    optional = ("runs",)

    def __init__(self, spec: object, package: Path | None = None):
        super().__init__(spec)
        self.package = package

    def instances(self) -> list[tuple[str | None, Source]]:
        root = require_path(self.spec.path)
        if (root / MANIFEST).is_file():
            return [(None, ExpflowSource(self.spec, root))]
        if not root.is_dir():
            raise SourceError(f"{root}: neither a save-package nor a directory of them")
        found = {p.name: p for p in sorted(root.iterdir()) if (p / MANIFEST).is_file()}
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
            scan = pkg.scan_records(strict=True)
        except PackageError as e:
            raise SourceError(e.one_line()) from None
        buf = PointBuffer()
        for step, name, value in metric_points(scan.records):
            buf.add(name, step, value)
        return RawRun(buf.frame(), {}, {"package": str(pkg.path), "run_id": pkg.run_id})
