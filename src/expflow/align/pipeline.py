"""``align``: every enabled framework's source -> cache -> step groups -> aligned names ->
check -> outputs. A framework whose source fails is reported and left out; the others
are still aligned and written. A source that skipped damaged data (an expflow package
with bad record lines) is aligned from the rest with a warning; ``strict`` fails it.

Outputs under ``out``: ``aligned.parquet`` and ``aligned.csv`` (``framework, metric, step,
value``), ``check.json``, ``plots/<metric>.png``, ``report.html``, and the tracker
experiments (``swanlab/``). The cache defaults to ``out/cache``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from expflow.align.aligned import align_framework
from expflow.align.cache import SourceCache
from expflow.align.check import (
    CHECK_FILE,
    ERROR,
    FrameworkCheck,
    check_framework,
    check_report,
    render_check,
)
from expflow.align.sources import Source, SourceError, for_workflow, make_source, notes_of, reason
from expflow.align.spec import Plan
from expflow.align.tracker import check_target, start_experiments
from expflow.atomic import atomic_write, atomic_write_json
from expflow.errors import AlignError

COLUMNS = ["framework", "metric", "step", "value"]


class SourceFailures(AlignError):
    """Some frameworks could not be read; the others were aligned."""

    exit_code = 1


@dataclass
class AlignResult:
    out: Path
    table: pd.DataFrame  # framework, metric, step, value
    checks: list[FrameworkCheck]
    files: dict[str, Path] = field(default_factory=dict)
    read: list[str] = field(default_factory=list)  # labels whose source was read
    cached: list[str] = field(default_factory=list)  # labels served from the cache
    tracker: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failures(self) -> list[FrameworkCheck]:
        return [c for c in self.checks if c.status == ERROR]

    @property
    def warnings(self) -> list[str]:
        """One line per warning, naming its label (e.g. a package's skipped record lines)."""
        return [f"{c.label}: {w}" for c in self.checks for w in c.warnings]


@dataclass
class WorkflowRuns:
    """The workflow's own runs: expflow sources on ``runs_dir`` align exactly these."""

    runs_dir: Path
    run_ids: Sequence[str]


def run_alignment(
    plan: Plan,
    out: str | Path,
    *,
    cache_dir: str | Path | None = None,
    workflow: WorkflowRuns | None = None,
    plots: bool = True,
    tracker: bool = True,
    console: Console | None = None,
    strict: bool = False,
) -> AlignResult:
    """Align every enabled framework. ``strict``: a source that skipped damaged data (see
    ``RawRun.damage``) fails its framework instead of being aligned from the rest."""
    out = Path(out)
    console = console or Console(stderr=True)
    if tracker:
        check_target(plan.target)
    cache = SourceCache(cache_dir or plan.cache_dir or out / "cache")
    result = AlignResult(out, pd.DataFrame(columns=COLUMNS), [])
    tables: dict[str, pd.DataFrame] = {}
    names: dict[str, str] = {}

    runs: list[tuple[Any, str | None, Source, FrameworkCheck]] = []
    for fw in plan.frameworks:
        # Anything wrong with one framework's source (a bad id, an unreadable file) fails
        # that framework alone: the others are aligned and the exit status says so.
        try:
            source = make_source(for_workflow(fw.source, workflow))
            instances = source.instances()
        except (SourceError, OSError) as e:
            result.checks.append(FrameworkCheck(fw.name, fw.name, _describe(fw.source), status=ERROR, error=_one_line(e)))
            continue
        for suffix, inst in instances:
            label = fw.name if suffix is None else f"{fw.name}/{suffix}"
            check = FrameworkCheck(label, fw.name, _describe(fw.source, inst))
            result.checks.append(check)
            runs.append((fw, suffix, inst, check))
    loaded = _load_all([(c.label, inst, fw.cache_file if suffix is None else None) for fw, suffix, inst, c in runs],
                       cache, console, meanwhile=lambda: _preload(plots=plots, tracker=tracker))

    for fw, suffix, _inst, check in runs:
        label = check.label
        got = loaded[label]
        if isinstance(got, str):
            check.status, check.error = ERROR, got
            continue
        raw, from_cache = got
        (result.cached if from_cache else result.read).append(label)
        if raw.damage:  # kept in the cache entry: a cache hit warns (or fails) the same
            if strict:
                check.status, check.error = ERROR, f"{raw.damage} (--strict)"
                continue
            check.warnings.append(f"{raw.damage}; the bad lines are skipped (--strict fails the package)")
        check.warnings += notes_of(raw)
        try:
            aligned = align_framework(raw, fw)
        except ValueError as e:  # e.g. steps too far apart to put on one axis
            check.status, check.error = ERROR, f"{check.source}: cannot align: {e}"
            continue
        table = aligned.table
        check.points, check.from_cache, check.notes = len(table), from_cache, aligned.notes
        check_framework(check, table["metric"].unique().astype(str).tolist(), plan.aligned_metrics, fw.expected())
        tables[label] = table
        names[label] = fw.target_exp_name if suffix is None else f"{fw.target_exp_name}-{suffix}"

    result.table = _long_table(tables, plan.aligned_metrics)
    result.files.update(_write_tables(result.table, out))
    report = check_report(result.checks, plan.aligned_metrics)
    report["spec"] = str(plan.path)
    if plan.disabled:
        report["disabled"] = list(plan.disabled)
    # the experiments are written (in their own processes) while the plots are drawn
    pending = start_experiments(tables, names, plan.target, out) if tracker and tables else None
    try:
        if plots:
            from expflow.align.report import write_report

            result.files.update(write_report(result.table, plan.aligned_metrics, result.checks, out,
                                             title=f"Metric alignment: {plan.path.name}",
                                             busy=pending.workers if pending is not None else 0))
    finally:
        if pending is not None:
            result.tracker = pending.finish()
            report["tracker"] = result.tracker
    atomic_write_json(out / CHECK_FILE, report)
    result.files[CHECK_FILE] = out / CHECK_FILE
    render_check(result.checks, plan.aligned_metrics, console)
    return result


def _describe(spec: Any, source: Source | None = None) -> str:
    try:
        return (source or make_source(spec)).describe()
    except Exception:  # describing must never be what fails a framework
        return f"{spec.kind} {spec.path or spec.id or spec.run_path}"


def _one_line(e: BaseException) -> str:
    if isinstance(e, SourceError):
        return e.one_line()
    return f"{getattr(e, 'filename', '') or ''}: {reason(e)}".lstrip(": ")


def _load_all(
    items: list[tuple[str, Source, str | None]], cache: SourceCache, console: Console,
    meanwhile: Any = None,
) -> dict[str, tuple[Any, bool] | str]:
    """label -> (its points, from the cache?) or its one-line error. Unchanged sources come
    from the cache; the others are read, several at once in worker processes where there
    are CPUs for them (parsing is CPU-bound Python), and stored. ``meanwhile``: work for
    this process while the workers read (once they are forked)."""
    out: dict[str, tuple[Any, bool] | str] = {}
    misses: list[tuple[str, Source, str | None, str, str]] = []
    for label, source, file in items:
        try:
            identity, fingerprint = source.identity(), source.fingerprint()
        except (SourceError, OSError) as e:
            out[label] = _one_line(e)
            continue
        raw = cache.load(label, identity, fingerprint, file)
        if raw is not None:
            out[label] = (raw, True)
        else:
            misses.append((label, source, file, identity, fingerprint))
    if not misses:
        return out
    from rich.markup import escape

    workers = min(len(misses), os.cpu_count() or 1, 4)
    what = misses[0][0] if len(misses) == 1 else f"{len(misses)} sources"
    if workers < 2:
        with console.status(escape(f"reading {what} ({misses[0][1].describe()}{', ...' if len(misses) > 1 else ''})")):
            reads = [_read(source) for _, source, *_ in misses]
    else:  # no spinner thread while forking
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        console.print(f"reading {what} in {workers} processes", highlight=False, markup=False)
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(_read, source) for _, source, *_ in misses]
            if meanwhile is not None:  # every worker is forked by now: nothing forks while it runs
                meanwhile()
            reads = [f.result() for f in futures]
    for (label, _source, file, identity, fingerprint), (raw, secs) in zip(misses, reads, strict=True):
        if isinstance(raw, str):
            out[label] = raw
            continue
        console.print(f"read {label}: {len(raw.points):,} points in {secs:.1f}s", highlight=False, markup=False)
        try:
            cache.store(label, identity, fingerprint, raw, file)
        except OSError as e:
            out[label] = _one_line(e)
            continue
        out[label] = (raw, False)
    return out


