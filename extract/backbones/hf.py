"""hf:<name or dir>: a transformers model (AutoModel.from_pretrained), the researcher's own without a fork (issue 29);
remote code only with --trust-remote-code; a hub name is looked up in the local cache only when the hub cannot be
reached."""
from __future__ import annotations

import inspect
import os
import socket
import urllib.parse
from pathlib import Path

import torch
from torch import nn

from twinturbo.common.errors import TwinTurboError, first_sentence, import_optional, one_line

from .adapt import as_tokens, one_line_on_failure, own_resolution, probe, square_side, summary_and_features
from .base import (IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneFamily, BackboneOptions, Normalise,
                   files_sha256_prefix, state_dict_sha256)

HF_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _hf_source(source: str, spec: str) -> Path | str:
    """A local directory (save_pretrained's), or a hub name; a path that names no directory is one line."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise TwinTurboError(f"--backbone {spec}: no directory {path} (expected one written by save_pretrained, or a "
                             "Hugging Face hub name such as google/vit-base-patch16-224)")
    return source


HUB_PROBE_TIMEOUT_S = 3.0


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable() -> bool:
    """Whether the Hugging Face hub accepts a connection within HUB_PROBE_TIMEOUT_S (False under HF_HUB_OFFLINE=1).
    Ours: unreachable, transformers retries five times over ~30 s, a line each, before failing; we ask it for the
    local cache only instead, which loads a cached model and fails at once otherwise."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urllib.parse.urlparse(hub_endpoint())
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _load_hf_model(where: Path | str, spec: str, trust_remote_code: bool, local_only: bool = False) -> nn.Module:
    """AutoModel.from_pretrained in float32 (the extraction loop picks bf16 autocast on CUDA itself), without
    transformers' "Loading weights" bar (stderr stays ours: a user error is one line); `local_only`: from the local
    cache alone (the hub cannot be reached)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(where), trust_remote_code=trust_remote_code, dtype=torch.float32,
                                          local_files_only=local_only)
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise TwinTurboError(f"--backbone {spec}: the model runs its own code (config.json's auto_map); read it, "
                                 "then pass --trust-remote-code to let transformers run it") from None
        raise TwinTurboError(f"--backbone {spec}: transformers cannot load it ({one_line(err)[:200]})") from None
    except ImportError as err:  # remote code importing a package that is not installed
        raise TwinTurboError(f"--backbone {spec}: the model's code needs a package that is not installed "
                             f"({one_line(err)[:160]})") from None
    except OSError as err:  # not on the hub, offline, or a directory without config.json / weights
        why = (f"the Hugging Face hub ({hub_endpoint()}) cannot be reached and {where} is not in the local cache"
               if local_only else first_sentence(err))
        raise TwinTurboError(f"--backbone {spec}: could not load {where} ({why}); offline, pass a directory written "
                             "by save_pretrained as hf:DIR") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.eval()


def _hf_image_processor(where: Path | str, local_only: bool = False) -> dict:
    """The model's preprocessor_config.json as a dict ({} where it has none)."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        return ImageProcessingMixin.get_image_processor_dict(str(where), local_files_only=local_only)[0]
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
        return Normalise(tuple(map(float, mean)), tuple(map(float, std))), "its image processor's mean/std"
    return Normalise(IMAGENET_MEAN, IMAGENET_STD), "ImageNet mean/std (no image processor found)"


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
    return square_side(getattr(config, "patch_size", None))


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
        local_only = isinstance(where, str) and not hub_reachable()  # a hub name, and no hub to ask
        self.model = _load_hf_model(where, spec, options.trust_remote_code, local_only)
        config = self.model.config
        own = square_side(getattr(config, "image_size", None)) or square_side(
            getattr(config, "preferred_resolution", None))
        step = square_side(getattr(self.model, "min_resolution_step", None)) or _hf_patch_size(config)
        self.resolution = own_resolution(options, own, step, spec)
        self.normalise, normalised = _hf_normalise(_hf_image_processor(where, local_only))
        takes_interpolation = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters
        self.call_kwargs = {"interpolate_pos_encoding": True} if takes_interpolation and self.resolution != own else {}
        self.weights_id = _hf_weights_id(where, self.model)
        self.name = spec
        self.prefix_tokens, cls_source = self._read_layout(spec)
        self.note = f"{spec}: cls = {cls_source}; {normalised}"
        probe(self, spec)

    def _raw_output(self, images: torch.Tensor):
        return self.model(self.normalise(images), **self.call_kwargs)

    def _read_layout(self, spec: str) -> tuple[int, str]:
        """(prefix tokens before the patches, where cls comes from), from one forward of a zero image."""
        self.requires_grad_(False)
        with torch.inference_mode():
            zeros = torch.zeros(1, 3, self.resolution, self.resolution)
            output = one_line_on_failure(lambda: self._raw_output(zeros), self.resolution, spec)
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
            return summary_and_features(output, self.name)
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
        return as_tokens(cls, patches, self.name)


BACKBONE = BackboneFamily(
    "hf", "hf:<name or dir> (transformers AutoModel; --trust-remote-code for a model with its own code)",
    lambda argument, options: HFModel(argument or "", options), order=40)
