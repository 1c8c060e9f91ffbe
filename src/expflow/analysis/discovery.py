"""Where analysis scripts come from: the project's ``analysis/`` folder, the package's
own snapshot of it, and the scripts shipped with expflow (first match wins)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expflow.analysis.context import AnalysisError
from expflow.package import SavePackage

SHIPPED_PACKAGE = "expflow.analysis.shipped"
SHIPPED_DIR = Path(__file__).with_name("shipped")
PROJECT_DIR = "analysis"
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ScriptRef:
    """An analysis script: its name (the output folder), where it was found, and how the
    analysis process imports it (a module of the shipped set, or a file)."""

    name: str
    origin: str  # "project", "snapshot", "shipped" or "file"
    module: str | None = None
    file: Path | None = None

    def worker_args(self) -> list[str]:
        """How the analysis process is told to import it."""
        source = ["--module", self.module] if self.module is not None else ["--file", str(self.file)]
        return [*source, "--origin", self.origin]

    def as_json(self) -> dict[str, Any]:
        """What :meth:`from_json` reads: how the analysis process is told of several scripts."""
        return {"name": self.name, "origin": self.origin, "module": self.module,
                "file": None if self.file is None else str(self.file)}

    @classmethod
    def from_json(cls, text: str) -> ScriptRef:
        import json

        d = json.loads(text)
        return cls(d["name"], d["origin"], module=d.get("module"), file=Path(d["file"]) if d.get("file") else None)

    def describe(self) -> str:
        return self.module if self.module is not None else str(self.file)


def _scripts_in(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.glob("*.py")) if NAME_RE.match(p.stem)}


def available_scripts(project_dir: str | Path | None = None,
                      package: SavePackage | None = None) -> dict[str, ScriptRef]:
    """Every script by name, project first, then the package's snapshot, then shipped."""
    found: dict[str, ScriptRef] = {}
    sources: list[tuple[str, Path]] = [("project", Path(project_dir or ".") / PROJECT_DIR)]
    if package is not None:
        sources.append(("snapshot", package.code_dir / PROJECT_DIR))
    for origin, directory in sources:
        for name, path in _scripts_in(directory).items():
            found.setdefault(name, ScriptRef(name, origin, file=path.resolve()))
    for name in _scripts_in(SHIPPED_DIR):
        found.setdefault(name, ScriptRef(name, "shipped", module=f"{SHIPPED_PACKAGE}.{name}"))
    return found


def find_script(script: str, project_dir: str | Path | None = None,
                package: SavePackage | None = None) -> ScriptRef:
    """The script named ``script`` (or at the path ``script``, a ``.py`` file)."""
    if script.endswith(".py"):
        path = Path(script)
        if not path.is_file():
            raise AnalysisError(f"analysis script {script}: no such file")
        if not NAME_RE.match(path.stem):
            raise AnalysisError(f"analysis script {script}: the file name must be a Python identifier")
        return ScriptRef(path.stem, "file", file=path.resolve())
    scripts = available_scripts(project_dir, package)
    if script not in scripts:
        raise AnalysisError(f"unknown analysis script {script!r}; valid: {', '.join(sorted(scripts))} "
                            f"(or add {PROJECT_DIR}/{script}.py to the project)")
    return scripts[script]
