"""Typed errors. Each carries the key or path it is about; the CLI edge turns them
into one-line messages (never a traceback)."""

from __future__ import annotations


class ExpflowError(Exception):
    """Base of every error expflow reports to the user as one line."""

    exit_code = 2
    reported = False  # already printed (by a child process): the CLI edge stays silent

    def one_line(self) -> str:
        return " ".join(str(self).split())

    def line(self) -> str:
        """What the user sees: ``expflow: error: <one line>``."""
        return f"expflow: error: {self.one_line()}"

    def report(self) -> int:
        """The error edge of every expflow command and process: the one line on stderr
        (unless a child process printed it already), and the exit status to return."""
        if not self.reported:
            import sys

            print(self.line(), file=sys.stderr, flush=True)
        return self.exit_code


class ConfigError(ExpflowError):
    """A config value, key, override or option is invalid."""


class PackageError(ExpflowError):
    """A path is not a (valid) save-package, or the package cannot be used as asked."""


class CheckpointError(PackageError):
    """A checkpoint is missing, unreadable or corrupt."""


class RecordError(PackageError):
    """A metric record file is corrupt at a given position."""


class SyncError(ExpflowError):
    """A package could not be synced to a tracking server (bad target, id, or records)."""

    exit_code = 1


class SyncDeferred(SyncError):
    """No network or no credentials: nothing was lost, the next sync catches up."""


class AlignError(ExpflowError):
    """A metric-alignment spec is invalid, or a framework's source cannot be read."""


class RunCrashed(ExpflowError):
    """The training code raised; the package is marked CRASHED."""

    exit_code = 1


class ReproductionMismatch(ExpflowError):
    """A rerun's metrics differ from the original's."""

    exit_code = 1
