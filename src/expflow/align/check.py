"""The alignment check (seed 002): per framework, are all aligned metrics there?

Printed as the seed prints it::

    [✓] verl: all 6 aligned metrics present
    [!] roll: 2 of 6 aligned metrics missing:
          - algorithm/entropy  (expected from: actor/entropy)
          - infra/throughput   (expected from: per_gpu(system/tps))

and written to ``check.json``. A framework whose source failed is reported with its error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.text import Text

CHECK_FILE = "check.json"  # the check report of the last alignment, in the output directory

OK, MISSING, ERROR = "ok", "missing", "error"


@dataclass
class FrameworkCheck:
    label: str  # the framework, or <framework>/<run_id> for a package of a runs directory
    framework: str
    source: str
    status: str = OK
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    expected: dict[str, list[str]] = field(default_factory=dict)  # missing aligned name -> framework names
    notes: list[str] = field(default_factory=list)
    points: int = 0  # aligned points produced
    from_cache: bool = False
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. damaged record lines skipped

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.status != ERROR:
            data.pop("error")
        if not self.warnings:
            data.pop("warnings")
        return data


def check_framework(
    check: FrameworkCheck,
    present: Sequence[str],
    aligned_metrics: Sequence[str],
    expected: dict[str, list[str]],
) -> FrameworkCheck:
    have = set(present)
    check.present = [m for m in aligned_metrics if m in have]
    check.missing = [m for m in aligned_metrics if m not in have]
    check.expected = {m: expected.get(m, []) for m in check.missing}
    check.status = MISSING if check.missing else OK
    return check


def check_report(checks: Sequence[FrameworkCheck], aligned_metrics: Sequence[str]) -> dict[str, Any]:
    return {
        "aligned_metrics": list(aligned_metrics),
        "frameworks": {c.label: c.to_json() for c in checks},
    }


def render_check(checks: Sequence[FrameworkCheck], aligned_metrics: Sequence[str], console: Console) -> None:
    n = len(aligned_metrics)
    for c in checks:
        line = Text()
        if c.status == ERROR:
            line.append("[✗] ", style="bold red")
            line.append(f"{c.label}: {c.error}")
        elif c.status == OK:
            line.append("[✓] ", style="bold green")
            line.append(f"{c.label}: all {n} aligned metrics present")
        else:
            line.append("[!] ", style="bold yellow")
            line.append(f"{c.label}: {len(c.missing)} of {n} aligned metrics missing:")
        console.print(line, highlight=False, soft_wrap=True)
        width = max((len(m) for m in c.missing), default=0)
        for m in c.missing:
            hint = c.expected.get(m)
            tail = f"  (expected from: {', '.join(hint)})" if hint else "  (nothing maps to it)"
            console.print(Text(f"      - {m.ljust(width)}{tail}"), highlight=False, soft_wrap=True)
        for note in c.notes:
            console.print(Text(f"      note: {note}", style="dim"), highlight=False, soft_wrap=True)
