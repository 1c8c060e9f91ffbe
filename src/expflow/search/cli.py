"""`expflow search` (results) and `expflow search-slot` (the workflow's trial-slot job)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from expflow.errors import ConfigError


def require_optuna() -> None:
    """Optuna is an optional extra: without it, one line saying how to get it."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("search needs Optuna, which is not installed; install it with "
                          "pip install 'expflow[search]'") from None


def register(sub: Any) -> None:
    from expflow.search.results import add_arguments

    p = sub.add_parser("search", help="a search's trials by objective, its best trial and package (--html: plots)")
    add_arguments(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("search-slot", help="run trials of a workflow search until its budget is spent (a workflow job)")
    p.add_argument("--runs", default="runs", help="the runs directory (default: runs)")
    p.add_argument("--config-dir", default=None, help="the Hydra config directory (default: ./conf)")
    p.add_argument("--slot", type=int, default=0, help="this slot's index (its sampler's seed offset)")
    p.add_argument("--spec", required=True, help="the search settings as JSON (the workflow's search section)")
    p.set_defaults(func=cmd_slot)


def cmd_search(args: argparse.Namespace) -> int:
    require_optuna()
    from expflow.search.results import run_command

    return run_command(args)


def cmd_slot(args: argparse.Namespace) -> int:
    require_optuna()
    from expflow.search.slot import run_slot
    from expflow.search.study import SearchSpec

    try:
        data = json.loads(args.spec)
    except ValueError as e:
        raise ConfigError(f"--spec: not JSON ({e})") from None
    outcomes = run_slot(SearchSpec.from_json(data), args.runs, config_dir=args.config_dir, slot=args.slot)
    print(f"slot {args.slot}: {len(outcomes)} trial(s) run; the search's budget is spent")
    return 0
