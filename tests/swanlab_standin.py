"""A stand-in SwanLab server on loopback: the few endpoints swanlab's client calls when it
syncs a run (login, project, experiment, profile, series, metrics, summaries, state).

It keeps what arrives so tests can assert exactly what a sync uploaded. Scalars are
stored per experiment as every point received (to see duplicates) and as the last value
per (key, step) (the view a dashboard shows).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

USERNAME = "standin-user"


@dataclass
class Experiment:
    cuid: str
    name: str
    project: str
    description: str | None = None
    created_at: str = ""
    points: list[tuple[str, int, Any]] = field(default_factory=list)  # every scalar received
    profile: dict[str, Any] = field(default_factory=dict)
    states: list[str] = field(default_factory=list)

    def scalars(self) -> dict[tuple[str, int], Any]:
        """The last value per (key, step)."""
        return {(k, s): v for k, s, v in self.points}


@dataclass
class Request:
    method: str
    path: str
    body: Any


class StandinSwanLab:
    """``with StandinSwanLab() as server: server.url``: a threaded HTTP server."""

    def __init__(self, api_key: str):
        self.api_key = api_key
        self.requests: list[Request] = []
        self.projects: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, Experiment] = {}
        self.series: list[dict[str, Any]] = []
        self.unknown: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="swanlab-standin", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> StandinSwanLab:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def create_experiment(self, project: str, cuid: str, name: str = "existing") -> Experiment:
        self._project(project, create=True)
        exp = Experiment(cuid=cuid, name=name, project=project, created_at=_now())
        self.experiments[cuid] = exp
        return exp

    # -- routing ---------------------------------------------------------------
    def _project(self, name: str, create: bool = False) -> dict[str, Any] | None:
        if name not in self.projects and create:
            self.projects[name] = {
                "cuid": f"proj-{secrets.token_hex(4)}", "name": name, "path": f"/@{USERNAME}/{name}",
                "group": {"username": USERNAME}, "_count": {"experiments": 0}, "version": 1,
            }
        return self.projects.get(name)

    def handle(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(Request(method, path, body))
            return self._route(method, path, body, headers)

    def _route(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, Any]:
        if method == "POST" and path == "/api/login/api_key":
            if headers.get("authorization") != self.api_key:
                return 401, {"code": "unauthorized", "message": "bad api key"}
            expires = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            return 200, {"sid": "standin-session", "expiredAt": expires, "userInfo": {"username": USERNAME}}
        if "standin-session" not in (headers.get("cookie") or ""):
            return 401, {"code": "unauthorized", "message": "no session"}
        if m := re.fullmatch(r"/api/project/([^/]+)/([^/]+)", path):
            if method == "GET":
                project = self._project(m[2])
                return (200, project) if project else (404, {"code": "not_found", "message": "no project"})
        if m := re.fullmatch(r"/api/projects/([^/]+)", path):
            if method == "POST":
                self._project(body["name"], create=True)
                return 201, {}
        if m := re.fullmatch(r"/api/project/([^/]+)/([^/]+)/experiment", path):
            if method == "POST":
                return self._create_or_resume(m[2], body)
        if m := re.fullmatch(r"/api/project/([^/]+)/([^/]+)/runs/([^/]+)", path):
            if method == "GET":
                exp = self.experiments.get(m[3])
                if exp is None or exp.project != m[2]:
                    return 404, {"code": "not_found", "message": "Not Found"}
                return 200, {"cuid": exp.cuid, "name": exp.name, "createdAt": exp.created_at}
        if m := re.fullmatch(r"/api/project/([^/]+)/([^/]+)/runs/([^/]+)/profile", path):
            if method == "PUT" and m[3] in self.experiments:
                self.experiments[m[3]].profile.update(body)
                return 200, {}
        if m := re.fullmatch(r"/api/project/([^/]+)/([^/]+)/runs/([^/]+)/state", path):
            if method == "PUT" and m[3] in self.experiments:
                self.experiments[m[3]].states.append(body["state"])
                return 200, {}
        if re.fullmatch(r"/api/projects/([^/]+)/([^/]+)/series", path) and method == "POST":
            self.series.extend(body.get("series", []))
            return 201, {}
        if m := re.fullmatch(r"/api/house/metrics/summaries/([^/]+)/([^/]+)", path):
            if method == "GET" and m[2] in self.experiments:
                return 200, self._summary(self.experiments[m[2]])
        if path == "/api/house/metrics" and method == "POST":
            exp = self.experiments.get(body.get("experimentId"))
            if exp is None:
                return 404, {"code": "not_found", "message": "no experiment"}
            if body.get("type") == "scalar":
                exp.points.extend((p["key"], p["index"], p["data"]) for p in body["metrics"])
            return 201, {}
        self.unknown.append(Request(method, path, body))
        return 404, {"code": "not_found", "message": f"stand-in has no {method} {path}"}

    def _create_or_resume(self, project: str, body: dict[str, Any]) -> tuple[int, Any]:
        cuid = body.get("cuid")
        if cuid and cuid in self.experiments:
            exp = self.experiments[cuid]
            exp.states.append("RUNNING")
            return 200, {"cuid": exp.cuid, "slug": exp.cuid, "name": exp.name, "createdAt": exp.created_at}
        cuid = cuid or secrets.token_hex(8)
        exp = Experiment(cuid=cuid, name=body["name"], project=project, description=body.get("description"),
                         created_at=_now())
        self.experiments[cuid] = exp
        self.projects[project]["_count"]["experiments"] += 1
        return 201, {"cuid": cuid, "slug": cuid, "name": exp.name}

    @staticmethod
    def _summary(exp: Experiment) -> dict[str, Any]:
        last: dict[str, int] = {}
        for key, step, _ in exp.points:
            last[key] = max(step, last.get(key, -1))
        return {"scalar": [{"key": k, "step": s} for k, s in sorted(last.items())], "media": [], "log": []}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                status, payload = server.handle(self.command, urlsplit(self.path).path, body, self.headers)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        return Handler


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
