"""tt-extract end to end on real data (sklearn digits, the packaged EfficientNet-Lite0 weights) at low resolution:
stores that reopen with plain zarr/h5py, the numbers against an independent forward, resume after SIGKILL,
torchrun with 2 gloo processes, int8 tokens, --verify, refusal of a mismatched store, and bad inputs."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from click.testing import CliRunner

from conftest import run_tt_extract
from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import chunk_digest, open_store
from twinturbo.extract.cli import main

BIN = Path(sys.executable).parent
TT_EXTRACT = str(BIN / "tt-extract")
# 80 samples per split in chunks of 16: 5 chunks, the last batch of 32 half full. At 64 px EfficientNet-Lite0 gives
# 2x2 patch tokens; at 32 px its 1x1 map is all zeros for most digits (ReLU6 on a degenerate input).
SMALL = ["--dataset", "digits", "--backbone", "effnet-lite0", "--resolution", "64", "--limit", "80",
         "--batch-size", "32", "--chunk-size", "16", "--device", "cpu", "--no-progress"]
ARRAYS = ("cls", "patches", "labels", "done")


def with_option(args: list[str], option: str, value: str) -> list[str]:
    """`args` with the value after `option` replaced."""
    i = args.index(option)
    return args[:i + 1] + [value] + args[i + 2:]


run_cli = run_tt_extract


def plain_zarr(path: Path, split: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")[split]
    return {name: array[...] for name, array in group.arrays()}


def assert_same_store(a: Path, b: Path, splits=("train", "test")) -> None:
    for split in splits:
        left, right = plain_zarr(a, split), plain_zarr(b, split)
        assert sorted(left) == sorted(right)
        for name in left:
            assert left[name].dtype == right[name].dtype, name
            assert np.array_equal(left[name], right[name]), f"{split}/{name} differs"


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


# CPU kernels may round differently with another number of threads (oneDNN picks its algorithm by batch and thread
# count), so every process compared byte for byte with this one runs with this process's thread count.
THREADS = {}


def same_threads_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(THREADS.get("small_store", torch.get_num_threads()))
    return env


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    """digits, 80 + 80 samples, effnet-lite0 at 64 px, zarr; tests copy it before changing it."""
    out = tmp_path_factory.mktemp("features")
    THREADS["small_store"] = torch.get_num_threads()
    main(SMALL + ["--out", str(out)])
    return out / "digits"


def independent_features(images: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The backbone run by hand: bilinear resize of [0, 1] floats, grey to RGB, fp32 forward, no tt-extract code."""
    from twinturbo.extract.backbones import BackboneOptions, build_backbone

    backbone = build_backbone("effnet-lite0", BackboneOptions(resolution=resolution))
    x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255.0
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    with torch.no_grad():
        cls, patches = backbone(x)
    return cls.numpy(), patches.numpy()


