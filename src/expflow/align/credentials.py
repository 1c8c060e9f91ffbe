"""API keys for the cloud sources and the cloud target: from the environment, or from a
secrets file outside version control (seed 002: ``secrets/config.yaml`` is looked up
before ``config.yaml``), under ``auth:``::

    auth:
      swanlab_api_key: ...
      wandb_api_key: ...

Keys are only ever handed to the SDKs; nothing here writes them anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

SECRETS_FILES = ("secrets/config.yaml", "config.yaml")
ENV = {"swanlab": "SWANLAB_API_KEY", "wandb": "WANDB_API_KEY"}


@dataclass(frozen=True)
class Credential:
    service: str
    value: str
    origin: str  # where it came from (an env var name or a file), never the value

    def __repr__(self) -> str:  # keep the value out of tracebacks and logs
        return f"Credential({self.service!r}, from {self.origin})"


def find_credential(service: str, cwd: Path | None = None) -> Credential | None:
    """The API key for ``service`` (swanlab | wandb), or None when none is configured."""
    env = ENV[service]
    if os.environ.get(env):
        return Credential(service, os.environ[env], env)
    base = cwd or Path.cwd()
    for rel in SECRETS_FILES:
        path = base / rel
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        auth = data.get("auth") if isinstance(data, dict) else None
        value = auth.get(f"{service}_api_key") if isinstance(auth, dict) else None
        if isinstance(value, str) and value.strip():
            return Credential(service, value.strip(), str(rel))
    return None


def missing_message(service: str) -> str:
    return (
        f"no {service} API key: set {ENV[service]} or auth.{service}_api_key in "
        f"{SECRETS_FILES[0]} (git-ignored)"
    )
