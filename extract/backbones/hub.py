"""hub:<owner/repo:entry>: a torch.hub entry point (DINOv2's forward_features, or RADIO's (summary, features)),
offline from a local copy with --hub-dir."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from twinturbo.common.errors import TwinTurboError, one_line

from .adapt import as_tokens, one_line_on_failure, own_resolution, probe, square_side, summary_and_features
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneFamily, BackboneOptions, Normalise, state_dict_sha256


def _load_hub_entry(repo: str, entry: str, hub_dir: Path | None, spec: str) -> nn.Module:
    """torch.hub.load of `entry`: from a local copy with --hub-dir (source='local'), else from GitHub."""
    if hub_dir is not None:
        hub_dir = Path(hub_dir).expanduser()
        if not (hub_dir / "hubconf.py").is_file():
            raise TwinTurboError(f"--hub-dir {hub_dir}: no hubconf.py there (expected a local copy of "
                                 f"github.com/{repo.split(':')[0]})")
        where, source = str(hub_dir), {"source": "local"}
    else:
        # trust_repo=True: the user named the repository; torch's default ("check") would stop at a prompt.
        where, source = repo, {"source": "github", "trust_repo": True, "skip_validation": True}
    try:
        model = torch.hub.load(where, entry, **source)
    except ImportError as err:  # hub code imports its dependencies at import time, before torch.hub checks them
        raise TwinTurboError(f"--backbone {spec}: the hub code at {where} needs the package '{err.name}', which is "
                             f"not installed (pip install {err.name})") from None
    except OSError as err:  # URLError, HTTPError, timeouts: the code or the entry's weights could not be fetched
        raise TwinTurboError(f"--backbone {spec}: could not download ({type(err).__name__}: {one_line(err)[:120]}); "
                             "offline, pass --hub-dir <local copy of the repository> (and put the entry's weights "
                             "where it reads them, e.g. ~/.cache/torch/hub/checkpoints/)") from None
    except RuntimeError as err:
        message = one_line(err)
        if "Cannot find callable" in message:
            raise TwinTurboError(f"--backbone {spec}: {where}'s hubconf.py has no entry point {entry!r}") from None
        if "Missing dependencies" in message or "internet" in message:
            raise TwinTurboError(f"--backbone {spec}: {message[:200]}") from None
        raise
    if not isinstance(model, nn.Module):
        raise TwinTurboError(f"--backbone {spec}: the entry point returns {type(model).__name__}, not an nn.Module")
    return model.eval()


def _module_resolution(model: nn.Module) -> tuple[int | None, int | None]:
    """(own input side, patch step) a hub model states: RADIO's preferred_resolution / min_resolution_step, DINOv2's
    and timm's patch_embed.img_size / patch_size."""
    patch_embed = getattr(model, "patch_embed", None)
    own = (square_side(getattr(model, "preferred_resolution", None))
           or square_side(getattr(patch_embed, "img_size", None)) or square_side(getattr(model, "img_size", None)))
    step = (square_side(getattr(model, "min_resolution_step", None))
            or square_side(getattr(model, "patch_size", None))
            or square_side(getattr(patch_embed, "patch_size", None)))
    return own, step


DINOV2_KEYS = ("x_norm_clstoken", "x_norm_patchtokens")


class HubModel(Backbone):
    """A torch.hub entry point (`hub:OWNER/REPO:ENTRY`, e.g. hub:facebookresearch/dinov2:dinov2_vits14).

    A model whose `forward_features` returns DINOv2's dict gives cls = `x_norm_clstoken`, patches =
    `x_norm_patchtokens` (register tokens are not among them), on ImageNet-normalised input as DINOv2's own
    transforms do; any other model is called and must return RADIO's (summary, features), on [0, 1] RGB as RADIO's
    input conditioner expects. Tying the normalisation to the kind of output is our choice, made for these two models;
    a model that wants another is wrapped with py:MODULE:FACTORY.
    """

    def __init__(self, repo: str, entry: str, options: BackboneOptions):
        super().__init__()
        spec = f"hub:{repo}:{entry}"
        self.model = _load_hub_entry(repo, entry, options.hub_dir, spec)
        own, step = _module_resolution(self.model)
        self.resolution = own_resolution(options, own, step, spec)
        self.weights_id = state_dict_sha256(self.model).hexdigest()[:16]
        self.name = spec
        self.dinov2 = self._has_dinov2_features(spec)
        self.normalise = Normalise(IMAGENET_MEAN, IMAGENET_STD) if self.dinov2 else nn.Identity()
        probe(self, spec)

    def _has_dinov2_features(self, spec: str) -> bool:
        """Whether forward_features returns DINOv2's dict (one forward of a zero image)."""
        if not callable(getattr(self.model, "forward_features", None)):
            return False
        self.requires_grad_(False)
        with torch.inference_mode():
            zeros = torch.zeros(1, 3, self.resolution, self.resolution)
            output = one_line_on_failure(lambda: self.model.forward_features(zeros), self.resolution, spec,
                                          "forward_features")
        return isinstance(output, Mapping) and all(key in output for key in DINOV2_KEYS)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dinov2:
            features = self.model.forward_features(self.normalise(images))
            return as_tokens(features["x_norm_clstoken"], features["x_norm_patchtokens"], self.name)
        output = self.model(self.normalise(images))
        if not isinstance(output, tuple):
            raise TwinTurboError(f"--backbone {self.name}: its forward gives {type(output).__name__}; expected "
                                 "DINOv2's forward_features dict or a (summary, features) tuple as RADIO's (or wrap "
                                 "the model with py:MODULE:FACTORY)")
        return summary_and_features(output, self.name)


def _build(argument: str | None, options: BackboneOptions) -> HubModel:
    spec = "hub" if argument is None else f"hub:{argument}"
    repo, _, entry = (argument or "").rpartition(":")
    if "/" not in repo or not entry:
        raise TwinTurboError(f"--backbone {spec}: expected hub:OWNER/REPO:ENTRY, e.g. "
                             "hub:facebookresearch/dinov2:dinov2_vits14")
    return HubModel(repo, entry, options)


BACKBONE = BackboneFamily(
    "hub", "hub:<owner/repo:entry> (torch.hub, e.g. hub:facebookresearch/dinov2:dinov2_vits14; --hub-dir DIR offline)",
    _build, order=50)
