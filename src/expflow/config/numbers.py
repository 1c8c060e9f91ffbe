"""Numbers: the ranges config values and numeric command-line options are checked
against, and the argparse ``type=`` of those options (:func:`int_option`,
:func:`number_option`): nan, infinities, numbers out of range or beyond int64 are one
line naming the option and what is valid. Standard library only (the command line
imports it without Hydra)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Valid numbers of a key: ``low``/``high`` bounds (None: unbounded), ``low`` open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not valid
    integer: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            if self.low_open:
                return f"{kind} > {self.low} and <= {self.high}"
            return f"{kind} in {self.low}..{self.high}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{kind} <= {self.high}"
        return kind


# What torch and NumPy integers hold.
INT64 = Range(-(2**63), 2**63 - 1, integer=True)
# What Python (random.seed), NumPy (np.random.seed) and torch (manual_seed) all accept.
SEED = Range(0, 2**32 - 1, integer=True)


def short(text: Any, limit: int = 40) -> str:
    """``text`` as it is, or its start and length when longer than ``limit``."""
    s = str(text)
    return s if len(s) <= limit else f"{s[: limit - 16]}... ({len(s)} characters)"


def int_option(low: int | None = 0, high: int | None = None) -> Callable[[str], int]:
    """argparse ``type=``: an integer in ``low..high`` that fits int64, one-line errors."""
    rng = Range(low, high, integer=True)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # also a number of more than 4300 digits
            raise argparse.ArgumentTypeError(f"{short(text)!r} is not an integer; valid: {rng.describe()}") from None
        if not rng.contains(value) or not INT64.contains(value):
            fits = "" if INT64.contains(value) else " that fits int64"
            raise argparse.ArgumentTypeError(f"{short(text)!r} is out of range; valid: {rng.describe()}{fits}")
        return value

    parse.__name__ = "integer"
    return parse


def number_option(low: float | None = 0, high: float | None = None, *, low_open: bool = True) -> Callable[[str], float]:
    """argparse ``type=``: a finite number in the range (default: > 0), one-line errors."""
    rng = Range(low, high, low_open=low_open)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{short(text)!r} is not a number; valid: {rng.describe()}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{short(text)!r} is not a finite number; valid: {rng.describe()}")
        if not rng.contains(value):
            raise argparse.ArgumentTypeError(f"{short(text)!r} is out of range; valid: {rng.describe()}")
        return value

    parse.__name__ = "number"
    return parse
