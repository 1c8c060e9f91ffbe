"""`python -m expflow.train [overrides]` (`-m` to sweep): a thin `@hydra.main` over
`expflow.launch.train`. One save-package per run under `paths.runs`. Its `--help` is the
`hydra/help=expflow` page stored below: the config groups a user chooses, not Hydra's list of
every group (the align specs and the structured-config schemas are internal)."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from expflow.config import conf_dir, setup
from expflow.errors import ExpflowError

# The groups `--help` lists, with what each chooses; groups of a project's own conf/ that are
# not here are listed without a description, the internal ones not at all.
GROUP_HELP = {
    "model": "the network to train",
    "dataset": "the data and its loaders",
    "optim": "the optimizer and learning-rate schedule",
    "trainer": "how long and how to train (epochs, processes, threads, progress)",
    "runner": "the training loop: supervised, a command of your own, or a character LM",
    "checkpoint": "which checkpoints are kept",
    "tracker": "where metrics go besides the package: SwanLab, MLflow, both, or none",
    "gpu": "how many GPUs a run leases, or cpu",
    "freq": "an overlay of the whole config (a sweep's values, a small run), added with +",
}
INTERNAL_GROUPS = {"hydra", "schema", "align"}

HELP_TEMPLATE = """python -m expflow.train: train one run into its save-package (-m: a sweep, a package per run).

Reads conf/config.yaml and the config groups below (from ./conf, or --config-dir) and the
project's code. Writes <paths.runs>/<run_id>/: the resolved config, a code snapshot, metric
records, checkpoints, logs and the manifest (status, attempts). Prints the package and its status.

== Config groups: choose an option with group=option ==
${expflow_help_groups:}

Examples:
  python -m expflow.train                                        # one run, the defaults
  python -m expflow.train model=cnn optim.lr=3e-3 seed=1         # choose options, set values
  python -m expflow.train -m optim.lr=1e-3,3e-3 'seed=range(3)'  # a sweep: one package per run
  python -m expflow.train +freq=smoke                            # a small CPU run
  python -m expflow.train --cfg job                              # print the composed config only

Hydra's own flags: --hydra-help.

== Config: override any key with key=value ==
$CONFIG"""


def help_groups() -> str:
    """The user-facing config groups and their options, one line each (for --help)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    groups = [g for g in sorted(loader.list_groups("")) if g not in INTERNAL_GROUPS]
    lines = []
    for group in groups:
        plus = "+" if group == "freq" else ""  # an overlay, not in the defaults list
        lines.append(f"  {plus}{group}={'|'.join(loader.get_group_options(group))}")
        if group in GROUP_HELP:
            lines.append(f"      {GROUP_HELP[group]}")
    return "\n".join(lines)


def register_help() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("expflow_help_groups", help_groups, replace=True)
    ConfigStore.instance().store(group="hydra/help", name="expflow", node={"template": HELP_TEMPLATE})


def _fail(error: ExpflowError) -> NoReturn:
    sys.exit(error.report())


def _config_path() -> str:
    try:
        return str(conf_dir())
    except ExpflowError as e:
        if __name__ == "__main__":
            _fail(e)
        return "conf"


setup()
register_help()


@hydra.main(version_base="1.3", config_path=_config_path(), config_name="config")
def main(cfg: DictConfig) -> dict[str, float] | float:
    """Train one run; returns its last metrics, or with ``objective=<metric>`` that metric's
    last value (what a sweeper that optimizes, ``hydra/sweeper=optuna``, takes)."""
    from expflow.launch import train

    hc = HydraConfig.get()
    package_dir = os.path.normpath(hc.runtime.output_dir)  # a sweep job's dir is <sweep>/../../<run_id>
    try:
        result = train(cfg, overrides=list(hc.overrides.task), package_dir=package_dir)
        print(f"package {result.package.path}: {result.status.value}", flush=True)
        return objective_value(cfg, result.metrics, str(result.package.path))
    except ExpflowError as e:
        _fail(e)


def objective_value(cfg: DictConfig, metrics: dict[str, float], where: str) -> dict[str, float] | float:
    name = cfg.get("objective")
    if not name:
        return metrics
    if name not in metrics:
        from expflow.errors import ConfigError

        known = ", ".join(sorted(metrics)) or "none"
        raise ConfigError(f"objective: the run {where} recorded no metric {name!r} (its metrics: {known})")
    return float(metrics[name])


def cli() -> None:
    from expflow.config.argv import check_argv, check_run_paths

    if {"-h", "--help"} & set(sys.argv[1:]) and not any(a.startswith("hydra/help=") for a in sys.argv[1:]):
        sys.argv.append("hydra/help=expflow")
    try:
        args = check_argv(sys.argv[1:])
        if not args.info_only:  # before Hydra creates the run's directory under paths.runs
            check_run_paths(args.overrides, config_dir=args.config_dir, config_name=args.config_name,
                            multirun=args.multirun)
    except ExpflowError as e:
        _fail(e)
    main()


if __name__ == "__main__":
    cli()
