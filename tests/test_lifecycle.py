"""The lifecycle decides and hooks; user code replaces it through `_target_`."""

from __future__ import annotations

from expflow.launch import train
from expflow.lifecycle import SKIP, Lifecycle
from expflow.package import Status, effective_metrics

from .conftest import small_overrides


class EvenEpochs(Lifecycle):
    """Validates on even epochs only (a before-hook skips the rest) and holds epoch 2."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls: list[str] = []

    def before_validation(self, state):
        return SKIP if state.epoch % 2 else None

    def hold_checkpoint(self, state):
        return state.epoch == 2


class SkipRun(Lifecycle):
    def before_run(self, state):
        return SKIP


def epochs_with(pkg, key):
    return [r["epoch"] for r in effective_metrics(pkg.scan_records().records) if key in r["values"]]


def test_user_lifecycle_skips_phases_and_holds(compose, runs):
    cfg = compose(small_overrides(runs, "trainer.max_epochs=4", "trainer.progress=none",
                                  "lifecycle._target_=tests.test_lifecycle.EvenEpochs",
                                  "checkpoint.fast_keep=1", "checkpoint.slow_every=0"))
    result = train(cfg)
    pkg = result.package
    assert result.status is Status.COMPLETED
    assert epochs_with(pkg, "val/acc") == [2, 4]
    assert epochs_with(pkg, "train/epoch_loss") == [1, 2, 3, 4]
    tracks = {c.epoch: c.tracks for c in pkg.checkpoints().list()}
    assert tracks == {2: ("persistent",), 4: ("fast",)}


def test_before_run_skip_trains_nothing(compose, runs):
    cfg = compose(small_overrides(runs, "trainer.progress=none", "lifecycle._target_=tests.test_lifecycle.SkipRun"))
    result = train(cfg)
    assert result.status is Status.COMPLETED
    assert result.package.manifest()["progress"]["step"] == 0
    assert effective_metrics(result.package.scan_records().records) == []


def test_default_lifecycle_holds_best(compose, runs):
    cfg = compose(small_overrides(runs, "trainer.max_epochs=3", "trainer.progress=none",
                                  "checkpoint.fast_keep=1", "checkpoint.slow_every=0"))
    pkg = train(cfg).package
    accs = {r["epoch"]: r["values"]["val/acc"] for r in effective_metrics(pkg.scan_records().records)
            if "val/acc" in r["values"]}
    best = max(accs, key=lambda e: (accs[e], -e))
    held = [c.epoch for c in pkg.checkpoints().list() if "persistent" in c.tracks]
    assert held == [best]
