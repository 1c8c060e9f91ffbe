"""The shape of the code: no import cycles in src/expflow, deferred imports included (an
import inside a function is a cycle too, only one that bites later)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names() -> dict[str, Path]:
    found = {}
    for path in (SRC / "expflow").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The expflow modules ``name`` imports anywhere in its code, except under
    ``if TYPE_CHECKING:`` (annotations only, never executed)."""

    def owner(dotted: str) -> str:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted

    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
                   for n in ast.walk(node)}
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names if a.name.startswith("expflow")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.startswith("expflow"):
                for alias in node.names:  # `from pkg import submodule` imports the submodule
                    full = f"{base}.{alias.name}"
                    found.add(full if full in modules else owner(base))
    return found - {name, ""}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_src():
    modules = module_names()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 50 and graph["expflow.cli"]  # the walk saw the package
    found = cycles(graph)
    detail = ["  " + " <-> ".join(c) + ": " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found]
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_one_error_edge():
    """Every `expflow: error:` line comes from ExpflowError.report/line (expflow.errors):
    no module spells the prefix itself."""
    spelled = [f"{p.relative_to(SRC)}:{i}" for p in (SRC / "expflow").rglob("*.py") if p.name != "errors.py"
               for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "expflow: error:" in line]
    assert not spelled, spelled


# Names two unrelated formats share, each still named by one module per format.
SHARED_NAMES = {
    "index.json": {"expflow/package/checkpoints.py", "expflow/align/report.py"},  # checkpoint index; report's index
}
FORMAT_NAME = re.compile(r"^(?:[\w.-]+/)*[\w.-]+\.(?:json|jsonl|lock|log)$")


def test_every_on_disk_format_is_named_by_one_module():
    """A file name expflow reads or writes (manifest.json, heartbeat.json, leases.json,
    metrics/records.log, ...) is spelled in one module, its format's owner; everything
    else asks that module (e.g. expflow.package.manifest.MANIFEST, package_dirs)."""
    named: dict[str, set[str]] = {}
    for path in (SRC / "expflow").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and FORMAT_NAME.match(node.value):
                named.setdefault(node.value, set()).add(path.relative_to(SRC).as_posix())
    assert "manifest.json" in named and "leases.json" in named  # the walk saw the formats
    shared = {name: sorted(mods) for name, mods in named.items() if len(mods) > 1 and SHARED_NAMES.get(name) != mods}
    assert not shared, f"format file names spelled in more than one module: {shared}"
