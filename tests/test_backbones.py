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
from twinturbo.extract.backbones import BackboneOptions, build_backbone
from twinturbo.extract.backbones.effnet import (build_effnet_lite0_classifier, effnet_pytorch_to_timm,
                                                packaged_effnet_lite0_file)

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
        assert all(name in message for name in ("radio", "effnet-lite0", "timm:<", "hf:<", "hub:<", "py:<"))


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


# -------------------------------------------------------------------------------------------- hf:, hub:, py: (issue 29)
# Each source is written offline by a conftest fixture; tt-extract's store (40 digits) is compared with a forward of
# the same model written here: bilinear resize, grey to RGB, the model's normalisation, its own outputs.

OWN_ARGS = ["--dataset", "digits", "--limit", "40", "--splits", "train", "--batch-size", "16", "--chunk-size", "16",
            "--device", "cpu", "--no-progress"]


def run_extract(args: list, capsys) -> tuple[int, str]:
    from twinturbo.extract.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    return code, capsys.readouterr().err


def extract_own(spec: str, out: Path, capsys, *extra) -> tuple[dict, np.ndarray, np.ndarray, str]:
    """tt-extract on the first 40 digits with `spec`: (store attrs, cls, patches as float32, stderr)."""
    import zarr

    code, err = run_extract(OWN_ARGS + ["--backbone", spec, "--out", out, *extra], capsys)
    assert code == 0, err
    root = zarr.open_group(str(out / "digits"), mode="r")
    train = root["train"]
    return dict(root.attrs), train["cls"][...].astype(np.float32), train["patches"][...].astype(np.float32), err


def digits_at(resolution: int, n: int = 40) -> torch.Tensor:
    """The first n digits of the train split as float RGB in [0, 1] at resolution x resolution (Table 1's resize)."""
    from twinturbo.extract.datasets import read_dataset_split

    images = read_dataset_split("digits", "train").read(0, n)
    x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255.0
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)


def within_fp16(stored: np.ndarray, reference: torch.Tensor) -> None:
    """The store's float16 values are the reference's up to float16 rounding (2^-11 relative) and fp32 noise."""
    reference = reference.detach().float().numpy()
    assert stored.shape == reference.shape
    assert np.abs(reference).max() > 0.1  # a real signal, not zeros on both sides
    np.testing.assert_allclose(stored, reference, rtol=2 ** -10, atol=1e-4)


