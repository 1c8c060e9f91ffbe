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
    return GitProbe(root).result()


class GitProbe:
    """:func:`git_state`, started now and read later: one ``git status --porcelain=v2
    --branch`` (the commit is its ``branch.oid`` line) runs while the caller goes on, e.g.
    while a code snapshot is taken."""

    def __init__(self, root: str | Path):
        try:
            self._proc: subprocess.Popen[str] | None = subprocess.Popen(
                ["git", "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
                cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
        except OSError:  # no git, or root is gone
            self._proc = None

    def result(self, timeout: float = 10) -> dict[str, Any] | None:
        if self._proc is None:
            return None
        try:
            out, _ = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            return None
        if self._proc.returncode != 0:  # not a repository (or git failed)
            return None
        commit, dirty = None, False
        for line in out.splitlines():
            if line.startswith("# branch.oid "):
                oid = line[len("# branch.oid "):].strip()
                commit = None if oid == "(initial)" else oid
            elif line and not line.startswith("#"):
                dirty = True
        return {"commit": commit, "dirty": dirty or commit is None}


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
