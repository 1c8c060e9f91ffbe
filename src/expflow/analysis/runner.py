"""Running an analysis script over a package.

:func:`run_analysis` (the ``expflow analyze`` side) finds the script, leases the GPU the
analysis takes, and starts the analysis process with the package's code snapshot first
on the import path. :func:`execute_script` (in that process) builds the context, calls
the script's ``analyze(ctx)``, and writes what it returns to
``<package>/analysis/<script>/``: ``results.json``, ``<figure>.png``, and ``analysis.json``
(which checkpoint, when, how long, which files). The folder is assembled beside its
place and swapped in, so a reader sees the previous analysis or the new one, never a mix.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from expflow.analysis.context import AnalysisContext, AnalysisError, AnalysisOutput, NotApplicable
from expflow.analysis.discovery import ScriptRef, find_script
from expflow.atomic import atomic_write_bytes, atomic_write_json, fsync_dir
from expflow.errors import ExpflowError
from expflow.package import SavePackage, utc_now

ENTRY = "analyze"  # the function every analysis script defines: analyze(ctx) -> results
META = "analysis.json"
RESULTS = "results.json"
_FIGURE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


# -- the expflow analyze side ----------------------------------------------------------
def _check_snapshot_has_worker(pkg: SavePackage, env: dict[str, str]) -> bool:
    """A snapshot that carries its own expflow (expflow's own repository) must carry the
    analysis worker too; an older one cannot run analyses from its snapshot. Whether that
    worker runs several scripts in one process (True where the snapshot has no expflow)."""
    for entry in env["PYTHONPATH"].split(os.pathsep):
        own = Path(entry) / "expflow"
        if (own / "__init__.py").is_file():
            if not (own / "analysis" / "worker.py").is_file():
                raise AnalysisError(f"{pkg.path}: the package's code snapshot has an expflow without "
                                    "`expflow analyze`; run it with --working-tree")
            try:
                return b'"--outcome"' in (own / "analysis" / "runner.py").read_bytes()
            except OSError:
                return False
    return True


def run_analysis(
    pkg: SavePackage,
    script: str,
    *,
    checkpoint: int | None = None,
    gpus: int | None = None,
    project_dir: str | Path | None = None,
    working_tree: bool = False,
    on_wait: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run ``script`` over ``pkg`` in its own process on its own GPU lease; returns the
    analysis record (``analysis.json``). ``gpus`` defaults to one when the run used GPUs."""
    return run_analyses(pkg, [script], checkpoint=checkpoint, gpus=gpus, project_dir=project_dir,
                        working_tree=working_tree, on_wait=on_wait)[0]


def run_analyses(
    pkg: SavePackage,
    scripts: list[str],
    *,
    checkpoint: int | None = None,
    gpus: int | None = None,
    project_dir: str | Path | None = None,
    working_tree: bool = False,
    on_wait: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``scripts`` over ``pkg``, one after the other in one analysis process (one
    interpreter, one torch import) on one GPU lease; returns their records in order. Each
    script runs even when one before it failed; then an AnalysisError names those that did."""
    import tempfile

    from omegaconf import OmegaConf

    from expflow.gpu import place_job
    from expflow.outcome import die_with_parent
    from expflow.paths import check_writable

    if not scripts:
        raise AnalysisError("name a script to run")
    refs = [find_script(script, project_dir, pkg) for script in dict.fromkeys(scripts)]  # every name checked first
    cfg = pkg.config()
    check_writable(pkg.analysis_dir, what="analysis output")  # before any GPU is leased
    check_writable(pkg.logs_dir, what="analysis logs")
    if checkpoint is not None:
        pkg.checkpoints().find(checkpoint)  # a missing step fails here, in one line
    node = OmegaConf.select(cfg, "gpu", default=None)
    gpu: dict[str, Any] = OmegaConf.to_container(node, enum_to_str=True) if node is not None else {}  # type: ignore[assignment]
    count = min(int(gpu.get("count", 0)), 1) if gpus is None else int(gpus)
    env = dict(os.environ, MPLBACKEND="Agg")
    many = True
    if not working_tree:
        env = pkg.snapshot_env(env)
        many = _check_snapshot_has_worker(pkg, env)
    base = [sys.executable, "-m", "expflow.analysis.worker", str(pkg.path.resolve())]
    if checkpoint is not None:
        base += ["--checkpoint", str(checkpoint)]
    names = ", ".join(ref.name for ref in refs)
    failed: dict[str, int] = {}
    with place_job(count, int(gpu.get("mem_mb", 0)), int(gpu.get("max_jobs_per_gpu", 1)),
                   bool(gpu.get("allow_cpu", True)), owner=f"{pkg.path.resolve()}#analyze:{names}",
                   on_wait=on_wait) as placement:
        env.update(placement.env)
        if len(refs) == 1 or not many:  # one process per script (a snapshot's older worker takes one)
            for ref in refs:
                code = _worker(base + ["--name", ref.name, *ref.worker_args()], env, project_dir, die_with_parent)
                if code:
                    failed[ref.name] = code
        else:
            with tempfile.TemporaryDirectory(prefix="expflow-analyze-") as tmp:
                report = Path(tmp) / "outcome.json"
                cmd = base + [arg for ref in refs for arg in ("--script", json.dumps(ref.as_json()))]
                code = _worker(cmd + ["--outcome", str(report)], env, project_dir, die_with_parent)
                try:
                    outcome = json.loads(report.read_text())
                except (OSError, ValueError):  # killed before it could say: every script is in doubt
                    outcome = {ref.name: code or 1 for ref in refs}
                failed = {name: int(c) for name, c in outcome.items() if c}
    if failed:
        worst = max(failed.values())
        if worst < 0:
            raise AnalysisError(f"analysis {', '.join(failed)} of {pkg.path}: the analysis process was killed by "
                                f"signal {-worst}")
        error = AnalysisError(f"analysis {', '.join(failed)} of {pkg.path} failed (exit code {worst})")
        error.reported = True  # the analysis process printed a one-line error for each
        error.exit_code = worst
        raise error
    return [read_record(pkg, ref.name) for ref in refs]


def _worker(cmd: list[str], env: dict[str, str], cwd: Any, die_with_parent: Callable[[], None]) -> int:
    proc = subprocess.run(cmd, env=env, cwd=cwd, preexec_fn=die_with_parent if sys.platform == "linux" else None)
    return proc.returncode


def read_record(pkg: SavePackage, name: str) -> dict[str, Any]:
    from expflow.package import shapes

    return shapes.read_json(pkg.analysis_dir / name / META, shapes.ANALYSIS_RECORD, "analysis record",
                            error=AnalysisError)


def headline(pkg_dir: str | Path, name: str, record: dict[str, Any], limit: int = 4) -> str:
    """The scalar results of an analysis, ``key=value`` joined (for one-line listings)."""
    try:
        results = json.loads((Path(pkg_dir) / "analysis" / name / record.get("results", RESULTS)).read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(results, dict):
        return ""
    shown = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items()
             if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return " ".join(shown[:limit])


def analysis_records(pkg: SavePackage) -> dict[str, dict[str, Any]]:
    """Every finished analysis of ``pkg`` by script name (folders without a record are skipped;
    a damaged record is ``{"error": <one line>}``, so listings can say so)."""
    if not pkg.analysis_dir.is_dir():
        return {}
    out: dict[str, dict[str, Any]] = {}
    for d in sorted(pkg.analysis_dir.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / META).is_file():
            try:
                out[d.name] = read_record(pkg, d.name)
            except AnalysisError as e:
                out[d.name] = {"error": e.one_line()}
    return out


# -- the analysis process ----------------------------------------------------------------
def load_entry(ref: ScriptRef) -> Callable[[AnalysisContext], Any]:
    if ref.module is not None:
        module = importlib.import_module(ref.module)
    else:
        assert ref.file is not None
        spec = importlib.util.spec_from_file_location(f"expflow_analysis_{ref.name}", ref.file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    entry = getattr(module, ENTRY, None)
    if not callable(entry):
        raise AnalysisError(f"analysis script {ref.describe()}: no function {ENTRY}(ctx)")
    return entry


def execute_script(pkg: SavePackage, ref: ScriptRef, checkpoint: int | None = None) -> dict[str, Any]:
    """Build the context, call the script, and write its outputs (in this process)."""
    entry = load_entry(ref)
    out_dir = pkg.analysis_dir / ref.name
    staging = _staging_dir(out_dir)
    ctx = AnalysisContext(pkg, script=ref.name, out_dir=staging, checkpoint_step=checkpoint)
    started = time.monotonic()
    try:
        try:
            output, reason = _as_output(entry(ctx)), None
        except NotApplicable as e:
            output, reason = AnalysisOutput(), e.one_line()
        record = {
            "script": ref.name,
            "source": {"origin": ref.origin, "path": ref.describe()},
            "run_id": pkg.run_id,
            "checkpoint": _checkpoint_json(ctx),
            "device": ctx.used_device,
            "time": utc_now(),
            "duration_s": round(time.monotonic() - started, 3),
            "results": RESULTS,
            "figures": [],
            "applicable": reason is None,
            "reason": reason,
        }
        for name, figure in output.figures.items():
            record["figures"].append(_write_figure(staging, name, figure))
        atomic_write_json(staging / RESULTS, to_jsonable(output.results))
        record["files"] = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
        atomic_write_json(staging / META, record)
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record


def _checkpoint_json(ctx: AnalysisContext) -> dict[str, Any] | None:
    info = ctx.loaded_checkpoint
    return None if info is None else {"step": info.step, "epoch": info.epoch, "file": info.file}


def _as_output(value: Any) -> AnalysisOutput:
    if value is None:
        return AnalysisOutput()
    if isinstance(value, AnalysisOutput):
        return value
    if isinstance(value, dict):
        return AnalysisOutput(results=value)
    raise AnalysisError(f"{ENTRY}(ctx) returned {type(value).__name__}; expected a dict or an AnalysisOutput")


def _write_figure(directory: Path, name: str, figure: Any) -> str:
    import io

    if not _FIGURE_NAME.match(name):
        raise AnalysisError(f"figure name {name!r}: use letters, digits, '_', '-' and '.'")
    file = name if name.endswith(".png") else f"{name}.png"
    if isinstance(figure, (bytes, bytearray)):
        data = bytes(figure)
    elif hasattr(figure, "savefig"):
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        data = buf.getvalue()
    else:
        raise AnalysisError(f"figure {name!r}: expected a matplotlib Figure or PNG bytes, got {type(figure).__name__}")
    atomic_write_bytes(directory / file, data)
    return file


def to_jsonable(value: Any) -> Any:
    """Tensors, NumPy values and paths as plain JSON data."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return to_jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def _staging_dir(out_dir: Path) -> Path:
    """A fresh folder beside ``out_dir``; leftovers of killed analyses are removed first."""
    import psutil

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for old in out_dir.parent.glob(f".{out_dir.name}.*-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and psutil.pid_exists(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
    staging = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _swap_in(staging: Path, out_dir: Path) -> None:
    fsync_dir(staging)
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(staging, out_dir)
    fsync_dir(out_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def worker_main(argv: list[str] | None = None) -> int:
    """``python -m expflow.analysis.worker``: analyses of one package, in the analysis process:
    one script (``--name`` with ``--module`` or ``--file``), or several (``--script`` JSON,
    repeated; each runs even when one before it failed, and ``--outcome`` receives each
    one's exit status)."""
    import argparse

    from expflow.config.numbers import int_option

    parser = argparse.ArgumentParser(prog="python -m expflow.analysis.worker")
    parser.add_argument("package")
    parser.add_argument("--name")
    parser.add_argument("--module")
    parser.add_argument("--file", type=Path)
    parser.add_argument("--origin", default="file")
    parser.add_argument("--script", action="append", default=[], type=ScriptRef.from_json)
    parser.add_argument("--outcome", type=Path)
    parser.add_argument("--checkpoint", type=int_option(0), default=None)
    args = parser.parse_args(argv)
    refs = list(args.script)
    if args.name is not None:
        if (args.module is None) == (args.file is None):
            parser.error("--name needs one of --module, --file")
        refs.insert(0, ScriptRef(args.name, args.origin, module=args.module, file=args.file))
    if not refs:
        parser.error("no script: --name ... or --script ...")
    outcome: dict[str, int] = {}
    for ref in refs:
        outcome[ref.name] = _run_one(args.package, ref, args.checkpoint)
        if args.outcome is not None:
            atomic_write_json(args.outcome, outcome)
    return max(outcome.values())


def _run_one(package: str, ref: ScriptRef, checkpoint: int | None) -> int:
    """One script; its one-line error (or success line) printed; its exit status."""
    pkg = None
    try:
        pkg = SavePackage.open(package)
        record = execute_script(pkg, ref, checkpoint)
    except ExpflowError as e:
        return e.report()
    except Exception as e:
        log = pkg.logs_dir / f"analysis-{ref.name}.err" if pkg is not None else None
        where = ""
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            where = f" (traceback in {log})"
        message = f"{e.__class__.__name__}: {e}"
        failed = AnalysisError(f"analysis {ref.name} of {package} failed: {message}{where}")
        failed.report()
        return 1
    if not record["applicable"]:
        print(f"{record['run_id']}: analysis {ref.name} does not apply: {record['reason']}", flush=True)
        return 0
    ck = record["checkpoint"]
    at = f" at checkpoint step {ck['step']}" if ck else ""
    print(f"{record['run_id']}: analysis {ref.name}{at} -> {pkg.analysis_dir / ref.name}", flush=True)
    return 0
