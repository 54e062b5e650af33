"""Backbone adapters: real packaged weights classify a real photo, token shapes, weight files really load, RADIO
through a local torch.hub directory, and one-line errors for what a user can get wrong."""
from __future__ import annotations

import argparse

import hashlib
import textwrap
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twinturbo.common.errors import TwinTurboError
from twinturbo.extract.backbones import (
    BackboneOptions,
    build_backbone,
    build_effnet_lite0_classifier,
    effnet_pytorch_to_timm,
    packaged_effnet_lite0_file,
)

CHURCH = 497  # ImageNet-1k class index of 'church, church building'


def sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def effnet224():
    return build_backbone("effnet-lite0", BackboneOptions(resolution=224))


# ---------------------------------------------------------------------------------------------- effnet-lite0


def test_effnet_packaged_weights_recognise_a_church(effnet224):
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[0]  # china.jpg: a temple/church roof
    image = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255.0
    image = F.interpolate(image, size=(224, 224), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        top3 = effnet224.logits(image).topk(3).indices[0].tolist()
        cls, patches = effnet224(image)
    assert CHURCH in top3
    # the backbone's cls feeds the same classifier head the ImageNet prediction came from
    with torch.inference_mode():
        head_logits = effnet224.model.classifier(cls)
    assert head_logits.argmax().item() == effnet224.logits(image).argmax().item()


def test_effnet_shapes_and_cls_is_mean_of_cells(effnet224):
    small = build_backbone("effnet-lite0", BackboneOptions(resolution=64))
    images = torch.rand(2, 3, 224, 224)
    for backbone, res, cells in ((small, 64, 4), (effnet224, 224, 49)):
        assert (backbone.resolution, backbone.num_patches, backbone.patch_dim, backbone.cls_dim) == (res, cells, 1280, 1280)
        x = F.interpolate(images, size=(res, res), mode="bilinear", align_corners=False)
        with torch.inference_mode():
            cls, patches = backbone(x)
            fmap = backbone.model.forward_features((x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                                                   / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        assert patches.shape == (2, cells, 1280) and cls.shape == (2, 1280)
        torch.testing.assert_close(cls, patches.mean(dim=1))
        torch.testing.assert_close(patches, fmap.permute(0, 2, 3, 1).reshape(2, cells, 1280))
    assert small.name == "effnet-lite0"
    assert small.weights_id == sha16(packaged_effnet_lite0_file())
    assert not small.training and not any(p.requires_grad for p in small.parameters())
    small.train()  # a frozen extractor stays in eval mode (BatchNorm must not use batch statistics)
    assert not small.model.training


def test_effnet_320_takes_patches_from_the_input_of_conv_head():
    wide = build_backbone("effnet-lite0", BackboneOptions(resolution=64))
    narrow = build_backbone("effnet-lite0:320", BackboneOptions(resolution=64))
    assert (narrow.name, narrow.num_patches, narrow.patch_dim, narrow.cls_dim) == ("effnet-lite0:320", 4, 320, 1280)
    assert narrow.weights_id == wide.weights_id
    seen = {}
    hook = narrow.model.conv_head.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        cls, patches = narrow(x)
        wide_cls, _ = wide(x)
    hook.remove()
    torch.testing.assert_close(patches, seen["x"].flatten(2).transpose(1, 2))  # the 320-channel stage's cells
    torch.testing.assert_close(cls, wide_cls)  # cls unchanged: the mean of the 1280-channel cells


def test_effnet_mapping_fails_loudly_on_tampered_weights():
    import timm

    source = torch.load(packaged_effnet_lite0_file(), map_location="cpu", weights_only=True)
    assert len(source) == 296
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    mapped = effnet_pytorch_to_timm(source, model)
    assert list(mapped) == list(model.state_dict())  # the name rule reproduces timm's order one-to-one

    missing = dict(source)
    missing.pop("_blocks.3._bn1.running_var")
    extra = dict(source, **{"_blocks.16._bn1.weight": torch.zeros(3)})
    renamed = {("_blocks.2._squeeze.weight" if k == "_blocks.2._bn2.bias" else k): v for k, v in source.items()}
    reshaped = dict(source, **{"_blocks.5._project_conv.weight": source["_blocks.5._project_conv.weight"][:-1]})
    for tampered, words in ((missing, "tensors"), (extra, "unexpected"), (renamed, "unexpected"), (reshaped, "shape")):
        with pytest.raises(TwinTurboError, match=words) as err:
            effnet_pytorch_to_timm(tampered, model)
        assert "\n" not in str(err.value)


def test_effnet_resolution_and_weights_errors(tmp_path):
    with pytest.raises(TwinTurboError, match="--resolution 100.*multiple of 32"):
        build_backbone("effnet-lite0", BackboneOptions(resolution=100))
    with pytest.raises(TwinTurboError, match="--weights .*missing.pth.*not found"):
        build_effnet_lite0_classifier(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(TwinTurboError, match="junk.pth: not a readable"):
        build_backbone("effnet-lite0", BackboneOptions(resolution=64, weights=junk))
    source = torch.load(packaged_effnet_lite0_file(), map_location="cpu", weights_only=True)
    short = tmp_path / "short.pth"
    torch.save({k: v for k, v in source.items() if k != "_fc.bias"}, short)
    with pytest.raises(TwinTurboError, match="short.pth: effnet-lite0 weights: 295 tensors, expected 296"):
        build_backbone("effnet-lite0", BackboneOptions(resolution=64, weights=short))


# ---------------------------------------------------------------------------------------------- timm:<vit>


@pytest.fixture(scope="module")
def vit_tiny_file(tmp_path_factory):
    """A randomly initialised vit_tiny saved with its classification head, as a real checkpoint is."""
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    weights = tmp_path_factory.mktemp("vit") / "vit_tiny.pth"
    torch.save(reference.state_dict(), weights)
    return reference, weights


def test_timm_vit_loads_weights_file_and_splits_tokens(vit_tiny_file):
    reference, weights = vit_tiny_file
    backbone = build_backbone("timm:vit_tiny_patch16_224", BackboneOptions(resolution=32, weights=weights))
    assert backbone.name == "timm:vit_tiny_patch16_224" and backbone.weights_id == sha16(weights)
    assert (backbone.resolution, backbone.num_patches, backbone.patch_dim, backbone.cls_dim) == (32, 4, 192, 192)
    loaded = backbone.model.state_dict()
    for key, tensor in reference.state_dict().items():
        if not key.startswith("head."):  # the backbone has no classification head
            torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0)

    images = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        cls, patches = backbone(images)
        tokens = reference.forward_features((images - 0.5) / 0.5)  # vit_tiny's pretrained cfg: mean = std = 0.5
    assert tokens.shape == (3, 5, 192)
    torch.testing.assert_close(cls, tokens[:, 0])
    torch.testing.assert_close(patches, tokens[:, 1:])


def test_timm_vit_weights_at_another_resolution_and_errors(vit_tiny_file, tmp_path):
    from safetensors.torch import save_file

    reference, _ = vit_tiny_file
    # the same weights as a 224-px checkpoint (14x14 position grid) in safetensors, used at 48 px: 3x3 patches
    state = dict(reference.state_dict(), pos_embed=torch.randn(1, 1 + 14 * 14, 192) * 0.02)
    weights = tmp_path / "vit_tiny_224.safetensors"
    save_file(state, str(weights))
    backbone = build_backbone("timm:vit_tiny_patch16_224", BackboneOptions(resolution=48, weights=weights))
    assert backbone.num_patches == 9 and backbone.model.pos_embed.shape == (1, 10, 192)
    torch.testing.assert_close(backbone.model.pos_embed[:, 0], state["pos_embed"][:, 0])  # class position kept

    with pytest.raises(TwinTurboError, match="--resolution 40: .* multiple of 16"):
        build_backbone("timm:vit_tiny_patch16_224", BackboneOptions(resolution=40, weights=weights))
    with pytest.raises(TwinTurboError, match="--weights .*nothing.pth: file not found"):
        build_backbone("timm:vit_tiny_patch16_224", BackboneOptions(resolution=32, weights=tmp_path / "nothing.pth"))
    wider = tmp_path / "wider.pth"  # a checkpoint of another width
    torch.save({k: torch.cat([v, v]) if k.endswith("norm.weight") else v for k, v in state.items()}, wider)
    with pytest.raises(TwinTurboError, match="does not fit timm:vit_tiny_patch16_224: .*norm.weight") as err:
        build_backbone("timm:vit_tiny_patch16_224", BackboneOptions(resolution=48, weights=wider))
    assert "\n" not in str(err.value)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.11.")}, partial)
    with pytest.raises(TwinTurboError, match="does not fit .*missing .*blocks.11"):
        build_backbone("timm:vit_tiny_patch16_224", BackboneOptions(resolution=48, weights=partial))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(TwinTurboError, match="--weights .*junk.safetensors: not a readable state dict") as err:
        build_backbone("timm:vit_tiny_patch16_224", BackboneOptions(resolution=48, weights=junk))
    assert "\n" not in str(err.value)
    with pytest.raises(TwinTurboError, match="timm:not_a_model: Unknown model"):
        build_backbone("timm:not_a_model", BackboneOptions(weights=weights))


def test_timm_pretrained_download_failure_is_one_line(monkeypatch):
    import timm.models

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file.\nCheck your connection.")

    monkeypatch.setattr(timm.models, "load_pretrained", offline)
    with pytest.raises(TwinTurboError, match="pass a local state dict with --weights FILE") as err:
        build_backbone("timm:vit_tiny_patch16_224", BackboneOptions(resolution=32))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- radio


FAKE_HUBCONF = '''
"""A tiny stand-in for github.com/NVlabs/RADIO's hubconf.py (commit c0f3701): the same entry point, checkpoint
layout, output type, import-time dependency and resolution step."""
dependencies = ["torch", "timm", "einops"]

import os
from collections import namedtuple

import einops  # imported at import time, before torch.hub checks `dependencies`, as the real hub code does
import torch
from torch import nn

RadioOutput = namedtuple("RadioOutput", ["summary", "features"])
RESOURCE_MAP = {"radio_v2.5-b": 16, "radio_v2.5-l": 16, "radio_v2.5-g": 14}  # version -> patch size


class TinyRadio(nn.Module):
    def __init__(self, version, patch_size, dim=12, teachers=3):
        super().__init__()
        self.version, self.patch_size = version, patch_size
        self.patch_generator = nn.Conv2d(3, dim, patch_size, patch_size)
        self.summary_heads = nn.Linear(dim, teachers * dim)  # summary: the CLS tokens of clip, siglip, dino_v2

    @property
    def min_resolution_step(self):
        return self.patch_size

    def forward(self, x):
        step = self.min_resolution_step
        assert x.shape[-2] % step == 0 and x.shape[-1] % step == 0, f"RADIO needs H, W multiples of {step}"
        assert not self.training, "RADIO randomises position crops in train mode"
        x = (x - 0.5) / 0.25  # RADIO's input conditioner normalises its [0, 1] input itself
        features = einops.rearrange(self.patch_generator(x), "b c h w -> b (h w) c")  # NLC
        return RadioOutput(self.summary_heads(features.mean(dim=1)), features)


def radio_model(version="", progress=True, adaptor_names=None, vitdet_window_size=None, **kwargs):
    if os.path.isfile(version):
        chk = torch.load(version, map_location="cpu", weights_only=False)
        state_dict, args = chk["state_dict"], chk["args"]
        model = TinyRadio(version, args.patch_size)
        model.load_state_dict({k[len("base_model."):]: v for k, v in state_dict.items() if k.startswith("base_model.")})
        return model
    return TinyRadio(version, RESOURCE_MAP[version or "radio_v2.5-b"])  # the real one downloads the weights here
'''


@pytest.fixture
def fake_hub(tmp_path):
    hub = tmp_path / "RADIO"
    hub.mkdir()
    (hub / "hubconf.py").write_text(textwrap.dedent(FAKE_HUBCONF))
    return hub


def radio_checkpoint(path, model, patch_size=16):
    """A checkpoint in RADIO's real layout: {'args': argparse.Namespace, 'state_dict': {'base_model.*',
    'input_conditioner.*'}}."""
    state = {f"base_model.{k}": v for k, v in model.state_dict().items()}
    state.update({"input_conditioner.norm_mean": torch.full((3, 1, 1), 0.5),
                  "input_conditioner.norm_std": torch.full((3, 1, 1), 0.25)})
    torch.save({"args": argparse.Namespace(patch_size=patch_size, teachers=["clip", "siglip", "dino_v2"]),
                "state_dict": state}, path)
    return path


def test_radio_through_local_hub_with_checkpoint(fake_hub, tmp_path):
    torch.manual_seed(1)
    reference = torch.hub.load(str(fake_hub), "radio_model", source="local", version="radio_v2.5-b").eval()
    checkpoint = radio_checkpoint(tmp_path / "radio-v2.5-b_half.pth.tar", reference)

    backbone = build_backbone("radio", BackboneOptions(hub_dir=fake_hub, radio_checkpoint=checkpoint, resolution=32))
    assert backbone.model.version == str(checkpoint)  # --radio-checkpoint is what the hub gets as version=
    assert backbone.name == "radio:radio_v2.5-b" and backbone.weights_id == sha16(checkpoint)
    assert (backbone.resolution, backbone.cls_dim, backbone.num_patches, backbone.patch_dim) == (32, 36, 4, 12)
    backbone.train()  # stays in eval mode, or the fake model's assertion fires
    images = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        cls, patches = backbone(images)
        want = reference(images)
    torch.testing.assert_close(cls, want.summary)
    torch.testing.assert_close(patches, want.features)


def test_radio_resolution_step_comes_from_the_loaded_model(fake_hub):
    giant = build_backbone("radio:radio_v2.5-g", BackboneOptions(hub_dir=fake_hub, resolution=28))  # patch 14
    assert (giant.resolution, giant.num_patches) == (28, 4)
    with pytest.raises(TwinTurboError, match="--resolution 32: radio needs a positive multiple of 14"):
        build_backbone("radio:radio_v2.5-g", BackboneOptions(hub_dir=fake_hub, resolution=32))


@pytest.mark.parametrize("content, message", [
    ("cut", "not a readable torch checkpoint"),
    ("random", "not a readable torch checkpoint"),
    ("plain", "a torch file but not a RADIO checkpoint (expected the keys 'args' and 'state_dict'"),
])
def test_bad_radio_checkpoints_are_one_line(fake_hub, tmp_path, content, message):
    good = radio_checkpoint(tmp_path / "good.pth.tar", torch.hub.load(str(fake_hub), "radio_model",
                                                                      source="local", version="radio_v2.5-b"))
    bad = tmp_path / "bad.pth.tar"
    if content == "cut":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif content == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        torch.save(torch.load(good, weights_only=False)["state_dict"], bad)
    with pytest.raises(TwinTurboError) as err:
        build_backbone("radio", BackboneOptions(hub_dir=fake_hub, radio_checkpoint=bad))
    assert message in str(err.value) and f"--radio-checkpoint {bad}" in str(err.value)
    assert "\n" not in str(err.value)


def test_radio_hub_problems_are_one_line(tmp_path):
    other = tmp_path / "other-hub"
    other.mkdir()
    (other / "hubconf.py").write_text("dependencies = []\n\ndef resnet(**kwargs):\n    return None\n")
    with pytest.raises(TwinTurboError, match=r"--hub-dir .*other-hub: its hubconf.py has no entry point radio_model"):
        build_backbone("radio", BackboneOptions(hub_dir=other))
    needy = tmp_path / "needy-hub"
    needy.mkdir()
    (needy / "hubconf.py").write_text("import package_radio_needs_xyz\n\ndef radio_model(**kwargs):\n    pass\n")
    with pytest.raises(TwinTurboError, match="needs the package 'package_radio_needs_xyz'") as err:
        build_backbone("radio", BackboneOptions(hub_dir=needy))
    assert "\n" not in str(err.value)


def test_radio_version_and_default_resolution(fake_hub):
    backbone = build_backbone("radio:radio_v2.5-l", BackboneOptions(hub_dir=fake_hub))
    assert backbone.model.version == "radio_v2.5-l" and backbone.name == "radio:radio_v2.5-l"
    assert backbone.weights_id == "pretrained:radio_v2.5-l"
    assert (backbone.resolution, backbone.num_patches) == (224, 196)
    assert not backbone.model.training and not any(p.requires_grad for p in backbone.parameters())
    assert build_backbone("radio", BackboneOptions(hub_dir=fake_hub, resolution=64)).model.version == "radio_v2.5-b"


def test_radio_errors_are_one_line(fake_hub, tmp_path, monkeypatch):
    with pytest.raises(TwinTurboError, match="--resolution 200: radio needs a positive multiple of 16"):
        build_backbone("radio", BackboneOptions(hub_dir=fake_hub, resolution=200))
    with pytest.raises(TwinTurboError, match="--hub-dir .*: no hubconf.py"):
        build_backbone("radio", BackboneOptions(hub_dir=tmp_path / "empty"))
    with pytest.raises(TwinTurboError, match="--radio-checkpoint .*: file not found"):
        build_backbone("radio", BackboneOptions(hub_dir=fake_hub, radio_checkpoint=tmp_path / "gone.pth.tar"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load", no_network)
    with pytest.raises(TwinTurboError, match="--hub-dir .*--radio-checkpoint") as err:
        build_backbone("radio", BackboneOptions())
    assert "\n" not in str(err.value)


def test_unknown_backbone_lists_the_valid_ones():
    for spec in ("resnet50", "timm:", "effnet-lite1"):
        with pytest.raises(TwinTurboError) as err:
            build_backbone(spec)
        message = str(err.value)
        assert "unknown backbone" in message and "\n" not in message
        assert all(name in message for name in ("radio", "effnet-lite0", "timm:<"))


def test_tt_extract_with_a_bad_radio_checkpoint_leaves_no_store(fake_hub, tmp_path, capsys):
    from twinturbo.extract.cli import main

    bad = tmp_path / "radio.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_:
        main(["--dataset", "digits", "--backbone", "radio", "--hub-dir", str(fake_hub), "--radio-checkpoint", str(bad),
              "--out", str(tmp_path / "features"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: --radio-checkpoint") and err.count("\n") == 1
    assert "Traceback" not in err and not (tmp_path / "features").exists()
