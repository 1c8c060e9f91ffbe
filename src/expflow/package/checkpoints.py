"""Checkpoints with DLNest's three retention tracks.

- fast: the latest ``fast_keep`` checkpoints;
- slow: every ``slow_every``-th checkpoint (by save number), the latest ``slow_keep`` of them;
- persistent: those the lifecycle asked to hold (the latest ``persistent_keep``, or all).

A checkpoint written when a run stops on a signal, mid-epoch, is *interim*: it holds the
number of the next regular checkpoint, in the fast track alone, until that checkpoint
replaces it; so a run stopped and continued keeps exactly the tracks of one that never
stopped.

A checkpoint file is deleted only when every track has dropped it. The index
(``checkpoints/index.json``) is replaced atomically after the checkpoint file is
durable, so a run killed at any moment leaves an index whose every entry is complete.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expflow.atomic import atomic_write, atomic_write_json, remove_stale_temps
from expflow.errors import CheckpointError
from expflow.package.retention import RetentionPolicy
from expflow.package.shapes import CHECKPOINT_INDEX, read_json

TRACKS = ("fast", "slow", "persistent")
_FILE_RE = re.compile(r"^step-(\d+)\.pt$")


@dataclass(frozen=True)
class CheckpointInfo:
    number: int  # 1-based save ordinal within the run's history
    step: int
    epoch: int
    file: str
    sha256: str
    time: float
    tracks: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "step": self.step,
            "epoch": self.epoch,
            "file": self.file,
            "sha256": self.sha256,
            "time": self.time,
            "tracks": list(self.tracks),
        }


def _empty_index() -> dict[str, Any]:
    return {"format": 1, "next_number": 1, "checkpoints": {}, "tracks": {t: [] for t in TRACKS}}


class CheckpointStore:
    """The ``checkpoints/`` directory of a package."""

    def __init__(self, directory: str | os.PathLike[str], policy: RetentionPolicy | None = None):
        self.dir = Path(directory)
        self.policy = policy or RetentionPolicy()
        self.index_path = self.dir / "index.json"

    # -- reading ---------------------------------------------------------------
    def _load_index(self) -> dict[str, Any]:
        """The index, checked against its shape (every reader and writer goes through here)."""
        index: dict[str, Any] = read_json(self.index_path, CHECKPOINT_INDEX, "checkpoint index",
                                          error=CheckpointError, missing=None)
        if index is None:
            return _empty_index()
        # an interim checkpoint takes the next regular one's number (next_number itself)
        top = max((int(k) for k, c in index["checkpoints"].items() if not c.get("interim")), default=0)
        if index["next_number"] <= top:
            raise CheckpointError(f"{self.index_path}: invalid checkpoint index: key 'next_number': expected more than "
                                  f"every checkpoint number (up to {top}), got {index['next_number']}")
        return index

    def list(self) -> list[CheckpointInfo]:
        index = self._load_index()
        out = []
        for key, c in sorted(index["checkpoints"].items(), key=lambda kv: int(kv[0])):
            number = int(key)
            tracks = tuple(t for t in TRACKS if number in index["tracks"].get(t, []))
            out.append(
                CheckpointInfo(number, c["step"], c["epoch"], c["file"], c["sha256"], c["time"], tracks)
            )
        return out

    def latest(self) -> CheckpointInfo | None:
        cps = self.list()
        return max(cps, key=lambda c: c.step) if cps else None

    def find(self, step: int | None) -> CheckpointInfo:
        """The checkpoint at ``step``, or the latest when ``step`` is None."""
        cps = self.list()
        if not cps:
            raise CheckpointError(f"{self.dir}: the package has no checkpoint")
        if step is None:
            return max(cps, key=lambda c: c.step)
        for c in cps:
            if c.step == step:
                return c
        valid = ", ".join(str(c.step) for c in cps)
        raise CheckpointError(f"{self.dir}: no checkpoint at step {step}; valid steps: {valid}")

    def load(self, info: CheckpointInfo, map_location: Any = "cpu") -> dict[str, Any]:
        import torch

        path = self.dir / info.file
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror})") from None
        if hashlib.sha256(data).hexdigest() != info.sha256:
            raise CheckpointError(f"{path}: corrupt checkpoint (checksum mismatch)")
        try:
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
        except Exception as e:  # torch raises many types for a bad file
            raise CheckpointError(f"{path}: corrupt checkpoint ({e.__class__.__name__})") from None
        if not isinstance(state, dict) or not ("runner" in state or "model" in state):
            raise CheckpointError(f"{path}: not an expflow checkpoint (no runner or model state)")
        return state

    # -- writing ---------------------------------------------------------------
    def save(self, state: dict[str, Any], step: int, epoch: int, hold: bool = False,
             interim: bool = False) -> CheckpointInfo:
        """Write a checkpoint durably, enter it in the tracks, and delete what every track
        dropped. ``interim``: a stop's checkpoint (see the module's doc)."""
        import torch

        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir)
        index = self._load_index()
        number = int(index["next_number"])
        fname = f"step-{step:08d}.pt"
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        atomic_write(self.dir / fname, lambda f: f.write(data))
        index["checkpoints"][str(number)] = {
            "step": int(step),
            "epoch": int(epoch),
            "file": fname,
            "sha256": hashlib.sha256(data).hexdigest(),
            "time": time.time(),
            **({"interim": True} if interim else {}),
        }
        for t in TRACKS:  # an interim checkpoint of this number, replaced (or a second interim)
            index["tracks"][t] = [n for n in index["tracks"][t] if n != number]
        if interim:
            index["tracks"]["fast"].append(number)  # kept whatever fast_keep, dropping nothing
        else:
            index["next_number"] = number + 1
            self._enter_tracks(index, number, hold)
        self._commit(index)
        for c in self.list():
            if c.number == number:
                return c
        entry = index["checkpoints"].get(str(number)) or {}
        # Every track declined it (e.g. fast_keep=0 and not held): already deleted.
        return CheckpointInfo(number, step, epoch, fname, entry.get("sha256", ""), time.time(), ())

    def _enter_tracks(self, index: dict[str, Any], number: int, hold: bool) -> None:
        p = self.policy
        tracks = index["tracks"]
        tracks["fast"] = (tracks["fast"] + [number])[-p.fast_keep :] if p.fast_keep else []
        if p.slow_every and number % p.slow_every == 0:
            tracks["slow"] = (tracks["slow"] + [number])[-p.slow_keep :] if p.slow_keep else []
        if hold:
            held = tracks["persistent"] + [number]
            if p.persistent_keep is not None:
                held = held[-p.persistent_keep :] if p.persistent_keep else []
            tracks["persistent"] = held

    def truncate_after(self, step: int) -> None:
        """Forget checkpoints later than ``step`` (a continue from an earlier checkpoint)."""
        index = self._load_index()
        keep = {k: c for k, c in index["checkpoints"].items() if c["step"] <= step}
        if len(keep) == len(index["checkpoints"]):
            return
        index["checkpoints"] = keep
        for t in TRACKS:
            index["tracks"][t] = [n for n in index["tracks"][t] if str(n) in keep]
        index["next_number"] = max((int(k) for k, c in keep.items() if not c.get("interim")), default=0) + 1
        self._commit(index)

    def _commit(self, index: dict[str, Any]) -> None:
        """Drop entries no track holds, write the index, then delete unreferenced files."""
        live = {n for t in TRACKS for n in index["tracks"][t]}
        index["checkpoints"] = {k: c for k, c in index["checkpoints"].items() if int(k) in live}
        atomic_write_json(self.index_path, index)
        referenced = {c["file"] for c in index["checkpoints"].values()}
        for p in self.dir.iterdir():
            if _FILE_RE.match(p.name) and p.name not in referenced:
                p.unlink(missing_ok=True)

    def files_on_disk(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if _FILE_RE.match(p.name))
