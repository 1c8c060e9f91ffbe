"""API keys for trackers and sync targets: from the environment or a secrets file
outside the repository, never from a config (a config is written into the package).

Lookup order for a service (``swanlab``): ``$SWANLAB_API_KEY``, then the file
``<secrets dir>/swanlab_api_key`` where the secrets dir is ``$EXPFLOW_SECRETS_DIR`` or
``./secrets`` (ignored by git). Keys are handed to the client library in memory only.
"""

from __future__ import annotations

import os
from pathlib import Path

SECRETS_DIR_ENV = "EXPFLOW_SECRETS_DIR"


def secrets_dir() -> Path:
    return Path(os.environ.get(SECRETS_DIR_ENV) or "secrets")


def secret_file(service: str) -> Path:
    return secrets_dir() / f"{service}_api_key"


def find_api_key(service: str) -> str | None:
    """The API key for ``service`` (``swanlab``), or None when none is configured."""
    key = os.environ.get(f"{service.upper()}_API_KEY", "").strip()
    if key:
        return key
    try:
        key = secret_file(service).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return key or None
