"""Per-rank logs and progress: stdout/stderr of each rank go to ``logs/rank<R>.out|err``
(and still to the terminal); a rich progress bar on a terminal, plain lines in the log."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Tee(io.TextIOBase):
    """Writes to ``stream`` and ``file``; a log file that fails (a full disk) is dropped, the
    terminal keeps every line (the run itself stops at its next record or checkpoint write)."""

    def __init__(self, stream: IO[str], file: IO[str]):
        self.stream = stream
        self.file: IO[str] | None = file
        self.failed: OSError | None = None

    def write(self, s: str) -> int:
        self.stream.write(s)
        if self.file is not None:
            try:
                self.file.write(s)
            except OSError as e:
                self._drop(e)
        return len(s)

    def flush(self) -> None:
        self.stream.flush()
        if self.file is not None:
            try:
                self.file.flush()
            except OSError as e:
                self._drop(e)

    def _drop(self, error: OSError) -> None:
        self.failed, self.file = error, None

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


class RankLogs:
    """Tee this process's stdout/stderr into the package's per-rank log files (appending)."""

    def __init__(self, logs_dir: Path, rank: int):
        from expflow.paths import writing

        with writing(logs_dir):
            logs_dir.mkdir(parents=True, exist_ok=True)
        self.out_path = logs_dir / f"rank{rank}.out"
        self.err_path = logs_dir / f"rank{rank}.err"
        self.out: IO[str] | None = None
        self.err: IO[str] | None = None

    def __enter__(self) -> RankLogs:
        from expflow.paths import writing

        with writing(self.out_path):
            self.out = open(self.out_path, "a", buffering=1, encoding="utf-8")
            try:
                self.err = open(self.err_path, "a", buffering=1, encoding="utf-8")
            except BaseException:
                self.out.close()
                raise
        self._saved = (sys.stdout, sys.stderr)
        self.terminal = sys.stdout
        sys.stdout = Tee(sys.stdout, self.out)  # type: ignore[assignment]
        sys.stderr = Tee(sys.stderr, self.err)  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout, sys.stderr = self._saved
        for f in (self.out, self.err):
            if f is not None:
                try:
                    f.close()
                except OSError:  # its last lines did not fit (a full disk): the terminal had them
                    pass


class ProgressReporter:
    """A rich bar on a terminal; plain lines into the log (and to non-terminal stdout)."""

    def __init__(self, mode: str, logs: RankLogs | None, total_steps: int, run_id: str, enabled: bool = True):
        terminal = logs.terminal if logs else sys.stdout
        self.logs = logs
        self.enabled = enabled and mode != "none"
        self.rich = self.enabled and (mode == "rich" or (mode == "auto" and terminal.isatty()))
        self._progress: Progress | None = None
        if self.rich:
            self._progress = Progress(
                TextColumn(f"[bold]{run_id}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(file=terminal),
                transient=False,
            )
            self._task = self._progress.add_task("", total=total_steps)
            self._progress.start()

    def advance(self, completed: int, description: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, description=description)

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            if self.logs and self.logs.out:
                self.logs.out.write(text + "\n")
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def format_metrics(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
