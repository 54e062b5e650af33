"""Device selection, the arithmetic precision of a run, and the speed choices made for a device, shared by both stages."""
from __future__ import annotations

import os
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


PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_HELP = ("Arithmetic of the head's forward and backward: bf16 autocast (matmuls in bfloat16, losses and "
                  "weights in float32) or fp32; auto = bf16 where the device computes bf16 natively (a CUDA GPU, a "
                  "CPU with AVX512-BF16 or AMX), else fp32. Part of a run's config: a sweep never mixes precisions.")


# Overrides what `auto` finds on the CPU: 0 = as if the CPU had no native bf16, 1 = as if it had. For running the test
# suite once per precision path on one machine (DEVELOPERS.md), and for a CPU whose bf16 torch misdetects.
CPU_BF16_ENV = "TWINTURBO_CPU_BF16"


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 natively: a CUDA GPU that supports it, an x86 CPU with AVX512-BF16 or AMX,
    an Arm CPU with its BF16 extension (unless TWINTURBO_CPU_BF16 says otherwise). Elsewhere bf16 is emulated and
    slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    forced = os.environ.get(CPU_BF16_ENV, "")
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise TwinTurboError(f"{CPU_BF16_ENV}={forced}: expected 0 (no native bf16) or 1 (native bf16), or unset")
    if cpu_bf16_units():
        return True
    return platform.machine() in ("aarch64", "arm64") and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_bf16_units() -> str:
    """The x86 bf16 units torch finds on this CPU: 'amx_bf16', 'avx512_bf16' (AMX CPUs have both; oneDNN uses AMX), or
    '' where neither. Two CPUs sold under one model name ("Intel(R) Xeon(R) Processor") may differ here, and so round
    bf16 differently: the SSL study's seeds ran on one of each (docs/results/fashion-mnist-ssl/)."""
    for units, name in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
        check = getattr(torch.cpu, name, None)
        if check is not None and check():
            return units
    return ""


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where `native_bf16(device)`, else fp32; fp32 and bf16 are kept as asked (bf16 runs anywhere,
    emulated where the hardware lacks it)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision in PRECISIONS:
        return precision
    raise TwinTurboError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class Acceleration:
    """How a run is computed beyond its config, decided here and nowhere else (`for_run`); each path also runs on the
    CPU when asked for, so the CPU test suite covers the branches a GPU takes.

    fp32 on the CPU is the reference path: it computes every earlier fp32 result bit for bit. Measured on a 2-core
    AMD EPYC with AVX512-BF16 (bench/README.md, bench/limit.py): K runs as one vmap did not pay on the CPU, AdamW's
    fused kernel is ~3x faster than the per-tensor one for the projector's weight but rounds differently, so it comes
    with bf16 (whose results differ from fp32's anyway) and stays off for fp32.
    """

    batched_runs: bool = False  # K fused runs as one torch.vmap over the run axis instead of one after another
    fused_adamw: bool = False  # AdamW's fused kernel

    @classmethod
    def for_run(cls, device: torch.device, precision: str) -> "Acceleration":
        """The choices for a run of resolved `precision` (fp32 or bf16) on `device`."""
        cuda = device.type == "cuda"
        return cls(batched_runs=cuda, fused_adamw=cuda or precision == "bf16")


def extraction_bf16(device: torch.device) -> bool:
    """bf16 autocast of the backbone's forward in tt-extract: on CUDA only. On the CPU the tokens stay fp32-computed
    even where bf16 is native (1.34x faster on the 2-core EPYC, but tokens up to 0.9 standard deviations apart,
    bench/README.md "Extraction in bf16"): a store is read by every run made on it, and stores extracted on CPUs with
    and without bf16 then hold the same tokens."""
    return device.type == "cuda"


def host_description(device: torch.device) -> dict:
    """What a run's last bits depend on beyond its config and thread count, recorded with each sweep row: the CPU
    model and its bf16 units (`cpu_bf16_units`), or the GPU's name, and torch's version. A CPU of another kind rounds
    differently (README, Determinism)."""
    if device.type == "cuda":
        return {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__}
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "bf16_units": cpu_bf16_units(), "torch": torch.__version__}