def weight_files_id(paths: list[Path]) -> str:
    """sha256 over "name NUL sha256" lines of the weight files, in name order (the id hf:DIR records)."""
    lines = "".join(f"{p.name}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in sorted(paths))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def normalised(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_hf_vit_directory_gives_the_store_of_a_forward_by_hand(hf_vit_dir, tmp_path, capsys):
    from transformers import ViTImageProcessor, ViTModel

    attrs, cls, patches, err = extract_own(f"hf:{hf_vit_dir}", tmp_path / "features", capsys)
    assert attrs["backbone"] == f"hf:{hf_vit_dir}" and attrs["resolution"] == 32  # the config's image_size
    assert attrs["weights_id"] == weight_files_id([hf_vit_dir / "model.safetensors"])
    assert "note: " in err and "cls = the class token (token 0)" in err and "image processor's mean/std" in err
    processor = ViTImageProcessor.from_pretrained(hf_vit_dir)
    assert list(processor.image_mean) != [0.485, 0.456, 0.406]  # the fixture's own values, not ImageNet's
    reference = ViTModel.from_pretrained(hf_vit_dir).eval()
    with torch.no_grad():
        tokens = reference(normalised(digits_at(32), processor.image_mean, processor.image_std)).last_hidden_state
    assert tokens.shape == (40, 1 + 16, 32)
    within_fp16(cls, tokens[:, 0])
    within_fp16(patches, tokens[:, 1:])


def test_an_unreachable_hub_is_one_whole_line_at_once_and_a_cached_model_still_loads(hf_vit_dir, tmp_path,
                                                                                     monkeypatch):
    """Offline, a hub name is looked up in the local cache only (no five retries, one line each): a model there
    loads; one that is not is one line that says so, not cut in the middle of a URL."""
    import shutil
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens there now: connection refused
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("transformers.utils.hub.TRANSFORMERS_CACHE", str(tmp_path / "cache"), raising=False)
    started = time.perf_counter()
    with pytest.raises(TwinTurboError) as info:
        build_backbone("hf:someone/not-cached", BackboneOptions())
    message = str(info.value)
    assert time.perf_counter() - started < 10 and "\n" not in message
    assert message == (f"--backbone hf:someone/not-cached: could not load someone/not-cached (the Hugging Face hub "
                       f"(http://127.0.0.1:{port}) cannot be reached and someone/not-cached is not in the local "
                       "cache); offline, pass a directory written by save_pretrained as hf:DIR")
    snapshot = tmp_path / "cache" / "models--someone--tiny-vit" / "snapshots" / "0123abcd"  # the hub cache's layout
    shutil.copytree(hf_vit_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    backbone = build_backbone("hf:someone/tiny-vit", BackboneOptions())
    assert backbone.resolution == 32 and backbone.cls_dim == build_backbone(f"hf:{hf_vit_dir}", BackboneOptions()).cls_dim


def test_hf_vit_at_another_resolution_interpolates_its_position_embeddings(hf_vit_dir):
    from transformers import ViTModel

    backbone = build_backbone(f"hf:{hf_vit_dir}", BackboneOptions(resolution=48))
    assert (backbone.resolution, backbone.num_patches, backbone.patch_dim, backbone.cls_dim) == (48, 36, 32, 32)
    reference = ViTModel.from_pretrained(hf_vit_dir).eval()
    x = digits_at(48, n=4)
    with torch.no_grad():
        cls, patches = backbone(x)
        tokens = reference(normalised(x, (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)),
                           interpolate_pos_encoding=True).last_hidden_state
    torch.testing.assert_close(cls, tokens[:, 0])
    torch.testing.assert_close(patches, tokens[:, 1:])


@pytest.mark.parametrize("kind", ["dinov2-registers", "siglip"])
def test_hf_register_tokens_skipped_and_pooler_output_without_a_class_token(kind, tmp_path):
    """DINOv2 with 2 registers: cls = token 0, patches = the last 16 tokens; SigLIP has no class token: cls =
    pooler_output, patches = every token. Neither ships an image processor: ImageNet's mean/std."""
    import transformers

    with torch.random.fork_rng():
        torch.manual_seed(3)
        if kind == "siglip":
            model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
                image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2))
        else:
            model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
                image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                mlp_ratio=2, num_register_tokens=2))
    model.save_pretrained(tmp_path / kind)
    backbone = build_backbone(f"hf:{tmp_path / kind}")
    x = digits_at(32, n=4)
    with torch.no_grad():
        cls, patches = backbone(x)
        output = model.eval()(normalised(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    tokens = output.last_hidden_state
    assert backbone.num_patches == 16 and "ImageNet mean/std" in backbone.note
    if kind == "siglip":
        assert tokens.shape[1] == 16 and "pooler_output" in backbone.note
        torch.testing.assert_close(cls, output.pooler_output)
        torch.testing.assert_close(patches, tokens)
    else:
        assert tokens.shape[1] == 1 + 2 + 16 and "2 tokens after it (registers) skipped" in backbone.note
        torch.testing.assert_close(cls, tokens[:, 0])
        torch.testing.assert_close(patches, tokens[:, 3:])


def test_hf_model_with_its_own_code_needs_the_flag_then_gives_radio_summary_and_features(hf_remote_code_dir,
                                                                                       tmp_path, capsys):
    from transformers import AutoModel

    out = tmp_path / "features"
    code, err = run_extract(OWN_ARGS + ["--backbone", f"hf:{hf_remote_code_dir}", "--out", out], capsys)
    assert code == 2 and err.startswith("error: --backbone hf:") and err.count("\n") == 1, err
    assert "--trust-remote-code" in err and "Traceback" not in err and not out.exists()

    backbone = build_backbone(f"hf:{hf_remote_code_dir}", BackboneOptions(trust_remote_code=True))
    assert backbone.resolution == 32  # the config's preferred_resolution, as RADIO's config has it
    assert "summary" in backbone.note and "does not normalise" in backbone.note  # RADIO's processor: do_normalize false
    reference = AutoModel.from_pretrained(hf_remote_code_dir, trust_remote_code=True).eval()
    x = digits_at(32, n=4)
    with torch.no_grad():
        cls, patches = backbone(x)
        summary, features = reference(x)  # [0, 1] input: the model normalises itself
    torch.testing.assert_close(cls, summary)
    torch.testing.assert_close(patches, features)
    assert backbone.weights_id == weight_files_id([hf_remote_code_dir / "model.safetensors"])


def test_hub_dinov2_like_entry_gives_the_store_of_a_forward_by_hand(hub_dir, tmp_path, capsys):
    spec = "hub:someone/tiny-dinov2:tiny_dinov2"
    attrs, cls, patches, _ = extract_own(spec, tmp_path / "features", capsys, "--hub-dir", hub_dir)
    assert attrs["backbone"] == spec and attrs["resolution"] == 32  # the model's patch_embed.img_size
    reference = torch.hub.load(str(hub_dir), "tiny_dinov2", source="local")
    with torch.no_grad():
        features = reference.forward_features(normalised(digits_at(32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    assert features["x_norm_patchtokens"].shape == (40, 16, 16)  # the 2 register tokens are not patches
    within_fp16(cls, features["x_norm_clstoken"])
    within_fp16(patches, features["x_norm_patchtokens"])
    # the weights id is the state dict's: the same entry gives the same id, other weights another
    options = BackboneOptions(hub_dir=hub_dir)
    assert build_backbone(spec, options).weights_id == attrs["weights_id"]
    assert build_backbone("hub:someone/tiny-dinov2:tiny_dinov2_retrained", options).weights_id != attrs["weights_id"]


def test_hub_entry_returning_summary_and_features_like_radio(hub_dir):
    spec = "hub:someone/tiny-dinov2:tiny_summary"
    with pytest.raises(TwinTurboError, match="does not say its square input size; pass --resolution R"):
        build_backbone(spec, BackboneOptions(hub_dir=hub_dir))
    backbone = build_backbone(spec, BackboneOptions(hub_dir=hub_dir, resolution=16))
    reference = torch.hub.load(str(hub_dir), "tiny_summary", source="local")
    x = digits_at(16, n=4)
    with torch.no_grad():
        cls, patches = backbone(x)
        summary, features = reference(x)  # [0, 1] input, NCHW features
    assert (backbone.num_patches, backbone.patch_dim, backbone.cls_dim) == (4, 12, 24)
    torch.testing.assert_close(cls, summary)
    torch.testing.assert_close(patches, features.flatten(2).transpose(1, 2))


class TinyTokens(torch.nn.Module):
    """A researcher's own model for py:: takes [0, 1] RGB at its `resolution`, returns (cls, patches)."""

    resolution = 16

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 8, 4, 4)
        self.summary = torch.nn.Linear(8, 6)

    def forward(self, x):
        patches = self.embed(x - 0.5).flatten(2).transpose(1, 2)
        return self.summary(patches.mean(dim=1)), patches


def tiny_tokens(seed: int = 0) -> TinyTokens:
    """py:test_backbones:tiny_tokens, the factory of the test below (its weights fixed by the seed)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyTokens().eval()


def tiny_tokens_retrained() -> TinyTokens:
    return tiny_tokens(seed=1)


def test_py_factory_in_a_test_module_gives_the_store_of_a_forward_by_hand(tmp_path, capsys):
    attrs, cls, patches, _ = extract_own("py:test_backbones:tiny_tokens", tmp_path / "features", capsys)
    assert attrs["backbone"] == "py:test_backbones:tiny_tokens" and attrs["resolution"] == 16  # the model's own
    with torch.no_grad():
        want_cls, want_patches = tiny_tokens()(digits_at(16))
    assert want_patches.shape == (40, 16, 8)
    within_fp16(cls, want_cls)
    within_fp16(patches, want_patches)
    assert build_backbone("py:test_backbones:tiny_tokens").weights_id == attrs["weights_id"]
    assert build_backbone("py:test_backbones:tiny_tokens_retrained").weights_id != attrs["weights_id"]


USER_BACKBONE_MODULE = '''
import torch
from twinturbo.extract.backbones import Backbone


class Pooled(Backbone):
    """A user's Backbone: 4x4 average-pooled pixels as patches, their mean as cls."""

    def __init__(self):
        super().__init__()
        self.name, self.weights_id, self.resolution = "pooled", "none", 24
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, images):
        patches = torch.nn.functional.avg_pool2d(images, 4).flatten(2).transpose(1, 2) * self.scale
        return patches.mean(dim=1), patches


def build():
    return Pooled()
'''


def test_py_factory_from_the_current_directory_returning_a_backbone(tmp_path, monkeypatch):
    (tmp_path / "user_backbone_xyz.py").write_text(USER_BACKBONE_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(__import__("sys").modules, "user_backbone_xyz", raising=False)
    backbone = build_backbone("py:user_backbone_xyz:build")
    assert backbone.name == "py:user_backbone_xyz:build"  # the spec, so tt-predict can rebuild it
    assert (backbone.resolution, backbone.num_patches, backbone.patch_dim, backbone.cls_dim) == (24, 36, 3, 3)
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        cls, patches = backbone(x)
    torch.testing.assert_close(patches, 2 * F.avg_pool2d(x, 4).flatten(2).transpose(1, 2))
    torch.testing.assert_close(cls, patches.mean(dim=1))
    with pytest.raises(TwinTurboError, match="--resolution 32: the Backbone that py:user_backbone_xyz:build returns "
                                             "has resolution 24"):
        build_backbone("py:user_backbone_xyz:build", BackboneOptions(resolution=32))
    __import__("sys").modules.pop("user_backbone_xyz", None)


def test_own_backbone_errors_are_one_line_naming_the_option(hf_vit_dir, hub_dir, tmp_path, capsys):
    empty = tmp_path / "empty-hub"
    empty.mkdir()
    cases = [
        (["--backbone", "nonsense:thing"], "--backbone", "unknown backbone"),
        (["--backbone", f"hf:{tmp_path / 'missing'}"], "--backbone", "no directory"),
        (["--backbone", "hub:someone/tiny-dinov2:tiny_dinov2", "--hub-dir", empty], "--hub-dir", "no hubconf.py"),
        (["--backbone", "hub:someone/tiny-dinov2:no_entry", "--hub-dir", hub_dir], "--backbone",
         "no entry point 'no_entry'"),
        (["--backbone", "hub:tiny_dinov2", "--hub-dir", hub_dir], "--backbone", "expected hub:OWNER/REPO:ENTRY"),
        (["--backbone", "py:test_backbones:no_such_factory"], "--backbone", "no callable 'no_such_factory'"),
        (["--backbone", "py:no_such_module_xyz:build"], "--backbone", "no module 'no_such_module_xyz'"),
        (["--backbone", "py:test_backbones:TINY_TOKENS"], "--backbone", "no callable"),
        (["--backbone", "py:test_backbones:digits_at"], "--backbone", "digits_at() failed"),
        (["--backbone", f"hf:{hf_vit_dir}", "--resolution", "36"], "--resolution 36", "multiple of its patch size 8"),
    ]
    for args, option, words in cases:
        out = tmp_path / "features"
        code, err = run_extract(OWN_ARGS + ["--out", out, *args], capsys)
        assert code == 2 and err.startswith(f"error: {option}") and err.count("\n") == 1, (args, err)
        assert words in err and "Traceback" not in err and not out.exists(), (args, err)


def test_hf_without_transformers_installed_is_one_line(hf_vit_dir, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # import transformers now fails
    with pytest.raises(TwinTurboError, match=r"--backbone hf:.* needs the package transformers, which is not "
                                             r"installed: .*twinturbo\[hf\]"):
        build_backbone(f"hf:{hf_vit_dir}")


def test_hf_hub_name_loads_from_the_cache_offline_and_records_its_commit(hf_vit_dir, tmp_path):
    """hf:OWNER/NAME as the Hugging Face cache holds it (huggingface_hub's layout, HF_HUB_OFFLINE=1): the weights id is
    the name and the snapshot's commit."""
    import os
    import shutil
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub-cache" / "models--someone--tiny-vit"
    shutil.copytree(hf_vit_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = ("from twinturbo.extract.backbones import build_backbone\n"
            "backbone = build_backbone('hf:someone/tiny-vit')\n"
            "print(backbone.weights_id, backbone.resolution, backbone.num_patches)\n"
            "print(backbone.note)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub-cache"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ids, note = result.stdout.strip().splitlines()[-2:]
    assert ids == f"hf:someone/tiny-vit@{commit} 32 16"
    assert "image processor's mean/std" in note  # read from the cached snapshot too
