"""timm:<name>: any timm vision transformer, its pretrained weights or a local weights file (--weights)."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from twinturbo.common.errors import TwinTurboError

from .base import (Backbone, BackboneFamily, BackboneOptions, Normalise, checked_resolution, file_sha256_prefix,
                   require_file)

def _timm_filter_fn(model: nn.Module):
    """The model family's checkpoint filter (resamples position embeddings to our resolution, unwraps npz layouts)."""
    module = importlib.import_module(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def _load_timm_weights_file(model: nn.Module, path: Path, spec: str) -> None:
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path))  # .pth/.pt/.bin or .safetensors; unwraps 'state_dict'/'model'
    except Exception as err:  # torch and safetensors raise many types for a truncated or foreign file
        detail = " ".join(str(err).split())[:160]
        raise TwinTurboError(f"--weights {path}: not a readable state dict ({type(err).__name__}: {detail})") from err
    # num_classes=0: the classification head is not part of the backbone, so its tensors are expected and dropped.
    heads = model.pretrained_cfg.get("classifier") or ()
    for head in (heads,) if isinstance(heads, str) else heads:
        state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    filter_fn = _timm_filter_fn(model)
    try:
        if filter_fn is not None:
            state = filter_fn(state, model)
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError) as err:  # shape mismatches: a checkpoint of another model
        detail = " ".join(str(err).split())[:200]
        raise TwinTurboError(f"--weights {path} does not fit {spec}: {detail}") from err
    if result.missing_keys or result.unexpected_keys:
        raise TwinTurboError(
            f"--weights {path} does not fit {spec}: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )


class TimmViT(Backbone):
    """A timm ViT: `forward_features` tokens; the class token (index 0) -> cls, tokens after the
    `num_prefix_tokens` prefix (class + register tokens) -> patches. Without a class token, cls = mean of patches.
    """

    def __init__(self, model_name: str, options: BackboneOptions):
        super().__init__()
        import timm

        spec = f"timm:{model_name}"
        kwargs = {"num_classes": 0}
        if options.resolution is not None:
            if int(options.resolution) <= 0:
                raise TwinTurboError(f"--resolution {options.resolution}: {spec} needs a positive multiple of its patch size")
            kwargs["img_size"] = int(options.resolution)
        try:
            model = timm.create_model(model_name, pretrained=False, **kwargs)
        except RuntimeError as err:  # timm's "Unknown model"
            raise TwinTurboError(f"--backbone {spec}: {err} (see timm.list_models('vit_*'))") from err
        except TypeError as err:  # not a ViT: no img_size argument
            raise TwinTurboError(f"--backbone {spec}: not a timm ViT ({err})") from err
        patch_embed = getattr(model, "patch_embed", None)
        if patch_embed is None or not hasattr(model, "num_prefix_tokens"):
            raise TwinTurboError(f"--backbone {spec}: not a timm ViT (no patch_embed / prefix tokens); use e.g. timm:vit_base_patch16_224")
        patch = int(patch_embed.patch_size[0])
        self.resolution = checked_resolution(options, int(model.pretrained_cfg["input_size"][-1]), patch, spec)
        if options.weights is not None:
            path = require_file(options.weights, "--weights", f"a state dict for {model_name} (.pth or .safetensors)")
            _load_timm_weights_file(model, path, spec)
            self.weights_id = file_sha256_prefix(path)
        else:
            self.weights_id = self._load_pretrained(model, spec)
        self.model = model
        self.has_class_token = getattr(model, "cls_token", None) is not None
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        config = timm.data.resolve_data_config({}, model=model)
        self.normalise = Normalise(tuple(config["mean"]), tuple(config["std"]))
        self.name = spec
        self._freeze_and_probe()

    @staticmethod
    def _load_pretrained(model: nn.Module, spec: str) -> str:
        from timm.models import load_pretrained

        cfg = model.pretrained_cfg
        try:
            load_pretrained(model, num_classes=0, filter_fn=_timm_filter_fn(model))
        except Exception as err:  # offline: OSError/HF hub errors/RuntimeError from timm; all mean "no weights"
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise TwinTurboError(
                f"--backbone {spec}: could not get pretrained weights ({message[:160]}); "
                "pass a local state dict with --weights FILE"
            ) from err
        return f"pretrained:{cfg.get('hf_hub_id') or cfg.get('architecture', '') + '.' + cfg.get('tag', '')}"

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.forward_features(self.normalise(images))  # [B, prefix + T, D], after the final norm
        patches = tokens[:, self.num_prefix_tokens:]
        cls = tokens[:, 0] if self.has_class_token else patches.mean(dim=1)
        return cls, patches


BACKBONE = BackboneFamily(
    "timm", "timm:<vit name> (e.g. timm:vit_base_patch16_224; --weights FILE, or pretrained download when online)",
    lambda argument, options: TimmViT(argument, options), accepts=bool, order=30)
