"""``python -m expflow.train [overrides]`` (``-m`` to sweep): a thin ``@hydra.main``
over :func:`expflow.launch.train`. One save-package per run under ``paths.runs``."""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from expflow.config import conf_dir, setup
from expflow.errors import ExpflowError


def _fail(error: ExpflowError) -> None:
    print(f"expflow: error: {error.one_line()}", file=sys.stderr)
    sys.exit(error.exit_code)


def _config_path() -> str:
    try:
        return str(conf_dir())
    except ExpflowError as e:
        if __name__ == "__main__":
            _fail(e)
        return "conf"


setup()


@hydra.main(version_base="1.3", config_path=_config_path(), config_name="config")
def main(cfg: DictConfig) -> dict[str, float]:
    from expflow.launch import train

    hc = HydraConfig.get()
    package_dir = os.path.normpath(hc.runtime.output_dir)  # a sweep job's dir is <sweep>/../../<run_id>
    try:
        result = train(cfg, overrides=list(hc.overrides.task), package_dir=package_dir)
    except ExpflowError as e:
        _fail(e)
    print(f"package {result.package.path}: {result.status.value}", flush=True)
    return result.metrics


def cli() -> None:
    from expflow.config.argv import check_argv
    from expflow.paths import check_run_paths

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
