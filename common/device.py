"""Device selection, and the speed choices made for a GPU, shared by both stages."""
from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

from .errors import TwinTurboError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; `cuda` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TwinTurboError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        return torch.device(name)
    raise TwinTurboError(f"--device {name}: expected one of {', '.join(DEVICE_CHOICES)}")


@dataclass(frozen=True)
class Acceleration:
    """What the code does differently for speed on a GPU, decided here and nowhere else.

    `for_device` switches everything on for CUDA and off on the CPU, where each was measured slower (bf16 autocast
    ~6x, DESIGN.md; K runs as one vmap ~0.9x, bench/sweep.py). Each path also runs on the CPU when asked for, so the
    CPU test suite covers the branches a GPU takes.
    """

    bf16: bool = False  # bf16 autocast of the backbone's forward (extraction) and the head's (training, evaluation)
    batched_runs: bool = False  # K fused runs as one torch.vmap over the run axis instead of one after another
    fused_adamw: bool = False  # AdamW's fused kernel

    @classmethod
    def for_device(cls, device: torch.device) -> "Acceleration":
        on = device.type == "cuda"
        return cls(bf16=on, batched_runs=on, fused_adamw=on)


def host_description(device: torch.device) -> dict:
    """What a run's last bits depend on beyond its config and thread count, recorded with each sweep row: the CPU
    model (or the GPU's name) and torch's version. A CPU of another kind rounds differently (README, Determinism)."""
    if device.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__}
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "torch": torch.__version__}
