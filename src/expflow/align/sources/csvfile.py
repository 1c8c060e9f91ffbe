"""CSV files: long (``step, metric, value``) or wide (a step column, one column per metric).

A file with ``metric`` and ``value`` columns is long; any other is wide, where every
numeric column but the step column is a metric and empty cells are missing points. The
step column is ``step`` unless the spec names another (``step_column``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from expflow.align.sources import (
    FileSource,
    RawRun,
    SourceError,
    reason,
    require_path,
)


def read_csv(path: Path, step_column: str = "step") -> RawRun:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise SourceError(f"{path}: not a readable CSV file ({reason(e)})") from None
    if step_column not in df.columns:
        raise SourceError(f"{path}: no step column {step_column!r} (columns: {', '.join(map(str, df.columns[:8]))})")
    steps = pd.to_numeric(df[step_column], errors="coerce")
    if steps.isna().any():
        bad = int(np.flatnonzero(steps.isna().to_numpy())[0]) + 2  # 1-based, after the header
        raise SourceError(f"{path}: line {bad}: step {df[step_column].iloc[bad - 2]!r} is not a number")
    if {"metric", "value"} <= set(df.columns):
        values = pd.to_numeric(df["value"], errors="coerce")
        frame = pd.DataFrame(
            {"metric": pd.Categorical(df["metric"].astype(str)), "row": steps.astype(np.int64), "value": values.astype(np.float64)}
        )
    else:
        numeric = [c for c in df.columns if c != step_column and pd.api.types.is_numeric_dtype(df[c])]
        long = df[[step_column, *numeric]].melt(id_vars=step_column, var_name="metric", value_name="value")
        # melt is column by column: restore log (row) order, stable within a row
        long = long.iloc[np.argsort(long[step_column].to_numpy(), kind="stable")]
        frame = pd.DataFrame(
            {
                "metric": pd.Categorical(long["metric"].astype(str)),
                "row": long[step_column].to_numpy().astype(np.int64),
                "value": long["value"].to_numpy(np.float64),
            }
        )
    frame = frame[frame["value"].notna()].reset_index(drop=True)
    return RawRun(frame, {}, {"file": str(path)})


class CsvSource(FileSource):
    kind = "csv"
    optional = ("step_column",)

    def files(self) -> list[Path]:
        p = require_path(self.spec.path)
        if not p.is_file():
            raise SourceError(f"{p}: a csv source is one file")
        return [p]

    def parse(self, files: list[Path]) -> RawRun:
        return read_csv(files[0], self.spec.step_column)
