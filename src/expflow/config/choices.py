"""The config keys whose valid values are a fixed set, as enums (standard library only).

The schemas (:mod:`expflow.config.schema`) type those fields with these, so Hydra refuses
any other value when it composes. Each member's name is its value: OmegaConf writes an
enum member by name, so a package's ``config.yaml`` and every run id (a hash of the
composed config) read exactly as they did with plain strings, and ``StrEnum`` members
compare equal to those strings.
"""

from __future__ import annotations

from enum import StrEnum


class SchedulerInterval(StrEnum):
    """``optim.scheduler_interval``: when the LR scheduler steps."""

    epoch = "epoch"
    step = "step"


class Progress(StrEnum):
    """``trainer.progress``: auto is a rich bar on a terminal and plain lines otherwise."""

    auto = "auto"
    rich = "rich"
    plain = "plain"
    none = "none"


class Device(StrEnum):
    """``trainer.device``: auto trains on the leased GPUs, or on the CPU where none is."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class SwanLabMode(StrEnum):
    """``tracker.mode`` of SwanLab (expflow's names; ``cloud`` is swanlab's ``online``)."""

    cloud = "cloud"
    local = "local"
    offline = "offline"
    disabled = "disabled"


class MlflowMode(StrEnum):
    """``tracker.mode`` of MLflow."""

    online = "online"
    disabled = "disabled"


# What a value of each choice is, in an error: "'x' is not a valid SwanLab mode".
WHAT: dict[type[StrEnum], str] = {SwanLabMode: "SwanLab mode", MlflowMode: "MLflow mode"}


def names(choice: type[StrEnum]) -> tuple[str, ...]:
    """The valid values of ``choice``, in their declared order."""
    return tuple(member.value for member in choice)


def describe_invalid(choice: type[StrEnum], value: object) -> str:
    """Why ``value`` is refused: "'x' is not a valid <what>; valid: a, b"."""
    what = f"a valid {WHAT[choice]}" if choice in WHAT else "valid"
    return f"{value!r} is not {what}; valid: {', '.join(names(choice))}"
