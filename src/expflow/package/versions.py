"""Environment facts recorded in a manifest: git state and library versions."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

TRACKED_DISTRIBUTIONS = (
    "expflow", "torch", "numpy", "hydra-core", "omegaconf", "scikit-learn",
    "snakemake", "swanlab", "mlflow", "nvidia-ml-py",
)


def git_state(root: str | Path) -> dict[str, Any] | None:
    """Commit and dirty flag of the repository holding ``root``, or None outside git."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None if git("rev-parse", "--git-dir") is None else {"commit": None, "dirty": True}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": bool(status and status.strip())}


def environment_versions() -> dict[str, Any]:
    info = dict(_static_versions())
    torch = sys.modules.get("torch")  # never import torch just to read its version
    if torch is not None:
        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
    return info


@functools.lru_cache(maxsize=1)
def _static_versions() -> dict[str, Any]:
    """What cannot change within a process: looked up once."""
    packages = {}
    for dist in TRACKED_DISTRIBUTIONS:
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
        "packages": packages,
        "torch": packages.get("torch"),
    }
    return info
