"""The trackers' modes (``tracker.mode``, and ``target.mode`` of ``expflow align``), their
defaults and SwanLab's own names for them, checked in one place."""

from __future__ import annotations

from expflow.errors import ConfigError

MODES = {
    "SwanLab": ("cloud", "local", "offline", "disabled"),
    "MLflow": ("online", "disabled"),
}
DEFAULT_MODE = {"SwanLab": "offline", "MLflow": "online"}
# expflow's SwanLab mode names -> swanlab's own (swanlab.init(mode=...))
SWANLAB_NATIVE = {"cloud": "online", "local": "local", "offline": "offline", "disabled": "disabled"}


def check_mode(kind: str, mode: object, key: str = "tracker.mode") -> None:
    """ConfigError naming ``key`` unless ``mode`` is one of ``kind``'s modes."""
    valid = MODES[kind]
    if mode not in valid:
        raise ConfigError(f"{key}: {mode!r} is not a valid {kind} mode; valid: {', '.join(valid)}")
