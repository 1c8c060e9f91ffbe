"""Inside a search trial's run: report the objective to its Optuna trial as the run records
it, and ask the study's pruner whether to stop.

The trial slot (:mod:`expflow.search.slot`) names the trial in the ``EXPFLOW_TRIAL``
environment variable; the run's rank 0 (a Python runner's loop, or a command run's
supervisor, which sees every record the program writes) builds a :class:`TrialReport` from
it. Every recorded value of the objective metric is reported at its step; once the pruner
says stop, ``pruned`` is set: the loop ends after that epoch's checkpoint, a command is
stopped, and the package ends PRUNED with its checkpoints and records. Outside a search
nothing here is imported (no Optuna import in a plain run).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any

TRIAL_ENV = "EXPFLOW_TRIAL"


class TrialReport:
    def __init__(self, info: dict[str, Any]):
        self.info = info
        self.objective = str(info["objective"])
        self.pruned = False
        self.pruned_at: int | None = None
        self.last: float | None = None
        self.unreachable = False
        self._trial: Any = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> TrialReport | None:
        environ = os.environ if environ is None else environ
        text = environ.get(TRIAL_ENV)
        if not text:
            return None
        try:
            info = json.loads(text)
            if not isinstance(info, dict) or not {"storage", "study", "trial_id", "objective"} <= set(info):
                raise ValueError("missing keys")
        except ValueError as e:
            from expflow.errors import ConfigError

            raise ConfigError(f"{TRIAL_ENV}: not a trial description from an expflow search slot ({e})") from None
        return cls(info)

    def observe(self, values: dict[str, Any], step: int) -> bool:
        """Report the objective if ``values`` has it; True once the trial is to stop."""
        if self.pruned or self.unreachable or self.objective not in values:
            return self.pruned
        try:
            value = float(values[self.objective])
        except (TypeError, ValueError):
            return False
        if not math.isfinite(value):
            return False
        self.last = value
        try:
            trial = self._open()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a step reported again after a continue: Optuna keeps the first
                trial.report(value, int(step))
                if trial.should_prune():
                    self.pruned, self.pruned_at = True, int(step)
        except Exception as e:  # the study unreachable or damaged: the run trains on, unpruned
            import sys

            print(f"expflow: warning: search study {self.info['study']!r} ({self.info['storage']}): cannot report "
                  f"{self.objective} ({type(e).__name__}: {e}); this run is no longer pruned", file=sys.stderr,
                  flush=True)
            self.unreachable = True  # one warning; nothing more is tried
        return self.pruned

    def record(self) -> dict[str, Any]:
        """What the package's manifest keeps about the pruning."""
        return {"study": self.info["study"], "trial": self.info.get("number"), "objective": self.objective,
                "step": self.pruned_at, "value": self.last}

    def _open(self) -> Any:
        if self._trial is None:
            import optuna

            from expflow.search.study import build_pruner, journal_storage

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.load_study(study_name=str(self.info["study"]), storage=journal_storage(self.info["storage"]),
                                      pruner=build_pruner(self.info.get("pruner")))
            self._trial = optuna.trial.Trial(study, int(self.info["trial_id"]))
        return self._trial