def _preload(*, plots: bool, tracker: bool) -> None:
    """Import what the plot and experiment workers need (matplotlib, swanlab: ~1.3 s) in this
    process while it waits for the readers: the workers are forked from it later and find
    them loaded, instead of each importing them again."""
    if plots:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    if tracker:
        try:
            import swanlab  # noqa: F401
        except ImportError:  # said where the experiments are written
            pass


def _read(source: Source) -> tuple[Any, float]:
    """(the source's points, seconds), or (its one-line error, seconds)."""
    t0 = time.perf_counter()
    try:
        raw: Any = source.read()
    except (SourceError, OSError) as e:
        raw = _one_line(e)
    return raw, time.perf_counter() - t0


def _long_table(tables: dict[str, pd.DataFrame], aligned_metrics: Sequence[str]) -> pd.DataFrame:
    if not tables:
        return pd.DataFrame({"framework": pd.Categorical([]), "metric": pd.Categorical([], categories=list(aligned_metrics)),
                             "step": pd.Series([], dtype="int64"), "value": pd.Series([], dtype="float64")})
    parts = [t.assign(framework=label, metric=t["metric"].astype(str)) for label, t in tables.items()]
    df = pd.concat(parts, ignore_index=True)[COLUMNS]
    df["framework"] = pd.Categorical(df["framework"], categories=list(tables))
    df["metric"] = pd.Categorical(df["metric"], categories=list(aligned_metrics))
    return df.sort_values(["framework", "metric", "step"], kind="stable").reset_index(drop=True)


