"""Augmented views in the store (extract/views.py, `tt-extract --views`): the policies, per-view randomness, the
layout (zarr, HDF5, int8), checksums and repair, and training that reads them (row groups as data)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import run_tt_extract
from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import FORMAT_VERSION, IDENTITY_KEYS, open_store
from twinturbo.common.hashing import canonical_json
from twinturbo.extract.cli import main as extract_main
from twinturbo.extract.views import STRONG, WEAK, ViewMaker, build_transform, flip_for, parse_views

BIN = Path(sys.executable).parent
# digits at 64 px through effnet-lite0:320 (2x2 patch tokens of 320), 96 + 48 samples, chunks of 16
BASE = ["--dataset", "digits", "--backbone", "effnet-lite0:320", "--resolution", "64", "--limit", "96",
        "--batch-size", "32", "--chunk-size", "16", "--device", "cpu", "--no-progress"]
VIEWS = ["--views", "weak:1,strong:2"]


run = run_tt_extract


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """The same digits extraction without views, with weak:1,strong:2 (zarr), and with them as HDF5 and int8."""
    out = tmp_path_factory.mktemp("views")
    made = {}
    for name, extra in (("plain", []), ("views", VIEWS), ("hdf5", VIEWS + ["--format", "hdf5"]),
                        ("int8", VIEWS + ["--dtype", "int8"])):
        extract_main([str(a) for a in BASE + extra + ["--out", out / name]])
        made[name] = out / name / ("digits.h5" if name == "hdf5" else "digits")
    return made


# ---- the policies ----------------------------------------------------------------------------------------------

def test_views_are_a_function_of_seed_image_and_view_not_of_the_batch():
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    spec = parse_views("weak:2,strong:2", "fashion-mnist")
    maker = ViewMaker(spec, store_seed=7)
    whole = maker(images, first_index=10)
    assert whole.shape == (4, 6, 28, 28, 1) and whole.dtype == np.uint8
    torch.manual_seed(123)  # the caller's global generator neither decides the views nor is changed by them
    state = torch.get_rng_state()
    parts = np.concatenate([maker(images[:2], 10), maker(images[2:], 12)], axis=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(whole, parts)
    assert not np.array_equal(whole, ViewMaker(spec, store_seed=8)(images, 10))  # another store seed
    assert not np.array_equal(whole[0], whole[1])  # two weak views of one image differ
    assert not np.array_equal(maker(images, 11)[0, 0], whole[0, 0])  # so do two images' draws


def test_weak_is_a_shift_within_an_eighth_and_strong_adds_randaugment_and_cutout():
    image = np.zeros((32, 32, 1), dtype=np.uint8)
    image[12:20, 12:20] = 255  # an 8x8 square in the middle
    spec = parse_views("weak:1,strong:1", "digits")
    assert [p for _, _, p in spec.entries] == [WEAK, STRONG]  # digits: no flip
    views = ViewMaker(spec, 0)(np.stack([image] * 64), 0)
    for weak in views[0]:
        rows, cols = np.nonzero(weak[..., 0] == 255)
        # the square moved by at most 4 px (12.5% of 32) and stayed whole (reflect padding mirrors only the border)
        assert len(rows) == 64 and abs(rows.min() - 12) <= 4 and abs(cols.min() - 12) <= 4
    grey = [(strong[..., 0] == 127).sum() for strong in views[1]]
    assert min(grey) >= 16 * 16  # the Cutout square, half the side, filled with 127
    assert len({v.tobytes() for v in views[1]}) == 64


def test_flips_by_dataset_and_option():
    assert flip_for("fashion-mnist", "auto") and flip_for("cifar10", "auto") and flip_for("folder:x", "auto")
    assert not any(flip_for(d, "auto") for d in ("digits", "mnist", "svhn"))
    assert flip_for("digits", "yes") and not flip_for("cifar10", "no")
    with pytest.raises(TwinTurboError, match="--view-flip maybe: expected one of auto, yes, no"):
        flip_for("digits", "maybe")
    transform = build_transform(parse_views("weak:1", "cifar10").entries[0][2], 32, 32)
    assert "RandomHorizontalFlip" in repr(transform)


@pytest.mark.parametrize("text, words", [("blurry:2", "unknown policy 'blurry'"), ("weak:0", "needs a count"),
                                         ("weak", "needs a count"), ("weak:1,weak:2", "named twice")])
def test_bad_views_option_is_one_line_and_writes_nothing(text, words, tmp_path, capsys):
    code, _, err = run(BASE + ["--views", text, "--out", tmp_path], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and words in err and "Traceback" not in err, err
    assert not any(tmp_path.iterdir())


# ---- the store -------------------------------------------------------------------------------------------------

def test_a_store_with_views_has_its_view_axis_and_the_clean_tokens_of_a_store_without(stores):
    plain, views = zarr.open_group(str(stores["plain"]), mode="r"), zarr.open_group(str(stores["views"]), mode="r")
    assert plain.attrs["format_version"] == FORMAT_VERSION == 1 and "views" not in plain.attrs
    assert views.attrs["format_version"] == 2
    assert [(v["name"], v["count"], v["policy"]["flip"]) for v in views.attrs["views"]] == [("weak", 1, False),
                                                                                           ("strong", 2, False)]
    train = views["train"]
    assert train["views_cls"].shape == (96, 3, 1280) and train["views_patches"].shape == (96, 3, 4, 320)
    assert train["views_cls"].chunks == (16, 3, 1280)
    assert "views_cls" not in views["test"]  # the test split never gets views
    for split in ("train", "test"):
        for name in ("cls", "patches", "labels"):
            assert np.array_equal(plain[split][name][...], views[split][name][...]), (split, name)
    # a weak view is closer to its clean image than a strong one, on average (cosine of the CLS tokens)
    clean = train["cls"][...].astype(np.float64)
    viewed = train["views_cls"][...].astype(np.float64)

    def cosine(a, b):
        return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)

    weak, strong = cosine(clean, viewed[:, 0]).mean(), cosine(clean[:, None], viewed[:, 1:]).mean()
    assert weak > strong + 0.05, (weak, strong)


def test_a_store_without_views_keeps_its_fingerprint(stores):
    """The identity of a store without views hashes exactly what it hashed before views existed, so committed sweeps
    (whose run ids hold the fingerprint) still match their store."""
    import hashlib

    with open_store(stores["plain"]) as store:
        attrs = store.attrs
        before = {k: attrs.get(k) for k in IDENTITY_KEYS + ("source_checksums",)}
        expected = hashlib.sha256(canonical_json(before).encode()).hexdigest()[:16]
        assert store.identity()["fingerprint"] == expected
    with open_store(stores["views"]) as store:
        assert store.identity()["fingerprint"] != expected


def test_hdf5_and_int8_stores_hold_the_same_views(stores):
    with open_store(stores["views"]) as zs, open_store(stores["hdf5"]) as hs, open_store(stores["int8"]) as qs:
        cls, patches = zs.split("train").read_views(0, 96)
        h_cls, h_patches = hs.split("train").read_views(0, 96)
        q_cls, q_patches = qs.split("train").read_views(0, 96)
        assert np.array_equal(cls, h_cls) and np.array_equal(patches, h_patches)
        assert np.array_equal(cls, q_cls)
        assert qs.split("train").view_kinds == {"weak": (0, 1), "strong": (1, 2)}
    raw = zarr.open_group(str(stores["int8"]), mode="r")["train"]
    assert raw["views_patches"].dtype == np.int8 and raw["views_patch_scales"].shape == (96, 3, 4)
    scale = raw["views_patch_scales"][...].astype(np.float32)[..., None]
    dequantised = raw["views_patches"][...].astype(np.float32) * scale
    assert (np.abs(dequantised - patches.astype(np.float32)) <= scale / 2 * (1 + 1e-6)).all()
    assert np.array_equal(q_patches, dequantised.astype(np.float16))  # the reader dequantises as for clean tokens


def test_a_damaged_view_chunk_is_named_and_repaired_byte_for_byte(stores, tmp_path, capsys, same_stores):
    path = tmp_path / "digits"
    shutil.copytree(stores["views"], path)
    chunk = path / "train" / "views_patches" / "c" / "2" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[100:108] = b"\x00\x3c" * 4  # four float16 1.0s: finite, only the checksum can tell
    chunk.write_bytes(bytes(data))
    code, _, err = run(["--verify", path, "--no-progress"], capsys)
    assert code == 2 and "split 'train', views_patches chunk 2 (samples 32-47)" in err, err
    code, out, err = run(["--verify", path, "--repair", "--no-progress"], capsys)
    assert code == 0 and "repair: 1 chunk(s) marked not done" in out, err
    code, _, err = run(BASE + VIEWS + ["--out", tmp_path], capsys)
    assert code == 0, err
    same_stores(path, stores["views"])


def test_resuming_with_other_views_is_refused(stores, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(stores["views"], out / "digits")
    code, _, err = run(BASE + ["--views", "weak:2", "--out", out], capsys)
    assert code == 2 and "views: store has" in err and "--overwrite" in err, err


# ---- training on views -------------------------------------------------------------------------------------------

TRAIN = ["--labels", "20", "--epochs", "2", "--batch-size", "16", "--proj-dim", "16", "--pred-dim", "8",
         "--disc-dim", "4", "--device", "cpu", "--quiet", "--precision", "fp32"]


def tt_train(store: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tt-train"), "--features", str(store), "--out", str(out), *TRAIN, *extra],
                          capture_output=True, text=True, timeout=600)


def test_fixmatch_trains_on_views_and_is_one_line_on_a_store_without(stores, tmp_path):
    result = tt_train(stores["views"], tmp_path / "fix", "--fixmatch", "1")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "fix" / "metrics.json").read_text())
    assert set(metrics["epochs"][0]["mean_losses"]) == {"task", "fixmatch", "total"}
    refused = tt_train(stores["plain"], tmp_path / "none", "--fixmatch", "1")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(f"error: --fixmatch reads the strong and weak views of its samples and "
                                     f"{stores['plain']} holds no views"), refused.stderr
    assert not (tmp_path / "none").exists()


def test_a_run_without_view_terms_is_bit_identical_on_a_store_with_views(stores, tmp_path):
    """The clean tokens are the same and a run that reads no view draws nothing more: same metrics, same weights."""
    runs = []
    for name in ("plain", "views"):
        result = tt_train(stores[name], tmp_path / name, "--critic", "0.5", "--latent", "0.5")
        assert result.returncode == 0, result.stderr
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        runs.append(({k: v for k, v in metrics.items() if k not in ("wall_time_s", "store")},
                     torch.load(tmp_path / name / "head.pt", weights_only=True)["state_dict"]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_a_view_group_gathers_the_stored_view_each_row_drew(stores):
    from twinturbo.train.run.data import load_split
    from twinturbo.train.run.sampling import draw_views
    from twinturbo.train.run.step import StepBatch

    with open_store(stores["views"]) as store:
        split = load_split(store, "train", torch.device("cpu"), progress=False, views=True)
        views_cls, _ = store.split("train").read_views(0, 96)
        clean_cls, _ = store.split("train").read(0, 96)
    index = torch.tensor([3, 5, 3, 7])
    weak = draw_views(split.view_kinds, "weak", 4, torch.Generator().manual_seed(0))
    strong = draw_views(split.view_kinds, "strong", 4, torch.Generator().manual_seed(1))
    assert (weak == 0).all() and ((strong >= 1) & (strong <= 2)).all()
    batch = StepBatch.gather(split, torch.device("cpu"), {"labelled": index, "unlabelled:weak": index,
                                                          "unlabelled:strong": index},
                             views={"unlabelled:weak": weak, "unlabelled:strong": strong})
    for group, expected in (("labelled", clean_cls[index.numpy()]),
                            ("unlabelled:weak", views_cls[index.numpy(), weak.numpy()]),
                            ("unlabelled:strong", views_cls[index.numpy(), strong.numpy()])):
        got = batch.cls[batch.rows[group]].numpy()
        assert np.array_equal(got, expected.astype(np.float32)), group
    assert len(batch.cls) == len({(int(i), -1) for i in index} | {(int(i), int(v)) for i, v in zip(index, weak)}
                                 | {(int(i), int(v)) for i, v in zip(index, strong)})


def test_fused_runs_share_their_view_draws_and_equal_separate_runs(stores):
    """Two FixMatch runs fused in one pass see the same views (the draws are their seed's) and give what each gives
    alone; a run's draws do not depend on whom it is fused with."""
    from dataclasses import replace

    from twinturbo.common.device import Acceleration
    from twinturbo.train.config import TrainConfig
    from twinturbo.train.run.data import load_split
    from twinturbo.train.run.loop import train_runs

    with open_store(stores["views"]) as store:
        splits = [load_split(store, name, torch.device("cpu"), False, views=True) for name in ("train", "test")]
    config = TrainConfig(labels=20, epochs=2, batch_size=16, proj_dim=16, pred_dim=8, disc_dim=4, warmup_steps=2,
                         lr=1e-3, fixmatch_weight=1.0, fixmatch_threshold=0.11, precision="fp32")
    other = replace(config, fixmatch_weight=3.0, fixmatch_threshold=0.15)  # 10 classes: barely above chance
    plain = Acceleration()
    fused = train_runs([config, other], *splits, 10, torch.device("cpu"), False, plain)
    alone = [train_runs([c], *splits, 10, torch.device("cpu"), False, plain)[0] for c in (config, other)]
    for together, single in zip(fused, alone):
        for a, b in zip(together.metrics["epochs"], single.metrics["epochs"]):
            for name, value in a["mean_losses"].items():
                assert value == pytest.approx(b["mean_losses"][name], rel=1e-4, abs=1e-6), name
    assert fused[0].metrics["epochs"][-1]["mean_losses"]["fixmatch"] != \
        fused[1].metrics["epochs"][-1]["mean_losses"]["fixmatch"]


def test_a_streamed_split_serves_the_stored_views_of_every_step(stores):
    """Beyond --memory-limit the train split is streamed: the shuffle buffer and the labelled subset carry each
    sample's views, and every step's view rows equal the store's."""
    from twinturbo.train.run.data import load_split
    from twinturbo.train.run.stream import StreamedSplit

    with open_store(stores["int8"]) as store:
        whole = load_split(store, "train", torch.device("cpu"), progress=False, views=True)
        streamed = StreamedSplit(store.split("train"), memory_limit=2**24, buffer_chunks=2, views=True)
        assert streamed.view_kinds == whole.view_kinds == {"weak": (0, 1), "strong": (1, 2)}
        generator, choices = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
        subset = torch.arange(0, 96, 9)
        for _ in range(2):
            plan = streamed.epoch_plan(subset, 16, generator)
            for unlabelled, labelled in zip(plan.unlabelled, plan.labelled):
                index = torch.cat([labelled, unlabelled])
                views = torch.randint(-1, 3, (len(index),), generator=choices)  # -1: the clean tokens
                got = streamed.batch(index, torch.device("cpu"), views)
                expected = whole.batch(index, torch.device("cpu"), views)
                assert all(torch.equal(a, b) for a, b in zip(got, expected))
                streamed.consumed(unlabelled)
