"""``python -m expflow.worker <package> [--resume latest|STEP]``: run one rank of a package.

Launched by ``expflow continue``/``rerun`` (from the package's code snapshot) and by
torchrun for DDP runs; not meant to be typed by users.
"""

from __future__ import annotations

import argparse
import sys

from expflow.errors import ConfigError, ExpflowError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m expflow.worker")
    parser.add_argument("package")
    parser.add_argument("--resume", default=None, help="latest, or the step of a checkpoint")
    args = parser.parse_args(argv)
    from expflow.package import SavePackage
    from expflow.rank import execute

    resume = args.resume
    if resume not in (None, "latest"):
        try:
            resume = int(resume)
        except ValueError:
            return ConfigError(f"--resume: {resume!r} is not valid; valid: latest or a step number").report()
    try:
        execute(SavePackage.open(args.package), resume=resume)
    except ExpflowError as e:
        return e.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
