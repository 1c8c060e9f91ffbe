"""Structured-config schemas. Registered in Hydra's ConfigStore so every group option
that extends one is type-checked, and an unknown key fails at compose time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from expflow.config.choices import Device, MlflowMode, Progress, SchedulerInterval, SwanLabMode
from expflow.config.numbers import Range
from expflow.package.codestore import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from expflow.package.retention import RetentionPolicy


@dataclass
class PathsConfig:
    runs: str = "runs"  # where packages go
    store: str = "${paths.runs}/.store"  # content-addressed code store, shared by packages


@dataclass
class CodeConfig:
    root: str = "."
    include: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    # Import path of a snapshot, relative to code/: continue, rerun and analyze use it.
    pythonpath: list[str] = field(default_factory=lambda: ["src", "."])


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Any = MISSING  # _target_ node, _partial_: true
    scheduler: Any = None  # _target_ node, _partial_: true, or null
    scheduler_interval: SchedulerInterval = SchedulerInterval.epoch


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    processes: int = 1  # > 1: torch DDP through torchrun (gloo on CPU, nccl on GPU); per node
    nodes: int = 1  # > 1: DDP across that many nodes of a Slurm allocation (one torchrun per node)
    log_every_n_steps: int = 10
    grad_clip: float | None = None
    deterministic: bool = True
    threads: int | None = None  # torch intra-op threads; null leaves torch's default
    heartbeat_s: float = 5.0
    progress: Progress = Progress.auto
    device: Device = Device.auto


@dataclass
class CheckpointConfig:
    # The retention policy's own defaults (expflow.package.retention owns them).
    fast_keep: int = RetentionPolicy.fast_keep  # the latest K checkpoints
    slow_every: int = RetentionPolicy.slow_every  # every D-th checkpoint ...
    slow_keep: int = RetentionPolicy.slow_keep  # ... the latest M of those
    # Checkpoints the lifecycle holds (hold_every, hold_best): keep the latest N (null = all)
    persistent_keep: int | None = RetentionPolicy.persistent_keep


@dataclass
class GpuConfig:
    count: int = 1  # GPUs the run leases
    mem_mb: int = 0  # estimated memory per GPU; a device qualifies when its free memory covers it
    max_jobs_per_gpu: int = 1  # jobs that may share one device
    allow_cpu: bool = True  # no GPU: run on the CPU instead of failing


@dataclass
class ExpflowConfig:
    seed: int = 0
    run_id: str = "${expflow_run_id:}"
    paths: PathsConfig = field(default_factory=PathsConfig)
    code: CodeConfig = field(default_factory=CodeConfig)
    # What the supervised runner trains on (null for a runner that builds its own, or a command)
    model: Any = None
    dataset: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracker: Any = MISSING
    gpu: GpuConfig = field(default_factory=GpuConfig)
    # Untyped: a user's lifecycle class (``_target_``) may take parameters of its own.
    lifecycle: Any = MISSING
    # What a step does (expflow.runner): a Runner class (``_target_``, with its own
    # parameters), or ``runner=command`` for a whole program; null: the supervised runner.
    runner: Any = None
    # The metric `python -m expflow.train` returns, for a sweeper that optimizes it
    # (hydra/sweeper=optuna); it changes no training, so it is not part of the run id.
    objective: str | None = None


# -- schemas of the shipped example options ---------------------------------------
@dataclass
class DigitsMLPConfig:
    _target_: str = "expflow.examples.digits.MLP"
    in_features: int = 64
    hidden: list[int] = field(default_factory=lambda: [128, 64])
    num_classes: int = 10
    dropout: float = 0.0


@dataclass
class DigitsCNNConfig:
    _target_: str = "expflow.examples.digits.CNN"
    channels: list[int] = field(default_factory=lambda: [16, 32])
    num_classes: int = 10
    dropout: float = 0.0


@dataclass
class QuadraticMLPConfig:
    _target_: str = "expflow.examples.regression.QuadraticMLP"
    hidden: int = 16


@dataclass
class DigitsDataConfig:
    _target_: str = "expflow.examples.digits.DigitsData"
    batch_size: int = 64
    val_fraction: float = 0.2
    split_seed: int = 0


@dataclass
class QuadraticDataConfig:
    _target_: str = "expflow.examples.regression.QuadraticData"
    batch_size: int = 256
    n_train: int = 4096
    n_val: int = 101
    split_seed: int = 0


@dataclass
class CharGRUConfig:
    """The character LM's model (``runner.model`` of ``runner=charlm``); its vocab_size comes from the text."""

    _target_: str = "expflow.examples.charlm.CharGRU"
    embed_dim: int = 32
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.0


@dataclass
class CharTextConfig:
    """The character LM's text (``runner.text``): scikit-learn's bundled dataset descriptions."""

    _target_: str = "expflow.examples.charlm.CharText"
    files: list[str] | None = None  # sklearn/datasets/descr/*.rst names; null: all, by name
    max_chars: int = 30000  # cut at a paragraph boundary
    max_len: int = 96  # window length in characters (whole lines, never across a paragraph)
    min_len: int = 16
    val_fraction: float = 0.1
    split_seed: int = 0


@dataclass
class CharLMRunnerConfig:
    """``runner=charlm``: the Runner API example (expflow.examples.charlm)."""

    _target_: str = "expflow.examples.charlm.CharLMRunner"
    _recursive_: bool = False  # the runner builds model and text itself, in build() (vocab_size from the text)
    model: CharGRUConfig = field(default_factory=CharGRUConfig)
    text: CharTextConfig = field(default_factory=CharTextConfig)
    batch_size: int = 16
    prompt: str = "The data "
    sample_chars: int = 200


