"""Sync target: SwanLab (the cloud, or a private deployment at ``--uri``).

What goes up is the package's records (the source of truth): each sync writes the
records not yet uploaded, with the experiment's start record (name, description, tags
from the package's SwanLab offline logs when it has them) and, the first time, its
config and metadata, into a SwanLab run file in a temporary directory, and replays it
through swanlab's own sync machinery. The package's own SwanLab offline directory is
only read: it may hold less than the records after a kill (SwanLab flushes at close).

``--id``: ``new`` creates an experiment (later syncs of the package continue it), ``auto``
(default) uses the id recorded in the package's SwanLab logs, or ``expflow-<run id>`` for a
package without them (resumed if it exists), any other value is an experiment that must
exist. After a ``continue`` rolled back uploaded steps, the resumed records are replayed
over the old ones (SwanLab keeps the last value written at a step); steps past the
resumed run's last one stay until overwritten, as SwanLab cannot delete points.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from expflow.errors import SyncDeferred
from expflow.sync.base import ID_CHOICES, SyncResult, check_reachable
from expflow.sync.plan import PackageRecords, pending, points
from expflow.sync.state import SyncState

DEFAULT_API_HOST = "https://api.swanlab.cn"
_FINAL = {"COMPLETED": "FINISHED", "CRASHED": "CRASHED", "PRUNED": "FINISHED"}


class SwanLabTarget:
    name = "swanlab"

    def __init__(self, uri: str | None = None, project: str | None = None, workspace: str | None = None,
                 timeout: float = 120.0):
        self.uri, self.project, self.workspace, self.timeout = uri, project, workspace, timeout

    def sync(self, pkg: Any, experiment: str, strict: bool) -> SyncResult:
        from expflow.sync import swanlab_sdk
        from expflow.tracking.swanlab import recorded_experiment_id
        from expflow.tracking.validate import tracker_nodes

        node = next((t for _, kind, t in tracker_nodes(pkg.config().get("tracker")) if kind == "SwanLab"), {})
        log_dir = pkg.tracker_dir / "swanlab"
        offline = swanlab_sdk.read_offline_runs(log_dir)
        start: dict[str, Any] = dict(offline[0].start) if offline else {}
        api_host = (self.uri or node.get("api_host") or os.environ.get("SWANLAB_API_HOST") or DEFAULT_API_HOST)
        web_host = node.get("web_host") if not self.uri or self.uri == node.get("api_host") else None
        project = str(self.project or node.get("project") or start.get("project") or "expflow")
        workspace = self.workspace or node.get("workspace") or start.get("workspace") or None
        records = PackageRecords.read(pkg, strict=strict)
        destination = f"{api_host.rstrip('/')}/{workspace or '~'}/{project}"
        with SyncState.locked(pkg.tracker_dir, self.name, destination, self.timeout) as state:
            if experiment == "new":
                target_id = state.experiment or _new_id()
            elif experiment == "auto":
                target_id = (recorded_experiment_id(log_dir) or start.get("id") or f"expflow-{pkg.run_id}")
            else:
                target_id = experiment
            if state.experiment != target_id or not state.matches(pkg.records_path):
                # Another experiment, or the records file was replaced: send everything. Saved
                # now, so an interrupted first sync with --id new is resumed, not duplicated.
                state.start_experiment(target_id)
                state.save()
            plan = pending(records, state)
            # Replay (overwrite steps the experiment holds) after a rollback of uploaded steps,
            # and on a first sync into an existing experiment of a package that rolled back: a
            # live tracker may have sent the replaced values there.
            replay = plan.rewind or (state.records == 0 and bool(records.rollbacks) and experiment != "new")
            final = _FINAL.get(pkg.status().value)
            where = f"swanlab {api_host} ({workspace + '/' if workspace else ''}{project}, experiment {target_id})"
            problems = records.problems_line()
            if not plan.records and state.profile and state.finished == final:
                if plan.end != state.watermark:
                    state.advance(pkg.records_path, plan.end, 0, 0, -1)
                    state.save()
                return SyncResult(str(pkg.path), "up to date", f"on {where}" + (f"; {problems}" if problems else ""),
                                  skipped=len(records.problems))
            api_key = _api_key(api_host)
            check_reachable(api_host)
            with tempfile.TemporaryDirectory(prefix="expflow-swanlab-sync-") as tmp:
                run_dir = Path(tmp) / f"run-{target_id}"
                saves = {} if state.profile else _profile_files(pkg, offline[0] if offline else None, run_dir)
                header = {**start, "id": target_id, "project": project, "workspace": workspace,
                          "name": node.get("experiment_name") or start.get("name") or pkg.run_id,
                          "description": node.get("description") or start.get("description"),
                          "tags": list(node.get("tags") or start.get("tags") or [])}
                swanlab_sdk.write_run(run_dir, header, saves,
                                      [(k, s, v, t) for k, s, v, t in points(plan.records)],
                                      final if final != state.finished else None)
                url = swanlab_sdk.upload_run(
                    run_dir, api_key=api_key, api_host=api_host, web_host=web_host, workspace=workspace,
                    project=project, experiment_id=target_id,
                    must_exist=experiment not in ID_CHOICES and state.records == 0 and not state.profile,
                    replay=replay, timeout=self.timeout)
            state.advance(pkg.records_path, plan.end, len(plan.records), plan.points, plan.max_step)
            state.profile, state.finished = True, final
            state.save()
        notes = "; ".join(x for x in (
            "replayed the steps a continue rolled back" if plan.rewind else "", problems) if x)
        message = f"to {where}, {len(plan.records)} records ({plan.points} values) {url}"
        return SyncResult(str(pkg.path), "synced", message + (f"; {notes}" if notes else ""),
                          len(plan.records), plan.points, len(records.problems))


def _new_id() -> str:
    from swanlab.utils.experiment import generate_id

    return generate_id()


def _api_key(api_host: str) -> str:
    from expflow.sync.swanlab_sdk import stored_api_key
    from expflow.tracking.secrets import find_api_key

    key = find_api_key("swanlab") or stored_api_key(api_host)
    if not key:
        raise SyncDeferred("no SwanLab API key: export SWANLAB_API_KEY, put it in secrets/swanlab_api_key "
                           "(ignored by git), or run `swanlab login`")
    return key


def _profile_files(pkg: Any, offline: Any, run_dir: Path) -> dict[str, Path]:
    """The config (and, from the offline logs, metadata and requirements) to upload once."""
    import shutil

    import yaml
    from omegaconf import OmegaConf

    from expflow.sync.swanlab_sdk import swanlab_config

    files_dir = run_dir / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(pkg.config(), resolve=True, enum_to_str=True)
    saves = {"config": files_dir / "config.yaml"}
    saves["config"].write_text(yaml.safe_dump(swanlab_config(config), sort_keys=False))  # type: ignore[arg-type]
    for name in ("metadata", "requirements"):
        source = offline.files.get(name) if offline else None
        if source is not None:
            saves[name] = Path(shutil.copy(source, files_dir / source.name))
    return saves
