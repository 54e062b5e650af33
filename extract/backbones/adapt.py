"""Adapting a model we did not write (hf:, hub:, py:): its own resolution and patch step, its output as (cls, patches),
and a probe forward whose failure, whatever the model's code raises, is one line naming the spec."""
from __future__ import annotations

from typing import Mapping

import torch

from twinturbo.common.errors import TwinTurboError, one_line

from .base import Backbone, BackboneOptions


def square_side(value) -> int | None:
    """The side of a square size given as an int, an (h, w) pair or {"height", "width"}; None for anything else."""
    if isinstance(value, Mapping):
        value = (value.get("height"), value.get("width"))
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def own_resolution(options: BackboneOptions, own: int | None, step: int | None, spec: str) -> int:
    """--resolution, else the model's own input side; a multiple of its patch step where the model says it."""
    if options.resolution is None and own is None:
        raise TwinTurboError(f"--backbone {spec}: the model does not say its square input size; pass --resolution R")
    resolution = own if options.resolution is None else int(options.resolution)
    if resolution <= 0 or (step and resolution % step):
        raise TwinTurboError(f"--resolution {resolution}: {spec} needs a positive multiple of its patch size {step} "
                             f"(its own resolution: {own or 'not given'})")
    return resolution


def as_tokens(cls, patches, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cls [B, Dc], patches [B, T, Dp]) as the store needs them, or one line saying what the model gave instead."""
    def shape(x):
        return tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
    if not (torch.is_tensor(cls) and torch.is_tensor(patches) and cls.ndim == 2 and patches.ndim == 3
            and len(cls) == len(patches)):
        raise TwinTurboError(f"--backbone {spec}: its forward gives cls {shape(cls)} and patches {shape(patches)}; "
                             "expected [B, Dc] and [B, T, Dp]")
    return cls, patches


def summary_and_features(output, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """RADIO's output (a RadioOutput or any (summary, features, ...) tuple): summary -> cls, features -> patches;
    features in NCHW (feature_fmt='NCHW') become NLC."""
    if len(output) < 2:
        raise TwinTurboError(f"--backbone {spec}: its forward gives a tuple of {len(output)}; expected (summary, "
                             "features) as RADIO's")
    summary, features = output[0], output[1]
    if torch.is_tensor(features) and features.ndim == 4:
        features = features.flatten(2).transpose(1, 2)
    return as_tokens(summary, features, spec)


def one_line_on_failure(call, resolution: int, spec: str, what: str = "forward"):
    """call(), a probe of a model we did not write on one zero image at `resolution`: whatever the model's code raises
    on an input it cannot take becomes one line naming the spec and the resolution."""
    try:
        return call()
    except TwinTurboError:
        raise
    except Exception as err:  # the model's own code raises whatever it raises
        raise TwinTurboError(f"--backbone {spec}: its {what} failed on a [1, 3, {resolution}, {resolution}] batch "
                             f"(--resolution {resolution}): {type(err).__name__}: {one_line(err)[:200]}") from None


def probe(backbone: Backbone, spec: str) -> None:
    """Backbone._freeze_and_probe for a model we did not write (a failure is one line)."""
    one_line_on_failure(backbone._freeze_and_probe, backbone.resolution, spec)
