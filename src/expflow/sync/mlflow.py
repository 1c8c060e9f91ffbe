"""Sync target: an MLflow tracking server.

The package's run is found by its tag ``expflow.run_id`` (or created), then gets the
package's params (the flattened config), ``config.yaml``, its metrics through
``log_batch`` (1,000 values a request, the state saved after each acknowledged batch),
chosen artifacts and its final status.

Exactly once: metric timestamps are the records' own, and MLflow drops a point identical
to one it holds (same key, step, timestamp, value), so a batch re-sent after an
interruption adds nothing. MLflow cannot delete metric points: when a ``continue`` rolled
back steps that are already on the server, the sync writes the package's metrics into a
new run (next ``expflow.generation``) and deletes the old one once the new one is complete.
A run a live tracker wrote to, or one whose sync state was lost, is compared with what the
server holds first.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
from pathlib import Path
from typing import Any

from expflow.errors import SyncDeferred, SyncError
from expflow.package.manifest import MANIFEST
from expflow.package.records import same_value
from expflow.sync.base import ID_CHOICES, SyncResult, check_reachable, is_network_error
from expflow.sync.plan import PackageRecords, Pending, pending
from expflow.sync.state import SyncState
from expflow.tracking.mlflow import (
    GENERATION_TAG,
    LIVE_TAG,
    create_package_run,
    experiment_id,
    flatten_params,
    package_runs,
)

_FINAL = {"COMPLETED": "FINISHED", "CRASHED": "FAILED", "PRUNED": "FINISHED"}
_MAX_FLOAT = 1.7976931348623157e308  # MLflow stores +-inf as the largest finite float
DEFAULT_ARTIFACTS = (MANIFEST,)


def mlflow_value(value: float) -> float:
    if math.isinf(value):
        return _MAX_FLOAT if value > 0 else -_MAX_FLOAT
    return value


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class MlflowTarget:
    name = "mlflow"
    BATCH = 1000  # values per log_batch request (MLflow's own limit)

    def __init__(self, uri: str | None = None, project: str | None = None,
                 artifacts: tuple[str, ...] = (), timeout: float = 120.0):
        self.uri, self.project, self.artifacts, self.timeout = uri, project, artifacts, timeout
        # Fail fast and defer rather than retry for minutes (MLflow's default is 7 retries).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout)))
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    # -- where to --------------------------------------------------------------------
    def destination(self, pkg: Any) -> tuple[str, str]:
        from expflow.tracking.validate import tracker_nodes

        node = next((t for _, kind, t in tracker_nodes(pkg.config().get("tracker")) if kind == "MLflow"), {})
        uri = self.uri or node.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise SyncDeferred("no MLflow tracking server: pass --uri http://HOST:PORT or set MLFLOW_TRACKING_URI")
        return str(uri), str(self.project or node.get("project") or "expflow")

    # -- one package -------------------------------------------------------------------
    def sync(self, pkg: Any, experiment: str, strict: bool) -> SyncResult:
        uri, project = self.destination(pkg)
        records = PackageRecords.read(pkg, strict=strict)
        with SyncState.locked(pkg.tracker_dir, self.name, f"{uri}#{project}", self.timeout) as state:
            check_reachable(uri)
            from mlflow import MlflowClient
            from mlflow.exceptions import MlflowException

            client = MlflowClient(uri)
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # MLflow's "View run at ..." lines
                    uploaded = _PackageSync(self, client, pkg, records, state, project).run(experiment)
            except MlflowException as e:
                raise self._explain(e, uri) from None
            except OSError as e:
                if is_network_error(e):
                    raise SyncDeferred(f"lost the connection to {uri} ({e.__class__.__name__})") from None
                raise
        where = f"mlflow {uri} (experiment {project}, run {state.experiment})"
        notes = "; ".join(x for x in (uploaded.note, records.problems_line()) if x)
        outcome = "synced" if uploaded.changed else "up to date"
        count = (f"{uploaded.records} records ({uploaded.points} values)" if uploaded.records
                 else "config, artifacts and status" if uploaded.changed else "")
        message = ", ".join(x for x in (f"to {where}" if uploaded.changed else f"on {where}", count) if x)
        return SyncResult(str(pkg.path), outcome, message + (f"; {notes}" if notes else ""),
                          uploaded.records, uploaded.points, len(records.problems))

    @staticmethod
    def _explain(error: Exception, uri: str) -> Exception:
        text = " ".join(str(error).split())
        if is_network_error(error):
            return SyncDeferred(f"lost the connection to {uri} ({text[:200]})")
        code = str(getattr(error, "error_code", ""))
        if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or " 401" in text or " 403" in text:
            if not any(os.environ.get(v) for v in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME")):
                return SyncDeferred(f"{uri} wants credentials: set MLFLOW_TRACKING_TOKEN or "
                                    "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD")
            return SyncError(f"{uri} rejected the credentials ({code or text[:200]})")
        return SyncError(f"MLflow at {uri}: {text[:300]}")


class _Uploaded:
    def __init__(self) -> None:
        self.records = self.points = 0
        self.changed = False
        self.note = ""


class _PackageSync:
    """One package to one MLflow destination (under the state's lock)."""

    def __init__(self, target: MlflowTarget, client: Any, pkg: Any, records: PackageRecords,
                 state: SyncState, project: str):
        self.target, self.client, self.pkg, self.records, self.state = target, client, pkg, records, state
        self.project = project
        self.out = _Uploaded()
        self.explicit = False  # --id <run id>: that run is never replaced

    def run(self, experiment: str) -> _Uploaded:
        self.explicit = experiment not in ID_CHOICES
        exp_id = experiment_id(self.client, self.project)
        run, compare = self._choose_run(exp_id, experiment)
        if not self.state.matches(self.pkg.records_path):  # the records file was replaced
            self.state.start_experiment(run.info.run_id, self.state.generation)
            compare = True
        if compare or run.data.tags.get(LIVE_TAG) == "1":
            self._reconcile(exp_id, run)
        else:
            plan = pending(self.records, self.state)
            if plan.rewind:
                self._replace(exp_id, run, "a continue rolled back steps already on the server")
            else:
                self._upload(plan)
        self._finish()
        return self.out

    # -- which run ---------------------------------------------------------------------
    def _choose_run(self, exp_id: str, experiment: str) -> tuple[Any, bool]:
        """The run to sync into, and whether it may hold points the state does not know of."""
        from mlflow.exceptions import MlflowException

        client, state, run_id = self.client, self.state, self.pkg.run_id
        if experiment not in ID_CHOICES:
            try:
                run = client.get_run(experiment)
            except MlflowException:
                raise SyncError(f"--id {experiment}: no such MLflow run on this server") from None
            if run.info.lifecycle_stage == "deleted":
                raise SyncError(f"--id {experiment}: that MLflow run is deleted")
            if state.experiment == experiment:
                return run, False
            state.start_experiment(experiment, int(run.data.tags.get(GENERATION_TAG, 0)))
            return run, True
        if state.experiment:
            try:
                run = client.get_run(state.experiment)
                if run.info.lifecycle_stage == "active":
                    return run, False
            except MlflowException:
                pass  # deleted on the server: start again below
        runs = package_runs(client, exp_id, run_id)
        if experiment == "auto" and runs:
            run = runs[0]
            state.start_experiment(run.info.run_id, int(run.data.tags.get(GENERATION_TAG, 0)))
            return run, True
        generation = int(runs[0].data.tags.get(GENERATION_TAG, 0)) + 1 if runs else 0
        run = create_package_run(client, exp_id, run_id, self._run_name(), generation)
        state.start_experiment(run.info.run_id, generation)
        state.save()
        return run, False

    def _run_name(self) -> str:
        tracker = self.pkg.config().get("tracker") or {}
        return str(tracker.get("experiment_name") or self.pkg.run_id)

    # -- metrics -------------------------------------------------------------------------
    def _upload(self, plan: Pending) -> None:
        """Send ``plan``'s records in order; the state advances after each acknowledged batch."""
        from mlflow.entities import Metric

        path, state = self.pkg.records_path, self.state
        batch: list[Any] = []
        first = 0  # index of the first record in ``batch``

        def send(last: int) -> None:
            if batch:
                self.client.log_batch(state.experiment, metrics=batch)
            sent = plan.records[first:last + 1]
            n_points = sum(len(r["values"]) for _, r in sent)
            state.advance(path, plan.watermark_after(last), len(sent), n_points,
                          max((r["step"] for _, r in sent), default=-1))
            state.save()
            self.out.records += len(sent)
            self.out.points += n_points
            self.out.changed = True

        for i, (_, rec) in enumerate(plan.records):
            ts, step = int(rec["time"] * 1000), int(rec["step"])
            metrics = [Metric(name, mlflow_value(v), ts, step) for name, v in rec["values"].items()]
            if batch and len(batch) + len(metrics) > self.target.BATCH:
                send(i - 1)
                batch, first = [], i
            batch.extend(metrics)
        if plan.records:
            send(len(plan.records) - 1)
        elif plan.end != state.watermark:  # only invalid or superseded lines were added
            state.advance(path, plan.end, 0, 0, -1)
            state.save()

    def _server_points(self, run: Any) -> dict[tuple[str, int], list[float]]:
        held: dict[tuple[str, int], list[float]] = {}
        for key in run.data.metrics:
            for m in self.client.get_metric_history(run.info.run_id, key):
                held.setdefault((key, int(m.step)), []).append(float(m.value))
        return held

    def _reconcile(self, exp_id: str, run: Any) -> None:
        """Compare with what the run holds: upload what is missing, or replace the run when it
        holds a point the package does not (a rolled-back or changed step, a duplicate)."""
        held = self._server_points(run)
        want = {(name, int(r["step"])): mlflow_value(v) for _, r in self.records.effective
                for name, v in r["values"].items()}
        stale = [k for k, vs in held.items() if len(vs) > 1 or k not in want or not same_value(vs[0], want[k])]
        if stale:
            self._replace(exp_id, run, f"the run held {len(stale)} point(s) the package does not")
            return
        missing = []
        for off, r in self.records.effective:
            values = {n: v for n, v in r["values"].items() if (n, int(r["step"])) not in held}
            if values:
                missing.append((off, {**r, "values": values}))
        self.state.watermark, self.state.tail, self.state.max_step = 0, "", max(
            (s for _, s in held), default=-1)
        self._upload(Pending(missing, self.records.end, rewind=False))
        if not missing:
            self.state.advance(self.pkg.records_path, self.records.end, 0, 0, -1)
            self.state.save()

    def _replace(self, exp_id: str, old: Any, why: str) -> None:
        """Write every metric into a new run of the next generation; delete ``old`` once done."""
        if self.explicit:
            raise SyncError(f"run {old.info.run_id}: {why}, and MLflow cannot delete points; "
                            "sync with --id auto to write the package into a corrected run")
        state = self.state
        generation = max(state.generation, int(old.data.tags.get(GENERATION_TAG, 0))) + 1
        new = create_package_run(self.client, exp_id, self.pkg.run_id, old.info.run_name or self._run_name(),
                                 generation)
        state.start_experiment(new.info.run_id, generation)
        state.replacing = old.info.run_id
        state.save()
        self._upload(pending(self.records, state))
        self.out.note = f"replaced run {old.info.run_id} ({why})"

    # -- params, artifacts, status -------------------------------------------------------
    def _finish(self) -> None:
        from mlflow.entities import Param

        client, state, pkg = self.client, self.state, self.pkg
        run_id = state.experiment
        if state.replacing:
            try:
                client.delete_run(state.replacing)
            except Exception:  # already gone
                pass
            state.replacing = None
            state.save()
        if not state.profile:
            config = pkg.config()
            from omegaconf import OmegaConf

            plain = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
            held = client.get_run(run_id).data.params
            params = [Param(k, v) for k, v in flatten_params(plain).items() if k not in held]  # type: ignore[arg-type]
            if params:
                client.log_batch(run_id, params=params)
            client.log_artifact(run_id, str(pkg.config_path))
            manifest = pkg.manifest()
            client.set_tag(run_id, "expflow.fingerprint", str(manifest.get("fingerprint")))
            state.profile = True
            state.save()
            self.out.changed = True
        for rel in self._artifact_files():
            digest = _sha256(pkg.path / rel)
            if state.artifacts.get(rel) != digest:
                parent = str(Path(rel).parent)
                client.log_artifact(run_id, str(pkg.path / rel), None if parent == "." else parent)
                state.artifacts[rel] = digest
                state.save()
                self.out.changed = True
        final = _FINAL.get(pkg.status().value)
        if final != state.finished:
            if final:
                client.set_terminated(run_id, final)
            else:  # continued after it finished: running again
                client.update_run(run_id, status="RUNNING")
            state.finished = final
            state.save()
            self.out.changed = True

    def _artifact_files(self) -> list[str]:
        root = self.pkg.path
        chosen: list[str] = []
        for pattern in (*DEFAULT_ARTIFACTS, *self.target.artifacts):
            matches = sorted(p for p in root.glob(pattern) if p.is_file())
            if not matches and pattern not in DEFAULT_ARTIFACTS:
                raise SyncError(f"--artifact {pattern!r}: no file of {root} matches")
            chosen += [str(p.relative_to(root)) for p in matches if str(p.relative_to(root)) not in chosen]
        return chosen
