"""CSV files: long (``step, metric, value``) or wide (a step column, one column per metric).

A file with ``metric`` and ``value`` columns is long; any other is wide, where every
column but the step column is a metric and empty cells are missing points. A cell that is
not a number (``-``, ``n/a``) is a missing value, in both forms, and counted per column
(per metric in the long form) in the read's notes, which the check reports as warnings;
a column with no number at all (a run name, a note) is not a metric. The
step column is ``step`` unless the spec names another (``step_column``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from expflow.align.sources.base import (
    NOTES,
    FileSource,
    RawRun,
    SourceError,
    merge_runs,
    reason,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def read_csv(path: Path, step_column: str = "step") -> RawRun:
    import numpy as np
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)  # cells as written: "-" is not silently a column's fate
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise SourceError(f"{path}: not a readable CSV file ({reason(e)})") from None
    if step_column not in df.columns:
        raise SourceError(f"{path}: no step column {step_column!r} (columns: {', '.join(map(str, df.columns[:8]))})")
    steps = pd.to_numeric(df[step_column], errors="coerce")
    if steps.isna().any():
        bad = int(np.flatnonzero(steps.isna().to_numpy())[0]) + 2  # 1-based, after the header
        raise SourceError(f"{path}: line {bad}: step {df[step_column].iloc[bad - 2]!r} is not a number")
    notes: list[str] = []
    if {"metric", "value"} <= set(df.columns):
        values = _numbers(df["value"], f"{path}: column 'value'", notes, per=df["metric"])
        frame = pd.DataFrame(
            {"metric": pd.Categorical(df["metric"].astype(str)), "row": steps.astype(np.int64), "value": values}
        )
    else:
        cols: dict[str, np.ndarray] = {}
        for c in df.columns:
            if c == step_column:
                continue
            vals = _numbers(df[c], f"{path}: column {c!r}", notes)
            if vals is not None:
                cols[str(c)] = vals
        n, k = len(df), len(cols)
        # row-major: log (row) order, columns in file order within a row
        frame = pd.DataFrame(
            {
                "metric": pd.Categorical.from_codes(np.tile(np.arange(k), n), categories=list(cols)) if k else pd.Categorical([]),
                "row": np.repeat(steps.to_numpy().astype(np.int64), k),
                "value": np.column_stack(list(cols.values())).reshape(-1) if k else np.empty(0),
            }
        )
    frame = frame[frame["value"].notna()].reset_index(drop=True)
    info: dict = {"file": str(path)}
    if notes:
        info[NOTES] = notes
    return RawRun(frame, {}, info)


def _numbers(cells: pd.Series, where: str, notes: list[str], per: pd.Series | None = None) -> np.ndarray | None:
    """A column's cells as floats: empty cells and ``nan`` are missing points, other cells
    that are not numbers are missing values too, counted in ``notes`` (per metric in the
    long form). A column without a single number (text) is no metric: None."""
    import numpy as np
    import pandas as pd

    text = cells.str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
    empty = (text == "").to_numpy() | text.str.lower().isin(["nan", "na", "null", "none"]).to_numpy()
    bad = np.isnan(values) & ~empty
    if per is None and bad.any() and not np.isfinite(values).any() and (~np.isnan(values)).sum() == 0:
        return None  # a text column (a note, a run name): not a metric
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        if per is None:
            notes.append(f"{where}: {int(bad.sum())} cell(s) not a number, read as missing (first: line {first + 2}: {cells.iloc[first]!r})")
        else:
            counts = per[bad].astype(str).value_counts(sort=False)
            detail = ", ".join(f"{m}: {int(counts[m])}" for m in sorted(counts.index))
            notes.append(f"{where}: {int(bad.sum())} value(s) not a number, read as missing ({detail}; first: line {first + 2}: {cells.iloc[first]!r})")
    return values


def _csv_file(p: Path) -> list[Path]:
    if not p.is_file():
        raise SourceError(f"{p}: a csv source is a file (or a list or glob of files)")
    return [p]


class CsvSource(FileSource):
    kind = "csv"
    optional = ("step_column",)
    find_files = staticmethod(_csv_file)

    def parse(self, files: list[Path]) -> RawRun:
        # several files: in the order given (a CSV records no start time)
        return merge_runs([read_csv(f, self.spec.step_column) for f in files])