def test_digits_store_reopens_with_plain_zarr_and_holds_the_backbone_features(small_store):
    from twinturbo.extract.datasets import read_dataset_split

    root = zarr.open_group(str(small_store), mode="r")
    attrs = dict(root.attrs)
    assert attrs["dataset"] == "digits" and attrs["backbone"] == "effnet-lite0" and attrs["resolution"] == 64
    assert attrs["class_names"] == [str(d) for d in range(10)] and attrs["n"] == {"train": 80, "test": 80}
    assert attrs["patch_dtype"] == "float16" and attrs["chunk_size"] == 16 and attrs["batch_size"] == 32
    assert "--limit 80" in attrs["command"] and attrs["created"] and len(attrs["weights_id"]) == 16
    assert set(attrs["source_checksums"]) == {"train", "test"}
    for split in ("train", "test"):
        arrays = plain_zarr(small_store, split)
        assert arrays["cls"].shape == (80, 1280) and arrays["cls"].dtype == np.float16
        assert arrays["patches"].shape == (80, 4, 1280) and arrays["patches"].dtype == np.float16
        assert arrays["labels"].dtype == np.int64 and arrays["done"].tolist() == [True] * 5
        data = read_dataset_split("digits", split)
        np.testing.assert_array_equal(arrays["labels"], data.labels[:80])
    # Numbers: the first and the last batch against a forward written independently here (another batch size, so
    # only float-rounding differences are allowed).
    data = read_dataset_split("digits", "train")
    for lo, hi in ((0, 8), (72, 80)):
        cls, patches = independent_features(data.read(lo, hi), 64)
        arrays = plain_zarr(small_store, "train")
        np.testing.assert_allclose(arrays["cls"][lo:hi].astype(np.float32), cls, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(arrays["patches"][lo:hi].astype(np.float32), patches, rtol=2e-3, atol=2e-3)
    assert np.abs(arrays["cls"].astype(np.float32)).max() > 0.1  # not an all-zero store


def test_bf16_extraction_path_runs_on_the_cpu_close_to_fp32(small_store):
    """The branch a GPU takes (bf16 autocast of the backbone, chosen by Acceleration) on the CPU: float16 tokens within
    bf16's rounding of the fp32 store; by default the CPU extracts in fp32, bit-equal to the store."""
    from twinturbo.extract.backbones import BackboneOptions, build_backbone
    from twinturbo.extract.datasets import read_dataset_split
    from twinturbo.extract.extract import forward_features, prepare_images

    backbone = build_backbone("effnet-lite0", BackboneOptions(resolution=64))
    images = prepare_images(read_dataset_split("digits", "train").read(0, 16), 64, torch.device("cpu"))
    stored = plain_zarr(small_store, "train")
    cls_fp32, patches_fp32 = forward_features(backbone, images)
    np.testing.assert_array_equal(cls_fp32.numpy(), stored["cls"][:16])
    cls, patches = forward_features(backbone, images, bf16=True)
    assert cls.dtype == patches.dtype == torch.float16
    assert not torch.equal(cls, cls_fp32)  # the autocast really ran
    for low, full in ((cls, cls_fp32), (patches, patches_fp32)):
        error = (low.float() - full.float()).norm() / full.float().norm()
        assert error < 0.05, float(error)


def test_hdf5_store_reopens_with_plain_h5py_and_equals_the_zarr_store(small_store, tmp_path, capsys):
    code, out, err = run_cli(SMALL + ["--out", tmp_path, "--format", "hdf5", "--splits", "test"], capsys)
    assert code == 0, err
    path = tmp_path / "digits.h5"
    with h5py.File(path, "r") as f:
        assert f.attrs["backbone"] == "effnet-lite0" and int(f.attrs["resolution"]) == 64
        assert list(f.keys()) == ["test"]
        for split in ("test",):
            assert f[split]["cls"].shape == (80, 1280) and f[split]["patches"].dtype == np.float16
            reference = plain_zarr(small_store, split)
            for name in ARRAYS:
                assert np.array_equal(f[split][name][...], reference[name]), name
    code, out, _ = run_cli(["--no-progress", "--verify", path], capsys)
    assert code == 0 and "N=80" in out


def test_mnist_files_grey_images_become_rgb_features(mnist_raw, tmp_path, capsys):
    code, _, err = run_cli(["--dataset", "mnist", "--data-root", mnist_raw.root, "--backbone", "effnet-lite0",
                            "--resolution", "64", "--out", tmp_path, "--batch-size", "16", "--chunk-size", "16",
                            "--device", "cpu", "--no-progress"], capsys)
    assert code == 0, err
    arrays = plain_zarr(tmp_path / "mnist", "test")
    np.testing.assert_array_equal(arrays["labels"], mnist_raw.labels["test"])
    cls, _ = independent_features(mnist_raw.images["test"][:4], 64)
    np.testing.assert_allclose(arrays["cls"][:4].astype(np.float32), cls, rtol=2e-3, atol=2e-3)


def test_verify_passes_a_complete_store_and_fails_an_incomplete_or_nan_one(small_store, tmp_path, capsys):
    code, out, err = run_cli(["--no-progress", "--verify", small_store], capsys)
    assert code == 0, err
    assert "train: N=80 cls=(80, 1280)" in out and "test: N=80" in out and "0:" in out

    incomplete = tmp_path / "incomplete"
    shutil.copytree(small_store, incomplete)
    zarr.open_group(str(incomplete), mode="r+")["test"]["done"][3] = False
    code, _, err = run_cli(["--no-progress", "--verify", incomplete], capsys)
    assert_one_line_error(code, err, "incomplete", "4/5")
    with pytest.raises(TwinTurboError, match="incomplete"):
        open_store(incomplete).require_complete()

    tampered = tmp_path / "tampered"
    shutil.copytree(small_store, tampered)
    # A NaN the backbone wrote at extraction: its chunk's checksum was computed over it, so only the NaN check sees it.
    train = zarr.open_group(str(tampered), mode="r+")["train"]
    train["patches"][37, 0, 5] = np.nan
    column = list(train.attrs["checksum_arrays"]).index("patches")
    train["checksums"][2, column] = chunk_digest(train["patches"][32:48])
    code, _, err = run_cli(["--no-progress", "--verify", tampered], capsys)
    assert_one_line_error(code, err, "NaN", "sample 37")

    code, _, err = run_cli(["--no-progress", "--verify", tmp_path / "nowhere"], capsys)
    assert_one_line_error(code, err, "does not exist")


def test_constant_features_are_counted_recorded_and_named_by_extract_verify_and_train(small_store, tmp_path, capsys):
    """EfficientNet-Lite0 at 32 px sees a 1x1 map: most digits come out as an all-zero CLS vector. tt-extract says so
    in one warning line per split and array (the count checked against one made here with np.ptp), records the counts
    in the store, --verify recounts them, tt-train repeats the warning; the 64 px store has none."""
    from twinturbo.train.cli import train_main

    code, _, err = run_cli(["--dataset", "digits", "--backbone", "effnet-lite0", "--resolution", "32", "--out",
                            tmp_path, "--device", "cpu", "--no-progress"], capsys)
    assert code == 0, err
    store = tmp_path / "digits"
    counts = {}
    for split in ("train", "test"):
        cls = plain_zarr(store, split)["cls"].astype(np.float32)
        counts[split] = (int((np.ptp(cls, axis=1) == 0).sum()), len(cls))
        assert counts[split][0] > len(cls) // 2, counts  # the case the warning is for
    for split, (dead, total) in counts.items():
        said = [line for line in err.splitlines() if line.startswith(f"warning: {split}: {dead} of {total} CLS vectors")]
        assert len(said) == 1 and "--resolution 32, too small for effnet-lite0" in said[0], err
    assert zarr.open_group(str(store), mode="r").attrs["liveness"]["train"]["cls"] == list(counts["train"])

    code, out, err = run_cli(["--no-progress", "--verify", store], capsys)
    assert code == 0 and f"CLS vectors {counts['test'][0]} of {counts['test'][1]}" in out
    assert f"warning: train: {counts['train'][0]} of {counts['train'][1]} CLS vectors" in err

    result = CliRunner().invoke(train_main, ["--features", str(store), "--labels", "20", "--epochs", "1",
                                             "--batch-size", "64", "--proj-dim", "16", "--pred-dim", "8",
                                             "--disc-dim", "4", "--device", "cpu", "--quiet", "--out",
                                             str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"warning: train: {counts['train'][0]} of {counts['train'][1]} CLS vectors" in result.stderr

    code, out, err = run_cli(["--no-progress", "--verify", small_store], capsys)
    assert code == 0 and "CLS vectors 0 of 80" in out and "warning" not in err, err


def test_rerun_is_a_no_op_and_a_mismatched_store_is_refused_until_overwrite(small_store, tmp_path, capsys):
    out = tmp_path / "features"
    shutil.copytree(small_store, out / "digits")
    code, stdout, err = run_cli(SMALL + ["--out", out], capsys)
    assert code == 0 and "already complete" in stdout, err
    assert_same_store(out / "digits", small_store)

    code, _, err = run_cli(with_option(SMALL, "--resolution", "96") + ["--out", out], capsys)
    assert_one_line_error(code, err, "resolution", "--overwrite")
    assert_same_store(out / "digits", small_store)  # refused means untouched

    smaller = with_option(with_option(SMALL, "--resolution", "96"), "--limit", "16")
    code, _, err = run_cli(smaller + ["--out", out, "--overwrite", "--splits", "test"], capsys)
    assert code == 0, err
    replaced = zarr.open_group(str(out / "digits"), mode="r")
    assert replaced.attrs["resolution"] == 96 and replaced["test"]["patches"].shape == (16, 9, 1280)
    assert "train" not in replaced  # replaced, not merged


def _spawn(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.parametrize("views", [[], ["--views", "weak:1,strong:2"]], ids=["clean", "with-views"])
def test_resume_after_sigkill_in_the_middle_of_a_split_is_byte_identical(views, tmp_path, capsys):
    args = ["--dataset", "digits", "--backbone", "effnet-lite0", "--resolution", "64", "--splits", "train",
            "--limit", "192", "--batch-size", "32", "--chunk-size", "16", "--device", "cpu", "--no-progress", *views]
    total = 12  # chunks of 16; batches of 32 write them 2 at a time
    killed_out = tmp_path / "killed"
    done_dir = killed_out / "digits" / "train" / "done" / "c"
    # The killed run's chunks are compared with chunks computed in this process: same thread count.
    process = _spawn([TT_EXTRACT] + args + ["--out", str(killed_out)],
                     env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            written = len(list(done_dir.iterdir())) if done_dir.is_dir() else 0
            if 2 <= written <= total - 4:
                break
            time.sleep(0.005)
        assert process.poll() is None, "extraction finished before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    done = zarr.open_group(str(killed_out / "digits"), mode="r")["train"]["done"][...]
    assert 0 < done.sum() < total, done.sum()
    with pytest.raises(TwinTurboError, match="incomplete"):
        open_store(killed_out / "digits").require_complete()
    code, out, err = run_cli(args + ["--out", killed_out], capsys)
    assert code == 0, err
    # Whole batches of 2 chunks are skipped; a batch with one chunk done is recomputed (its done chunk not rewritten).
    skipped = 32 * int(done.reshape(-1, 2).all(axis=1).sum())
    assert f"computed {192 - skipped} images" in out  # only the chunks not done

    code, _, err = run_cli(args + ["--out", tmp_path / "whole"], capsys)
    assert code == 0, err
    assert_same_store(killed_out / "digits", tmp_path / "whole" / "digits", splits=("train",))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = same_threads_env()  # torchrun alone would set OMP_NUM_THREADS=1
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), TT_EXTRACT] + args
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_torchrun_two_gloo_processes_write_the_same_bytes_and_resume_per_chunk(small_store, tmp_path):
    # A store that lost every train chunk and some test chunks of both ranks (batch b of 2 chunks goes to rank
    # b % 2: test chunk 0 -> rank 0, chunk 3 -> rank 1, chunk 4 -> rank 0): data zeroed, flags cleared. The same
    # command under torchrun recomputes exactly those, each rank its own batches, into the bytes of one process.
    out = tmp_path / "ranks"
    shutil.copytree(small_store, out / "digits")
    group = zarr.open_group(str(out / "digits"), mode="r+")
    lost = {"train": [0, 1, 2, 3, 4], "test": [0, 3, 4]}
    for split, chunks in lost.items():
        for k in chunks:
            group[split]["cls"][16 * k:16 * (k + 1)] = 0
            group[split]["patches"][16 * k:16 * (k + 1)] = 0
            group[split]["done"][k] = False
    result = _torchrun(SMALL + ["--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("train: N=80") == 1  # only rank 0 prints the summary
    # Test batches 0 and 1 are recomputed whole (each lost one of its 2 chunks), batch 2 is chunk 4: 80 images.
    assert "train: computed 80 images" in result.stdout and "test: computed 80 images" in result.stdout
    assert_same_store(out / "digits", small_store)


def test_hdf5_under_torchrun_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _, err = run_cli(SMALL + ["--out", tmp_path, "--format", "hdf5"], capsys)
    assert_one_line_error(code, err, "--format hdf5", "several processes")
    assert not any(tmp_path.iterdir())


def test_int8_patches_round_trip_within_half_a_scale_and_halve_the_store(small_store, tmp_path, capsys):
    out = tmp_path / "int8"
    code, _, err = run_cli(SMALL + ["--out", out, "--dtype", "int8", "--splits", "train"], capsys)
    assert code == 0, err
    for split in ("train",):
        q = plain_zarr(out / "digits", split)
        reference = plain_zarr(small_store, split)
        assert q["patches"].dtype == np.int8 and q["patch_scales"].dtype == np.float16
        assert q["patch_scales"].shape == (80, 4) and q["patches"].shape == (80, 4, 1280)
        np.testing.assert_array_equal(q["cls"], reference["cls"])
        scale = q["patch_scales"].astype(np.float32)[..., None]
        dequantised = q["patches"].astype(np.float32) * scale
        error = np.abs(dequantised - reference["patches"].astype(np.float32))
        assert (error <= scale / 2 * (1 + 1e-6)).all(), (error - scale / 2).max()
        assert (np.abs(q["patches"]).max(axis=-1) == 127).all()  # absmax: every token uses the full range
        # Readers dequantise transparently (float16 of the exact product).
        with open_store(out / "digits") as store:
            read = store.split(split).read_patches(0, 80)
        assert read.dtype == np.float16
        np.testing.assert_array_equal(read, dequantised.astype(np.float16))

    def patch_bytes(store: Path, *names: str) -> int:
        return sum(p.stat().st_size for name in names for p in (store / "train" / name / "c").rglob("*") if p.is_file())

    int8_bytes = patch_bytes(out / "digits", "patches", "patch_scales")
    fp16_bytes = patch_bytes(small_store, "patches")
    assert 0.49 < int8_bytes / fp16_bytes < 0.52, (int8_bytes, fp16_bytes)


@pytest.mark.parametrize("args, words", [
    (["--dataset", "imagenet"], ["unknown dataset", "imagenet"]),
    (["--dataset", "digits", "--backbone", "resnet50"], ["--backbone", "unknown backbone"]),
    (["--dataset", "digits", "--resolution", "33"], ["--resolution 33", "multiple of 32"]),
    (["--dataset", "digits", "--format", "parquet"], ["--format parquet", "zarr"]),
    (["--dataset", "digits", "--dtype", "bfloat16"], ["--dtype bfloat16", "int8"]),
    (["--dataset", "digits", "--splits", "train,val"], ["--splits", "val"]),
    (["--dataset", "digits", "--limit", "0"], ["--limit 0"]),
    (["--dataset", "digits", "--batch-size", "many"], ["--batch-size"]),
    (["--dataset", "mnist"], ["mnist", "train-images-idx3-ubyte.gz"]),
    (["--out", "x"], ["--dataset"]),
    pytest.param(["--dataset", "digits", "--device", "cuda"], ["--device cuda", "not available"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_input_is_one_line_on_stderr_and_leaves_no_store(args, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["--backbone", "effnet-lite0", "--resolution", "32", "--out", "features", "--data-root", "raw",
            "--device", "cpu", "--no-progress"]
    code, _, err = run_cli(base + args, capsys)
    assert_one_line_error(code, err, *words)
    assert not any((tmp_path / "features").glob("*"))


def test_corrupt_dataset_file_is_one_line_and_leaves_no_store(mnist_raw, tmp_path, capsys):
    (mnist_raw.root / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    code, _, err = run_cli(["--dataset", "mnist", "--data-root", mnist_raw.root, "--backbone", "effnet-lite0",
                            "--resolution", "32", "--out", tmp_path, "--device", "cpu", "--no-progress"], capsys)
    assert_one_line_error(code, err, "t10k-images-idx3-ubyte.gz")
    assert not (tmp_path / "mnist").exists()


def test_bad_input_in_a_real_process_prints_no_traceback(tmp_path):
    result = subprocess.run([TT_EXTRACT, "--dataset", "imagenet", "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert_one_line_error(result.returncode, result.stderr, "imagenet")


# ---- hf: datasets (issue 29) -------------------------------------------------------------------------------------


def hf_args(root: Path, out: Path) -> list:
    return ["--dataset", f"hf:{root}", "--backbone", "effnet-lite0", "--resolution", "32", "--batch-size", "8",
            "--chunk-size", "4", "--device", "cpu", "--no-progress", "--out", out]


def test_hf_dataset_store_has_its_labels_class_names_and_checksums_and_resumes(hf_dataset_raw, write_hf_dataset_dict,
                                                                                tmp_path, capsys):
    out = tmp_path / "features"
    code, _, err = run_cli(hf_args(hf_dataset_raw.root, out), capsys)
    assert code == 0, err
    root = zarr.open_group(str(out / "shapes"), mode="r")
    assert root.attrs["dataset"] == f"hf:{hf_dataset_raw.root}"
    assert root.attrs["class_names"] == ["cat", "dog", "bird"]  # the ClassLabel's names, in its order
    for split in ("train", "test"):
        np.testing.assert_array_equal(root[split]["labels"][...], hf_dataset_raw.labels[split])
        arrow = hf_dataset_raw.root / split / "data-00000-of-00001.arrow"
        assert root.attrs["source_checksums"][split] == {
            f"{split}/{arrow.name}": hashlib_sha256(arrow)}

    code, stdout, err = run_cli(hf_args(hf_dataset_raw.root, out), capsys)
    assert code == 0 and stdout.count("already complete") == 2, err
    shutil.rmtree(hf_dataset_raw.root)
    write_hf_dataset_dict(hf_dataset_raw.root, seed=5)  # same shapes and sizes, other images
    code, _, err = run_cli(hf_args(hf_dataset_raw.root, out), capsys)
    assert_one_line_error(code, err, "other source files", "--overwrite")


def hashlib_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hf_dataset_with_an_undecodable_image_is_refused_before_anything_is_written(write_hf_dataset_dict, tmp_path,
                                                                                     capsys):
    raw = write_hf_dataset_dict(tmp_path / "shapes", corrupt={"test": 4})
    out = tmp_path / "features"
    code, _, err = run_cli(hf_args(raw.root, out), capsys)
    assert_one_line_error(code, err, "1 of 6 images of split 'test' (column image) cannot be read: row 4 (cannot "
                          "identify image file (its bytes))",
                          "nothing was written")
    assert not out.exists()


def test_hf_options_belong_to_hf_datasets(tmp_path, capsys):
    code, _, err = run_cli(SMALL + ["--out", tmp_path, "--test-split", "validation"], capsys)
    assert_one_line_error(code, err, "--test-split applies to hf: datasets only")


def test_transformers_and_datasets_are_imported_only_for_hf_specs(tmp_path):
    """Without an hf: spec, tt-extract never imports the hf extra's libraries (they are optional)."""
    code = ("import sys\n"
            "from twinturbo.extract.cli import main\n"
            "try:\n"
            f"    main({SMALL!r} + ['--limit', '16', '--splits', 'test', '--out', {str(tmp_path)!r}])\n"
            "except SystemExit as exit_:\n"
            "    assert not exit_.code, exit_.code\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'transformers', 'datasets'}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=same_threads_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
