"""Seed every Python process of a command run before user code runs.

A command run's program (``python train.py``, ``torchrun ... train.py``) is the user's own and
may never seed anything. :func:`seeded_env` prepares its environment so that each Python
process started with it — the program, torchrun's workers, subprocesses, ``spawn``-ed
workers, which all inherit PYTHONPATH — imports ``pyseed_path/sitecustomize.py`` at start-up.
That module seeds Python's ``random`` at once, NumPy's global RNG and torch's default
generators right after they are imported (never importing them itself), and runs whichever
``sitecustomize`` it shadows. PYTHONHASHSEED makes ``str`` hashes (set order) stable. See
that module's docstring for what this does not cover (non-Python programs, RNGs seeded from
OS entropy, nondeterministic GPU kernels).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Mapping
from pathlib import Path

# A plain directory, not a package: on PYTHONPATH it holds only `sitecustomize`.
SEED_PATH: Path = Path(__file__).resolve().parent / "pyseed_path"


def seeded_env(env: Mapping[str, str], seed: int, *, deterministic: bool = True) -> dict[str, str]:
    """A copy of ``env`` for a command whose Python processes are seeded with ``seed``.

    :data:`SEED_PATH` goes first on PYTHONPATH (the existing entries are kept, in order, after
    it; a copy of SEED_PATH among them is dropped), ``EXPFLOW_SEED=<seed>``,
    ``PYTHONHASHSEED=<seed mod 2**32>`` unless ``env`` already sets PYTHONHASHSEED (Python
    refuses values beyond 32 bits at start-up), ``EXPFLOW_DETERMINISTIC=1``/``0`` and, when
    ``deterministic``, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (deterministic cuBLAS GEMMs)
    unless already set.
    """
    seed = operator.index(seed)  # an int (or int-like); not a float or a string
    out = dict(env)
    mine = str(SEED_PATH)
    existing = out.get("PYTHONPATH", "")
    # An empty PYTHONPATH has no entries: joining it would add an empty entry, which Python
    # reads as the current directory. Empty entries a user wrote in a real list are kept.
    kept = [p for p in existing.split(os.pathsep) if p != mine] if existing else []
    out["PYTHONPATH"] = os.pathsep.join([mine, *kept])
    out["EXPFLOW_SEED"] = str(seed)
    out.setdefault("PYTHONHASHSEED", str(seed % 2**32))
    out["EXPFLOW_DETERMINISTIC"] = "1" if deterministic else "0"
    if deterministic:
        out.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return out
