"""An unchanged re-run writes nothing: ``<out>/run.json`` keys the last run by what it read.

The key is the spec file's bytes, the overrides and options, and every source's identity
and fingerprint (a ``stat``, or one metadata call for a cloud run): nothing is read or
imported beyond that. When the key and the outputs (size and mtime of each file the run
wrote) are those of the last run, the command prints that run's check and summary and
exits as it did. Anything else (a changed source, spec or option, an output removed or
touched) runs the alignment, which itself rebuilds only what changed (``report``,
``tracker``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STATE = "run.json"
FORMAT = "expflow.align.run/1"


def run_key(spec_path: Path, overrides: Sequence[str], options: dict[str, Any], plan: Any, workflow: Any = None) -> str | None:
    """What the run depends on, as one digest; None when a source cannot say (it fails,
    and the full run reports it)."""
    h = hashlib.sha256(FORMAT.encode())
    try:
        h.update(spec_path.read_bytes())
    except OSError:
        return None
    h.update(json.dumps([list(overrides), options, str(spec_path.resolve())], sort_keys=True, default=str).encode())
    # what else decides the result: preset files next to the spec, and this code itself
    code = Path(__file__).parent
    for f in sorted([*spec_path.parent.glob("presets/*.yaml"), *code.rglob("*.py")]):
        try:
            st = f.stat()
        except OSError:
            continue
        h.update(f"\0{f}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    try:
        for name, label, source in framework_sources(plan, workflow):
            h.update(f"\0{name}\0{label}\0{source.identity()}\0{source.fingerprint()}".encode())
    except Exception:  # a source that cannot be fingerprinted: the full run says why
        return None
    return h.hexdigest()


def framework_sources(plan: Any, workflow: Any = None) -> list[tuple[str, str, Any]]:
    """(framework, label, source) of every run the plan aligns."""
    from expflow.align.sources import for_workflow, make_source

    found = []
    for fw in plan.frameworks:
        for suffix, inst in make_source(for_workflow(fw.source, workflow)).instances():
            found.append((fw.name, fw.name if suffix is None else f"{fw.name}/{suffix}", inst))
    return found


def outputs_state(out: Path, files: Sequence[Path]) -> dict[str, list[int]]:
    state = {}
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        state[os.path.relpath(f, out)] = [st.st_size, st.st_mtime_ns]
    return state


def load_unchanged(out: Path, key: str | None) -> dict[str, Any] | None:
    """The last run's record when ``key`` is its key and its outputs are as it left them."""
    if key is None:
        return None
    try:
        state = json.loads((out / STATE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("format") != FORMAT or state.get("key") != key:
        return None
    files = state.get("files") or {}
    if not files or outputs_state(out, [out / rel for rel in files]) != files:
        return None
    return state


def save(out: Path, key: str | None, files: Sequence[Path], summary: str, exit_code: int, error: str | None,
         warnings: Sequence[str]) -> None:
    if key is None:
        return
    from expflow.atomic import atomic_write_json

    record = {"format": FORMAT, "key": key, "files": outputs_state(out, files), "summary": summary,
              "exit_code": exit_code, "error": error, "warnings": list(warnings)}
    atomic_write_json(out / STATE, record)


def tree_files(out: Path) -> list[Path]:
    """Every file under ``out`` but the state file and the cache (the run's outputs)."""
    found = []
    for root, dirs, names in os.walk(out):
        dirs[:] = [d for d in dirs if d != "cache"]
        for n in names:
            if n != STATE:
                found.append(Path(root) / n)
    return sorted(found)
