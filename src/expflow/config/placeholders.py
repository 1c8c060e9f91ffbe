"""``${expflow:NAME}``: values only known when a run starts, kept as placeholders in the config.

A command run's ``argv`` and ``resume_argv`` may name the checkpoint to resume from, which
exists only once the run has been interrupted. The ``expflow`` resolver gives back the
placeholder itself, so composing and resolving a config (and reading a package's stored one)
leaves ``${expflow:checkpoint}`` as written; :func:`substitute` fills it in at launch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from expflow.errors import ConfigError

# NAME -> what it becomes at launch
NAMES = {
    "checkpoint": "the checkpoint to resume from (empty when there is none)",
    "checkpoint_dir": "the directory the program writes its checkpoints to",
    "package": "the save-package directory",
    "seed": "the run's seed",
    "run_id": "the run id",
    "code": "the package's code snapshot",
}
PATTERN = re.compile(r"\$\{expflow:([^}]*)\}")


def _keep(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"${{expflow:{name}}} is not valid; valid: {', '.join(NAMES)}")
    return f"${{expflow:{name}}}"


def register() -> None:
    """Register the ``expflow`` resolver (idempotent; OmegaConf only, no Hydra)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("expflow"):
        OmegaConf.register_new_resolver("expflow", _keep)


def substitute(text: str, values: Mapping[str, str], where: str) -> str:
    """``text`` with every ``${expflow:NAME}`` replaced by ``values[NAME]``."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConfigError(f"{where}: ${{expflow:{name}}} is not valid; valid: {', '.join(NAMES)}")
        return values[name]

    return PATTERN.sub(one, text)
