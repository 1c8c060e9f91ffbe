"""What an analysis script gets (:class:`AnalysisContext`) and what it returns
(:class:`AnalysisOutput`).

The context builds the expensive parts on first use: a script that only reads the metric
records (learning curves) never instantiates the model, and works on a package that has
no checkpoint yet.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expflow.errors import ExpflowError
from expflow.package import CheckpointInfo, SavePackage, effective_metrics

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader

    from expflow.data import DataModule
    from expflow.tasks import Task


class AnalysisError(ExpflowError):
    """An analysis script is unknown, cannot run on the package, or failed."""


class NotApplicable(AnalysisError):
    """A script that does not apply to this kind of run (accuracy of a regression): raised by
    ``analyze(ctx)``, it is recorded as such rather than failing, so a workflow can apply its
    scripts to every run of a mixed sweep."""


@dataclass
class AnalysisOutput:
    """What ``analyze(ctx)`` may return: JSON-able results and figures by name.

    A figure is a matplotlib ``Figure`` (saved as ``<name>.png``) or PNG bytes. A script
    may also return a plain dict: results without figures.
    """

    results: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


class AnalysisContext:
    """The package, its config, and (built on first use) data, model and checkpoint.

    ``model`` is in eval mode on ``device`` with the chosen checkpoint's weights (the
    latest unless ``--checkpoint STEP``). Files a script writes to ``out_dir`` land in
    ``<package>/analysis/<script>/`` with its results.
    """

    def __init__(self, package: SavePackage, *, script: str, out_dir: Path, checkpoint_step: int | None = None):
        self.package = package
        self.config = package.config()
        self.script = script
        self.out_dir = out_dir
        self._requested_step = checkpoint_step
        self._loaded: CheckpointInfo | None = None

    @cached_property
    def device(self) -> torch.device:
        """The leased GPU (``CUDA_VISIBLE_DEVICES``), else the CPU. Resolved before any data
        or model is built, together with the run's seed and torch's thread count; a script
        that only reads records never imports torch."""
        import torch

        from expflow.gpu import resolve_device
        from expflow.seeding import seed_everything

        cfg = self.config
        if cfg.trainer.threads:
            torch.set_num_threads(int(cfg.trainer.threads))
        # Seeded, but without torch's deterministic-algorithms switch: inference needs no
        # reproducible backward passes, and the switch alone costs seconds of imports.
        seed_everything(int(cfg.seed), deterministic=False)
        leased = 1 if os.environ.get("CUDA_VISIBLE_DEVICES") else 0
        return resolve_device(str(cfg.trainer.device), leased, bool(cfg.gpu.allow_cpu))

    # -- package paths ----------------------------------------------------------
    @property
    def package_dir(self) -> Path:
        return self.package.path

    @property
    def run_id(self) -> str:
        return self.package.run_id

    # -- metric records ----------------------------------------------------------
    @cached_property
    def records(self) -> list[dict[str, Any]]:
        """The effective metric records (rolled-back ones dropped), in order."""
        return effective_metrics(self.package.scan_records().records)

    def series(self) -> dict[str, list[tuple[int, float]]]:
        from expflow.analysis.metrics import metric_series

        return metric_series(self.records)

    # -- data ---------------------------------------------------------------------
    @cached_property
    def data(self) -> DataModule:
        from hydra.utils import instantiate

        from expflow.runner import is_command

        if is_command(self.config) or self.config.get("dataset") is None:
            raise NotApplicable("the run's data belongs to its program (a command run, or a runner without "
                                "`dataset`): scripts that read the records, such as learning_curves, apply")
        self.device  # noqa: B018 (seeds first: a dataset may draw random numbers)
        return instantiate(self.config.dataset)

    @property
    def task(self) -> Task:
        return self.data.task

    @cached_property
    def val_loader(self) -> DataLoader:
        from expflow.data import Shard, val_loader

        if not hasattr(self.data, "val_set"):
            raise NotApplicable(f"the dataset ({type(self.data).__name__}) has no val_set of (input, target) samples")
        return val_loader(self.data, Shard())

    @cached_property
    def train_loader(self) -> DataLoader:
        """The training set in order (no shuffling): analysis wants stable indices."""
        from torch.utils.data import DataLoader

        return DataLoader(self.data.train_set, batch_size=self.data.batch_size, shuffle=False)

    # -- model and checkpoints ---------------------------------------------------------
    @cached_property
    def checkpoints(self) -> list[CheckpointInfo]:
        """The package's retained checkpoints, by step."""
        return sorted(self.package.checkpoints().list(), key=lambda c: c.step)

    @property
    def checkpoint(self) -> CheckpointInfo:
        """The checkpoint whose weights the model holds (loads the model if needed)."""
        self.model  # noqa: B018 (builds the model and loads the chosen checkpoint)
        assert self._loaded is not None
        return self._loaded

    @property
    def used_device(self) -> str | None:
        """The device, or None when the script never needed one (records only)."""
        return str(self.__dict__["device"]) if "device" in self.__dict__ else None

    @property
    def loaded_checkpoint(self) -> CheckpointInfo | None:
        """The checkpoint in ``model``, or None when the script never used the model."""
        return self._loaded

    @cached_property
    def model(self) -> torch.nn.Module:
        from hydra.utils import instantiate

        from expflow.runner import is_command

        if is_command(self.config):
            raise NotApplicable("a command run's model belongs to its program; expflow cannot load it "
                                "(scripts that read the records, such as learning_curves, apply)")
        if self.config.get("model") is None:
            raise NotApplicable("the run's config has no model to load")
        model = instantiate(self.config.model).to(self.device)
        model.eval()
        self._load_into(model, self._requested_step)
        return model

    def load_checkpoint(self, which: CheckpointInfo | int | None = None) -> CheckpointInfo:
        """Put another checkpoint's weights into ``model`` (a step, an info, or the latest)."""
        step = which.step if isinstance(which, CheckpointInfo) else which
        if "model" not in self.__dict__:
            self._requested_step = step
            return self.checkpoint
        return self._load_into(self.model, step)

    def _load_into(self, model: torch.nn.Module, step: int | None) -> CheckpointInfo:
        store = self.package.checkpoints()
        info = store.find(step)
        state = store.load(info, map_location=self.device)
        from expflow.errors import CheckpointError
        from expflow.loop import model_state

        try:
            model.load_state_dict(model_state(state))
        except CheckpointError as e:
            raise NotApplicable(f"{store.dir / info.file}: {e.one_line()}") from None
        model.eval()
        self._loaded = info
        return info

    # -- evaluation -------------------------------------------------------------------
    def outputs(self, loader: DataLoader | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(model output, target) per batch of ``loader`` (default: the validation set)."""
        import torch

        from expflow.data import to_device

        with torch.no_grad():
            for batch in loader if loader is not None else self.val_loader:
                if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                    raise NotApplicable(f"the data's batches are {type(batch).__name__}s, not (input, target) "
                                        "pairs: write an analysis for this runner")
                x, y = to_device(batch, self.device)  # type: ignore[misc]
                yield self.model(x), y

    def predict(self, loader: DataLoader | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All outputs and targets over ``loader`` (default: the validation set), on CPU."""
        import torch

        pairs = [(out.cpu(), y.cpu()) for out, y in self.outputs(loader)]
        return torch.cat([o for o, _ in pairs]), torch.cat([y for _, y in pairs])

    def evaluate(self, loader: DataLoader | None = None, prefix: str = "val/") -> dict[str, float]:
        """The task's metrics over ``loader``, summed per batch in float64 and averaged per
        sample exactly as the trainer's validation does (so they match the records)."""
        from expflow.tasks import MetricAverage

        average = MetricAverage(self.task)
        for out, y in self.outputs(loader):
            average.add(out, y)
        return average.means(prefix)
