"""MLflow tracker, and the run lookup it shares with ``expflow sync --target mlflow``.

A package's MLflow run is tagged ``expflow.run_id=<run id>``: the tracker (while
training) and the sync (afterwards) find the same run. ``tracking_uri`` null means
``$MLFLOW_TRACKING_URI``, or else a SQLite store inside the package
(``tracker/mlflow.db``: ``mlflow ui --backend-store-uri sqlite:///runs/<id>/tracker/mlflow.db``).
Metrics go through MLflow's asynchronous ``log_batch``: the training thread never waits
for the server. ``mlflow`` is imported when the tracker starts, on rank 0 only.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from expflow.tracking.modes import MODES as _MODES
from expflow.tracking.modes import check_mode

MODES = _MODES["MLflow"]
RUN_ID_TAG = "expflow.run_id"
GENERATION_TAG = "expflow.generation"
# Set on a run a live tracker writes to: its points carry the tracker's own timestamps, so
# a sync compares with what the server holds instead of trusting its own state alone.
LIVE_TAG = "expflow.live"
_TERMINAL = {"COMPLETED": "FINISHED", "CRASHED": "FAILED", "PRUNED": "FINISHED"}
# Params: MLflow keeps at most this many characters of a value.
PARAM_VALUE_LIMIT = 6000


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": "0.1"}`` (lists as their repr)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, name + "."))
        else:
            out[name] = str(value)[:PARAM_VALUE_LIMIT]
    return out


def experiment_id(client: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of the MLflow experiment ``name``, created if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def package_runs(client: Any, exp_id: str, run_id: str) -> list[Any]:
    """The active MLflow runs of package ``run_id``, newest generation first."""
    runs = client.search_runs([exp_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=100)
    return sorted(runs, key=lambda r: int(r.data.tags.get(GENERATION_TAG, 0)), reverse=True)


def create_package_run(client: Any, exp_id: str, run_id: str, name: str | None, generation: int,
                       extra_tags: dict[str, str] | None = None) -> Any:
    tags = {RUN_ID_TAG: run_id, GENERATION_TAG: str(generation), **(extra_tags or {})}
    return client.create_run(exp_id, run_name=name or run_id, tags=tags)


def package_tracking_uri(uri: str | None, run_dir: str | Path | None) -> tuple[str, str | None]:
    """The tracking URI, and for a store in the package, where its artifacts go (else MLflow's
    default, ``./mlruns`` of the working directory, would collect them)."""
    if uri:
        return uri, None
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], None
    directory = (Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="expflow-mlflow-"))).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'mlflow.db'}", (directory / "mlartifacts").as_uri()


class MlflowTracker:
    def __init__(
        self,
        project: str | None = "expflow",
        mode: str = "online",
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_dir: str | Path | None = None,
        run_id: str | None = None,
    ):
        check_mode("MLflow", mode)
        self.project, self.mode, self.tracking_uri = project, mode, tracking_uri
        self.experiment_name, self.run_dir = experiment_name, run_dir
        self.package_run_id = run_id or "unpackaged"
        self._client: Any = None
        self._run_id: str | None = None

    def _start(self, config: dict[str, Any] | None) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        uri, artifacts = package_tracking_uri(self.tracking_uri, self.run_dir)
        client = MlflowClient(uri)
        exp_id = experiment_id(client, str(self.project), artifacts)
        runs = package_runs(client, exp_id, self.package_run_id)
        if runs:
            run = runs[0]
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            client.set_tag(run.info.run_id, LIVE_TAG, "1")
        else:
            run = create_package_run(client, exp_id, self.package_run_id, self.experiment_name, 0,
                                     {LIVE_TAG: "1"})
        self._client, self._run_id = client, run.info.run_id
        if config:
            from mlflow.entities import Param

            have = run.data.params
            params = [Param(k, v) for k, v in flatten_params(config).items() if k not in have]
            if params:
                client.log_batch(self._run_id, params=params)
            client.log_dict(self._run_id, config, "config.yaml")

    def log_config(self, config: dict[str, Any]) -> None:
        if self.mode != "disabled" and self._client is None:
            self._start(config)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.mode == "disabled":
            return
        if self._client is None:
            self._start(None)
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        self._client.log_batch(self._run_id, metrics=batch, synchronous=False)

    def finish(self, status: str = "COMPLETED") -> None:
        if self._client is None:
            return
        # This client's store, not mlflow.flush_async_logging(): that one would open the
        # default store (./mlflow.db in the working directory).
        self._client._tracking_client.store.flush_async_logging()
        if status in _TERMINAL:
            self._client.set_terminated(self._run_id, _TERMINAL[status])
        self._client = None
