"""The trackers' modes (``tracker.mode``, and ``target.mode`` of ``expflow align``), their
defaults and SwanLab's own names for them, checked in one place."""

from __future__ import annotations

from expflow.config.choices import MlflowMode, SwanLabMode, describe_invalid, names
from expflow.errors import ConfigError

CHOICE = {"SwanLab": SwanLabMode, "MLflow": MlflowMode}  # the schemas type tracker.mode with these
MODES = {kind: names(choice) for kind, choice in CHOICE.items()}
DEFAULT_MODE = {"SwanLab": SwanLabMode.offline.value, "MLflow": MlflowMode.online.value}
# expflow's SwanLab mode names -> swanlab's own (swanlab.init(mode=...))
SWANLAB_NATIVE = {"cloud": "online", "local": "local", "offline": "offline", "disabled": "disabled"}


def check_mode(kind: str, mode: object, key: str = "tracker.mode") -> None:
    """ConfigError naming ``key`` unless ``mode`` is one of ``kind``'s modes (an untyped node,
    such as a tracker of ``tracker=multi`` or an align spec's target; a typed one is checked
    by Hydra, with the same message)."""
    if mode not in MODES[kind]:
        raise ConfigError(f"{key}: {describe_invalid(CHOICE[kind], mode)}")
