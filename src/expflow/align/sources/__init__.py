"""Sources: where a framework's metrics come from.

Every kind reads its files (or its cloud run) into a :class:`RawRun`: a long table of
``(metric, row, value)`` points in log order, plus the step keys the source declared.
A local source may be several files or runs (``path`` a list, a glob, or a directory
holding several runs): each is read on its own and they are merged by :func:`merge_runs`
in time order, one *segment* each (the ``segment`` column); ``steps.align_steps`` then
applies the merge rules (a later segment wins at a repeated step; per metric, a segment
that goes back to a step an earlier one reached replaces the earlier points from there).
``fingerprint()`` is cheap (a ``stat``, or one metadata call for cloud runs) and changes
whenever the data could have: it keys the cache, so an unchanged source is never read
again. A corrupt or truncated file is a :class:`SourceError` naming the file; a source
that can skip what is damaged (expflow packages) reads the rest and says what it skipped
in ``info[DAMAGE]``: a warning, or with ``--strict`` the framework's error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expflow.align.sources.base import (  # noqa: F401  (the names a source kind and its callers use)
    DAMAGE,
    NOTES,
    CloudSource,
    FileSource,
    PointBuffer,
    RawRun,
    Source,
    SourceError,
    describe_paths,
    digest,
    in_time_order,
    is_number,
    merge_runs,
    notes_of,
    points_frame,
    reason,
    require_path,
    some,
    spec_paths,
    stat_fingerprint,
)


def _kinds() -> dict[str, type[Source]]:
    from expflow.align.sources.csvfile import CsvSource
    from expflow.align.sources.packages import ExpflowSource
    from expflow.align.sources.swanlab import SwanLabCloudSource, SwanLabOfflineSource
    from expflow.align.sources.tensorboard import TensorBoardSource
    from expflow.align.sources.wandb import WandbCloudSource, WandbOfflineSource

    kinds: list[type[Source]] = [
        SwanLabOfflineSource,
        SwanLabCloudSource,
        WandbOfflineSource,
        WandbCloudSource,
        TensorBoardSource,
        CsvSource,
        ExpflowSource,
    ]
    return {k.kind: k for k in kinds}


SOURCE_KINDS: dict[str, type[Source]] = _kinds()


def for_workflow(spec: Any, workflow: Any) -> Any:
    """An expflow source on the workflow's runs directory (``workflow.runs_dir``) aligns the
    workflow's runs (``workflow.run_ids``)."""
    import dataclasses

    if workflow is None or spec.kind != "expflow" or spec.runs is not None or spec.path is None:
        return spec
    if Path(spec.path).resolve() != Path(workflow.runs_dir).resolve():
        return spec
    return dataclasses.replace(spec, runs=list(workflow.run_ids))


def make_source(spec: Any) -> Source:
    return SOURCE_KINDS[spec.kind](spec)
