"""API keys for trackers, sync targets and alignment's cloud sources: the one place expflow
looks them up. From the environment or a secrets file outside the repository, never from a
config (a config is written into the package).

Lookup order for a service (``swanlab``, ``wandb``):

1. ``$SWANLAB_API_KEY`` (``$<SERVICE>_API_KEY``);
2. the file ``<secrets dir>/swanlab_api_key``, where the secrets dir is
   ``$EXPFLOW_SECRETS_DIR`` or ``./secrets`` (ignored by git);
3. ``auth.swanlab_api_key`` in ``<secrets dir>/config.yaml``, ``./secrets/config.yaml`` or
   ``./config.yaml`` (the layout of the alignment tool expflow align grew from)::

       auth:
         swanlab_api_key: ...
         wandb_api_key: ...

Keys are handed to the client library in memory only; nothing here writes them anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SECRETS_DIR_ENV = "EXPFLOW_SECRETS_DIR"
# The YAML files that may hold ``auth:`` (and, for `expflow align`, its spec), first found first.
SECRETS_FILES = ("secrets/config.yaml", "config.yaml")


@dataclass(frozen=True)
class Credential:
    service: str
    value: str
    origin: str  # where it came from (an env var name or a file), never the value

    def __repr__(self) -> str:  # keep the value out of tracebacks and logs
        return f"Credential({self.service!r}, from {self.origin})"


def secrets_dir() -> Path:
    return Path(os.environ.get(SECRETS_DIR_ENV) or "secrets")


def secret_file(service: str) -> Path:
    return secrets_dir() / f"{service}_api_key"


def env_name(service: str) -> str:
    return f"{service.upper()}_API_KEY"


def find_credential(service: str, cwd: Path | None = None) -> Credential | None:
    """The API key for ``service``, and where it came from; None when none is configured."""
    env = env_name(service)
    value = os.environ.get(env, "").strip()
    if value:
        return Credential(service, value, env)
    try:
        value = secret_file(service).read_text().strip()
    except (OSError, UnicodeDecodeError):
        value = ""
    if value:
        return Credential(service, value, str(secret_file(service)))
    base = cwd or Path.cwd()
    candidates = [(secrets_dir() / "config.yaml", str(secrets_dir() / "config.yaml"))]
    candidates += [(base / rel, rel) for rel in SECRETS_FILES]
    seen = set()
    for path, origin in candidates:
        try:
            resolved = path.resolve()
        except OSError:
            continue
        if resolved in seen:
            continue
        seen.add(resolved)
        value = _auth_value(path, service)
        if value:
            return Credential(service, value, origin)
    return None


def _auth_value(path: Path, service: str) -> str | None:
    """``auth.<service>_api_key`` of a YAML file; None when the file is missing, unreadable
    or does not hold one."""
    import yaml

    try:
        if not path.is_file():
            return None
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    auth = data.get("auth") if isinstance(data, dict) else None
    value = auth.get(f"{service}_api_key") if isinstance(auth, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def find_api_key(service: str) -> str | None:
    """The API key for ``service`` (``swanlab``), or None when none is configured."""
    found = find_credential(service)
    return found.value if found else None


def missing_message(service: str) -> str:
    return (f"no {service} API key: set {env_name(service)}, or put it in {secret_file(service)} "
            f"or under auth.{service}_api_key in {SECRETS_FILES[0]} (git-ignored)")
