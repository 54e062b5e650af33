"""What every backbone is: a frozen `forward(images) -> (cls [B, Dc], patches [B, T, Dp])` with the metadata the
feature store records, the options the command line can give it, and the small pieces several families share (input
normalisation, resolution checks, weights ids).

Every backbone takes float32 RGB in [0, 1] already resized to `resolution` and does its own input normalisation, so
the extraction loop stays model-agnostic.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.hashing import file_digest
from twinturbo.common.plugins import BUILT_IN

DEFAULT_RADIO_VERSION = "radio_v2.5-b"  # radio's (radio.py), the default of BackboneOptions.radio_version
DEFAULT_RESOLUTION = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneOptions:
    """What the command line can say about a backbone; `None` means the backbone's own default."""

    resolution: int | None = None
    weights: Path | None = None
    radio_checkpoint: Path | None = None
    hub_dir: Path | None = None
    radio_version: str = DEFAULT_RADIO_VERSION
    trust_remote_code: bool = False


class Backbone(nn.Module):
    """A frozen image -> (cls, patches) model with the metadata the feature store records.

    Attributes: `name` (stable spec, e.g. "effnet-lite0"), `weights_id` (sha256 prefix of the weights file or
    "pretrained:<tag>"), `resolution` (square input side), `cls_dim`, `patch_dim`, `num_patches`, and `note`: what
    tt-extract should tell the user about a choice made for them ("" when none).
    """

    note: str = ""
    name: str
    weights_id: str
    resolution: int
    cls_dim: int
    patch_dim: int
    num_patches: int

    def train(self, mode: bool = True) -> "Backbone":
        # A frozen feature extractor must never leave eval mode: BatchNorm would use batch statistics and RADIO
        # randomises its position-embedding crops in train mode, so features would depend on the batch.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _freeze_and_probe(self) -> None:
        """Freeze, then read the token dims from one forward pass at the resolution (cheaper than a table of models)."""
        self.requires_grad_(False)
        self.eval()
        with torch.inference_mode():
            cls, patches = self(torch.zeros(1, 3, self.resolution, self.resolution))
        self.cls_dim = int(cls.shape[-1])
        self.num_patches, self.patch_dim = int(patches.shape[1]), int(patches.shape[2])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weights_id={self.weights_id!r}, resolution={self.resolution}"


def file_sha256_prefix(path: Path, length: int = 16) -> str:
    """The weights id of a local weights file: the first `length` hex digits of its sha256."""
    return file_digest(path)[:length]


def require_file(path: Path, option: str, expected: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise TwinTurboError(f"{option} {path}: file not found (expected {expected})")
    return path


def checked_resolution(options: BackboneOptions, default: int, multiple: int, what: str) -> int:
    resolution = default if options.resolution is None else int(options.resolution)
    if resolution <= 0 or resolution % multiple:
        raise TwinTurboError(
            f"--resolution {resolution}: {what} needs a positive multiple of {multiple} (e.g. {default})"
        )
    return resolution


class Normalise(nn.Module):
    """(x - mean) / std per channel, as buffers so the backbone's `.to(device)` moves them."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std



def state_dict_sha256(model: nn.Module, digest=None):
    """A sha256 over a module's state dict: every entry's name, dtype, shape and raw bytes, in the module's order.

    The weights id of a model that comes as code, not as one file (hub: and py:). Returns the hashlib object so a
    caller can put more in front (py: hashes its module's source first)."""
    digest = digest or hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}\0{flat.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy())  # raw bytes of any dtype, bf16 included
    return digest


def files_sha256_prefix(paths: list[Path], length: int = 16) -> str:
    """One id for several weight files: the sha256 of "name NUL sha256 of the file" lines, in name order."""
    manifest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        manifest.update(f"{path.name}\0{file_digest(path)}\n".encode())
    return manifest.hexdigest()[:length]


def _any(argument: str | None) -> bool:
    return True


@dataclass(frozen=True)
class BackboneFamily:
    """One kind of backbone spec (registry.py): its `prefix`, a `summary` for the help and the errors, and
    `build(argument, options) -> Backbone`, the argument being what follows "<prefix>:" (None without a ':'). The
    Backbone's `name` is the spec that builds it again (the store records it; tt-predict --images rebuilds it).
    `accepts(argument)` says whether a spec of this prefix is one of the family's (the others are unknown backbones);
    `order` places a built-in family in the help and the errors; `origin` is where it came from (this package, or
    'entry point mypackage.mybb')."""

    prefix: str
    summary: str
    build: Callable[[str | None, BackboneOptions], Backbone]
    accepts: Callable[[str | None], bool] = _any
    order: int = 100
    origin: str = BUILT_IN
