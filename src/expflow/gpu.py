"""Device choice for a run. (The cross-process GPU lease allocator grows here.)"""

from __future__ import annotations

import torch

from expflow.errors import ConfigError


def resolve_device(trainer_device: str, gpu_count: int, allow_cpu: bool, local_rank: int = 0) -> torch.device:
    """CPU when asked or when no CUDA device exists and the config allows it."""
    if trainer_device == "cpu" or gpu_count == 0:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if trainer_device == "cuda" or not allow_cpu:
        raise ConfigError(
            "no CUDA device is available; set gpu.allow_cpu=true (or trainer.device=cpu) to run on CPU"
        )
    return torch.device("cpu")
