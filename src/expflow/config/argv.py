"""Checking a Hydra command line before Hydra runs it, so that a bad override, wrong
type or unknown option is one line naming the key and what is valid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from expflow.config.checks import check_override_credentials
from expflow.config.compose import (
    CONFIG_NAME,
    _first_line,
    compose_config,
    expand_sweep,
    sweeper_params,
    validate_config,
)
from expflow.errors import ConfigError

# Flags after which Hydra prints something instead of running a job.
_INFO_FLAGS = {"-h", "--help", "--hydra-help", "--version", "--info", "-i", "-c", "--cfg",
               "--shell-completion", "-sc", "--experimental-rerun"}
_VALUE_FLAGS = {"-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-p", "--package"}
MAX_FULL_CHECKS = 64


@dataclass
class HydraArgs:
    overrides: list[str] = field(default_factory=list)
    multirun: bool = False
    config_dir: str | None = None
    config_name: str = CONFIG_NAME
    info_only: bool = False


def parse_hydra_argv(argv: Sequence[str]) -> HydraArgs:
    out = HydraArgs()
    it = iter(argv)
    for arg in it:
        flag, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in _INFO_FLAGS or flag.split("=")[0] in _INFO_FLAGS:
            out.info_only = True
        elif arg in ("-m", "--multirun"):
            out.multirun = True
        elif flag in _VALUE_FLAGS:
            value = inline or next(it, "")
            if flag in ("-cd", "--config-dir"):
                out.config_dir = value
            elif flag in ("-cn", "--config-name"):
                out.config_name = value
        elif arg.startswith("-"):
            continue
        else:
            out.overrides.append(arg)
    return out


def check_argv(argv: Sequence[str]) -> HydraArgs:
    """Compose every job the command line describes; raises ConfigError (one line)."""
    args = parse_hydra_argv(argv)
    if args.info_only:
        return args
    check_override_credentials(args.overrides)
    kw = {"config_dir": args.config_dir, "config_name": args.config_name}
    if not args.multirun:
        validate_config(compose_config(args.overrides, **kw), args.overrides)
        return args
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except OverrideParseException as e:
        raise ConfigError(f"bad override: {_first_line(str(e))}") from None
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    from omegaconf import OmegaConf

    composed = compose_config(fixed, return_hydra_config=True, **kw)
    sweeper = str(OmegaConf.select(composed, "hydra.sweeper._target_", default="") or "")
    if sweeper and not sweeper.endswith(".BasicSweeper"):
        # An optimizing sweeper (hydra/sweeper=optuna) picks the values itself, as it goes:
        # the overrides every job shares are checked here, each job's when it is composed.
        validate_config(compose_config([o for o in fixed if not o.startswith("hydra")], **kw), fixed)
        return args
    params = sweeper_params(composed)
    jobs = expand_sweep(args.overrides, params)
    if len(jobs) <= MAX_FULL_CHECKS:
        for job in jobs:
            validate_config(compose_config(job, **kw), job)
    else:  # a large sweep: each distinct value once, on top of the fixed overrides
        for value in sorted({o for job in jobs for o in job} - set(fixed)):
            validate_config(compose_config([*fixed, value], **kw), [*fixed, value])
    return args


def check_run_paths(overrides: list[str], *, config_dir: str | None = None, config_name: str | None = None,
                    multirun: bool = False) -> None:
    """Before Hydra creates a run's directory: ``paths.runs`` and ``paths.store`` of the
    composed config are writable directories (a sweep: each value swept over, if any)."""
    import itertools
    import os

    from expflow.paths import check_writable

    variants: list[list[str]] = [list(overrides)]
    if multirun:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(overrides)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        swept = []
        for o in parsed:
            if o.is_sweep_override() and o.key_or_group in ("paths.runs", "paths.store"):
                try:
                    swept.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
                except Exception:  # a sweep Hydra expands only at launch (glob): checked per job
                    continue
        variants = [fixed + list(choice) for choice in itertools.product(*swept)]
    checked: set[tuple[str, str]] = set()
    for variant in variants:
        cfg = compose_config(variant, config_dir=config_dir, config_name=config_name or CONFIG_NAME)
        runs, store = str(cfg.paths.runs), str(cfg.paths.store)
        if (runs, store) in checked:
            continue
        checked.add((runs, store))
        check_writable(runs, what="paths.runs")
        if os.path.abspath(store) != os.path.abspath(runs):
            check_writable(store, what="paths.store")