@dataclass
class CommandRunnerConfig:
    """``runner=command``: the run is a program (expflow.runner.command)."""

    _target_: str = "expflow.runner.command.CommandRunner"
    argv: list[str] = MISSING  # the program and its arguments; ${...} interpolates the config
    # Added to argv by `expflow continue` and workflow retries, e.g. [--resume, "${expflow:checkpoint}"];
    # empty: a continued command starts over.
    resume_argv: list[str] = field(default_factory=list)
    cwd: str = "."  # where it runs, relative to the package's code snapshot
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables
    # Tracker files the program writes, read into the package's records while it runs
    # (kinds: swanlab, wandb, tensorboard, csv; or {kind, path, step} mappings).
    ingest: list[Any] = field(default_factory=lambda: ["swanlab", "wandb", "tensorboard"])
    ingest_every_s: float = 2.0
    seed_python: bool = True  # seed random/NumPy/torch in every Python process of the command
    stop_grace_s: float = 10.0  # after forwarding SIGTERM/SIGINT, seconds before SIGKILL
    # The signal on which the program checkpoints and exits (e.g. SIGUSR1): a time limit's
    # warning, a preemption or a cancel is passed on as it; null: SIGTERM as it comes, no warning
    stop_signal: str | None = None


@dataclass
class NullTrackerConfig:
    _target_: str = "expflow.tracking.NullTracker"


@dataclass
class SwanLabTrackerConfig:
    _target_: str = "expflow.tracking.swanlab.SwanLabTracker"
    project: str | None = "expflow"
    mode: SwanLabMode = SwanLabMode.offline
    workspace: str | None = None  # an organization; null: your own
    experiment_name: str | None = None  # null: the run id
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    web_host: str | None = None  # a private deployment, e.g. https://swanlab.example.com
    api_host: str | None = None  # its API host (the client calls <api_host>/api)
    monitor: bool = False  # SwanLab's hardware monitor (a sampling thread)


@dataclass
class MlflowTrackerConfig:
    _target_: str = "expflow.tracking.mlflow.MlflowTracker"
    project: str | None = "expflow"  # the MLflow experiment
    mode: MlflowMode = MlflowMode.online
    tracking_uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else a SQLite store in the package
    experiment_name: str | None = None  # the run's name; null: the run id


@dataclass
class MultiTrackerConfig:
    _target_: str = "expflow.tracking.MultiTracker"
    _recursive_: bool = False  # MultiTracker builds its trackers, passing them the package
    trackers: dict[str, Any] = field(default_factory=dict)


# The schema of each group option: ``- /schema/<group>@_here_: <name>`` in its defaults list.
SCHEMAS: tuple[tuple[str, str, type], ...] = (
    ("model", "digits_mlp", DigitsMLPConfig),
    ("model", "digits_cnn", DigitsCNNConfig),
    ("model", "quadratic_mlp", QuadraticMLPConfig),
    ("dataset", "digits", DigitsDataConfig),
    ("dataset", "quadratic", QuadraticDataConfig),
    ("model", "char_gru", CharGRUConfig),
    ("dataset", "charlm_text", CharTextConfig),
    ("runner", "charlm", CharLMRunnerConfig),
    ("optim", "optim", OptimConfig),
    ("trainer", "trainer", TrainerConfig),
    ("checkpoint", "checkpoint", CheckpointConfig),
    ("tracker", "null", NullTrackerConfig),
    ("tracker", "swanlab", SwanLabTrackerConfig),
    ("tracker", "mlflow", MlflowTrackerConfig),
    ("tracker", "multi", MultiTrackerConfig),
    ("gpu", "gpu", GpuConfig),
    ("runner", "command", CommandRunnerConfig),
)


def register_configs() -> None:
    """Register the schemas (idempotent). YAML options extend them through their
    defaults list, e.g. ``- /schema/model@_here_: digits_mlp``."""
    from hydra.core.config_store import ConfigStore  # here: reading a package needs no Hydra

    cs = ConfigStore.instance()
    cs.store(name="expflow_schema", node=ExpflowConfig)
    for group, name, node in SCHEMAS:
        cs.store(group=f"schema/{group}", name=name, node=node)


# Every integer of a composed config fits int64 (torch and NumPy hold no more), every
# float is finite (no nan/inf) unless its key is in NONFINITE; these keys are narrower.
# Any key named ``seed`` or ``*_seed``, anywhere, is in numbers.SEED (0..2**32-1).
NONFINITE: frozenset[str] = frozenset()
RANGES: dict[str, Range] = {
    "trainer.max_epochs": Range(1, integer=True),
    "trainer.processes": Range(1, integer=True),
    "trainer.nodes": Range(1, integer=True),
    "trainer.log_every_n_steps": Range(1, integer=True),
    "trainer.threads": Range(0, integer=True),  # 0 or null: torch's default
    "trainer.heartbeat_s": Range(0, low_open=True),
    "trainer.grad_clip": Range(0),  # 0 or null: off
    "optim.lr": Range(0),
    "optim.weight_decay": Range(0),
    "gpu.count": Range(0, integer=True),
    "gpu.max_jobs_per_gpu": Range(1, integer=True),
    "gpu.mem_mb": Range(0, integer=True),
    "checkpoint.fast_keep": Range(0, integer=True),
    "checkpoint.slow_every": Range(0, integer=True),
    "checkpoint.slow_keep": Range(0, integer=True),
    "checkpoint.persistent_keep": Range(0, integer=True),
    "runner.ingest_every_s": Range(0, low_open=True),
    "runner.stop_grace_s": Range(0),
}
