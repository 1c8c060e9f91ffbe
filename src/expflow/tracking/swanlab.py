"""SwanLab tracker: offline by default, into the package's ``tracker/swanlab/``.

Modes (``tracker.mode``): ``offline`` writes SwanLab's own run files only (upload them
later with ``expflow sync --target swanlab``), ``local`` the same plus SwanLab's local
dashboard (``swanlab watch``, needs ``swanlab[dashboard]``), ``cloud`` logs live to
SwanLab's cloud or a private deployment (``web_host``/``api_host``), ``disabled`` does
nothing. ``swanlab`` is imported when the tracker starts, on rank 0 only.

Every attempt of a package (train, then each ``continue``) logs under one SwanLab
experiment id, recorded in ``tracker/swanlab/expflow.json``: that is the id
``expflow sync --id auto`` resumes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from expflow.tracking.modes import MODES as _MODES
from expflow.tracking.modes import SWANLAB_NATIVE as _SWANLAB_MODE
from expflow.tracking.modes import check_mode

MODES = _MODES["SwanLab"]
ID_FILE = "expflow.json"
_FINISH_STATE = {"COMPLETED": "success", "CRASHED": "crashed", "PRUNED": "success"}


def recorded_experiment_id(log_dir: str | Path) -> str | None:
    """The SwanLab experiment id the tracker recorded in ``log_dir`` (None: none yet)."""
    try:
        data = json.loads((Path(log_dir) / ID_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data.get("id") if isinstance(data, dict) else None


class SwanLabTracker:
    def __init__(
        self,
        project: str | None = "expflow",
        mode: str = "offline",
        workspace: str | None = None,
        experiment_name: str | None = None,
        description: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        web_host: str | None = None,
        api_host: str | None = None,
        monitor: bool = False,
        run_dir: str | Path | None = None,
        run_id: str | None = None,
    ):
        check_mode("SwanLab", mode)
        self.project, self.mode, self.workspace = project, mode, workspace
        self.experiment_name = experiment_name or run_id
        self.description, self.tags = description, list(tags or ())
        self.web_host, self.api_host, self.monitor = web_host, api_host, monitor
        # Outside a package (a bare instantiate) SwanLab's files go to a temp dir, never the cwd.
        self.log_dir = Path(run_dir) / "swanlab" if run_dir else None
        self._run: Any = None

    def _start(self, config: dict[str, Any] | None) -> Any:
        import swanlab

        from expflow.atomic import atomic_write_json

        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="expflow-swanlab-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        settings: dict[str, Any] = {
            "terminal": swanlab.Settings.Terminal(proxy_type="none"),  # expflow keeps the logs itself
            "probe": swanlab.Settings.Probe(monitor=bool(self.monitor)),
        }
        if self.mode == "cloud":
            from expflow.tracking.secrets import find_api_key

            settings.update({k: v for k, v in (("api_host", self.api_host), ("web_host", self.web_host)) if v})
            key = find_api_key("swanlab")
            if key is not None:  # else swanlab's own stored login (`swanlab login`), if any
                swanlab.login(api_key=key, host=self.api_host, save=False)
        experiment_id = recorded_experiment_id(log_dir)
        run = swanlab.init(
            mode=_SWANLAB_MODE[self.mode],
            log_dir=str(log_dir),
            project=self.project,
            workspace=self.workspace,
            name=self.experiment_name,
            description=self.description,
            tags=self.tags or None,
            id=experiment_id,
            resume="allow" if experiment_id else None,
            config=config,
            settings=swanlab.Settings(**settings),
            reinit=True,
        )
        if experiment_id is None:
            atomic_write_json(log_dir / ID_FILE, {"id": run.id, "project": self.project, "workspace": self.workspace})
        return run

    def log_config(self, config: dict[str, Any]) -> None:
        if self.mode != "disabled" and self._run is None:
            self._run = self._start(config)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.mode == "disabled":
            return
        if self._run is None:
            self._run = self._start(None)
        self._run.log(metrics, step=step)

    def finish(self, status: str = "COMPLETED") -> None:
        if self._run is not None:
            state = _FINISH_STATE.get(status, "aborted")
            self._run.finish(state=state, error=f"run {status}" if state == "crashed" else None)
            self._run = None