def _write_tables(table: pd.DataFrame, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    parquet, csv = out / "aligned.parquet", out / "aligned.csv"
    atomic_write(parquet, lambda f: table.to_parquet(f, index=False))
    atomic_write(csv, lambda f: _to_csv(table, f))
    return {"aligned.parquet": parquet, "aligned.csv": csv}


def _to_csv(table: pd.DataFrame, f: Any) -> None:
    """Arrow's CSV writer (several times pandas' speed; floats written to round-trip), or
    pandas' where a name needs quoting."""
    names = [*table["framework"].astype(str).unique(), *table["metric"].astype(str).unique()]
    if any(ch in n for n in names for ch in ',"\r\n'):
        f.write(table.to_csv(index=False).encode())
        return
    import pyarrow as pa
    import pyarrow.csv as pacsv

    f.write((",".join(COLUMNS) + "\n").encode())
    arrow = pa.Table.from_pandas(table[COLUMNS].astype({"framework": str, "metric": str}), preserve_index=False)
    pacsv.write_csv(arrow, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))


def summary_error(result: AlignResult) -> SourceFailures | None:
    """One line for the frameworks that failed (each names its file), or None."""
    if not result.failures:
        return None
    parts = [f"{c.label}: {c.error}" for c in result.failures]
    ok = len(result.checks) - len(result.failures)
    return SourceFailures(f"{'; '.join(parts)} ({ok} other framework(s) aligned into {result.out})")

