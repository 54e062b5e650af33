"""Faults on the way in, each one line with nothing lost (bench/README.md, "Faults"): damaged chunks named and
repaired, training refusing a damaged chunk, a full disk (zarr and HDF5), bad image folders, options checked before
anything is written, Ctrl-C with the resume hint."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import default_sigint, run_tt_extract
from twinturbo.extract.cli import main as extract_main

BIN = Path(sys.executable).parent
# digits, 80 + 80 samples in chunks of 16 (5 chunks per split): seconds to extract at 64 px
SMALL = ["--dataset", "digits", "--backbone", "effnet-lite0:320", "--resolution", "64", "--limit", "80",
         "--batch-size", "32", "--chunk-size", "16", "--device", "cpu", "--no-progress"]


run = run_tt_extract


def one_line_error(code, err: str, *words: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("damaged: ")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module", params=["zarr", "hdf5"])
def clean_store(request, tmp_path_factory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(f"clean-{request.param}")
    extract_main(SMALL + ["--out", str(out), "--format", request.param])
    return request.param, out / ("digits.h5" if request.param == "hdf5" else "digits")


def damage(path: Path, fmt: str) -> list[tuple[str, int]]:
    """Damage chunks of the train split: zarr loses a patches chunk file, gets finite garbage in a cls chunk, a
    truncated patches chunk and random bytes over a labels chunk; HDF5 gets finite garbage over a cls chunk's bytes. Returns the (array, chunk) pairs."""
    rng = np.random.default_rng(0)
    if fmt == "zarr":
        (path / "train" / "patches" / "c" / "1" / "0" / "0").unlink()
        cls_chunk = path / "train" / "cls" / "c" / "2" / "0"
        cls_chunk.write_bytes(rng.normal(size=cls_chunk.stat().st_size // 2).astype(np.float16).tobytes())
        truncated = path / "train" / "patches" / "c" / "3" / "0" / "0"
        truncated.write_bytes(truncated.read_bytes()[:100])
        labels_chunk = path / "train" / "labels" / "c" / "4"  # random int64s: labels far outside -1..9
        labels_chunk.write_bytes(rng.bytes(labels_chunk.stat().st_size))
        return [("patches", 1), ("cls", 2), ("patches", 3), ("labels", 4)]
    with h5py.File(path, "r") as f:
        info = f["train"]["cls"].id.get_chunk_info_by_coord((32, 0))  # chunk 2
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset)
        handle.write(rng.normal(size=info.size // 2).astype(np.float16).tobytes())
    return [("cls", 2)]


def test_damaged_chunks_are_named_and_repair_restores_the_store_byte_for_byte(clean_store, tmp_path, capsys, same_stores):
    fmt, clean = clean_store
    path = tmp_path / clean.name
    (shutil.copytree if fmt == "zarr" else shutil.copy)(clean, path)
    damaged = damage(path, fmt)
    code, out, err = run(["--verify", path, "--no-progress"], capsys)
    one_line_error(code, err, f"{len(damaged)} damaged chunk(s)", "--repair")
    lines = [line for line in err.splitlines() if line.startswith("damaged: ")]
    assert len(lines) == len(damaged)
    for array, chunk in damaged:
        assert any(f"split 'train', {array} chunk {chunk} (samples {16 * chunk}-{16 * chunk + 15})" in line
                   for line in lines), (array, lines)
    assert "DAMAGED" in out
    code, out, err = run(["--verify", path, "--repair", "--no-progress"], capsys)
    assert code == 0 and f"repair: {len(damaged)} chunk(s) marked not done" in out, err
    code, out, err = run(SMALL + ["--out", tmp_path, "--format", fmt], capsys)
    assert code == 0, err
    same_stores(path, clean)
    code, out, err = run(["--verify", path, "--no-progress"], capsys)
    assert code == 0 and ": OK" in out


def test_training_refuses_a_damaged_chunk_naming_it(clean_store, tmp_path):
    fmt, clean = clean_store
    path = tmp_path / clean.name
    (shutil.copytree if fmt == "zarr" else shutil.copy)(clean, path)
    damage(path, fmt)
    result = subprocess.run([str(BIN / "tt-train"), "--features", str(path), "--labels", "20", "--epochs", "1",
                             "--proj-dim", "16", "--pred-dim", "8", "--disc-dim", "4", "--batch-size", "16",
                             "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "split 'train', cls chunk 2 (samples 32-47)" in result.stderr, result.stderr


def test_a_store_without_checksums_still_opens_and_verify_says_so(clean_store, tmp_path, capsys):
    fmt, clean = clean_store
    if fmt != "zarr":
        pytest.skip("one format is enough: the attribute is the same")
    path = tmp_path / clean.name
    shutil.copytree(clean, path)
    for split in ("train", "test"):  # as written before checksums: no checksum attributes, no checksums array
        meta = path / split / "zarr.json"
        record = json.loads(meta.read_text())
        for key in ("checksum", "checksum_arrays"):
            record["attributes"].pop(key)
        meta.write_text(json.dumps(record))
        shutil.rmtree(path / split / "checksums")
    code, out, err = run(["--verify", path, "--no-progress"], capsys)
    assert code == 0 and "no checksums" in out, err


# ---- a full disk ------------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only; skipped with the reason elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or 'not root'})")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def extract_ignoring_the_space_check(args: list[str]) -> subprocess.CompletedProcess:
    """tt-extract in a process whose up-front free-space estimate sees a huge disk, to reach the full disk
    mid-write (the estimate alone would refuse first)."""
    code = ("import collections, shutil, sys\n"
            "shutil.disk_usage = lambda path: collections.namedtuple('u', 'total used free')(1 << 40, 0, 1 << 40)\n"
            "from twinturbo.extract.cli import main\nmain(sys.argv[1:])\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env=env)


def test_hdf5s_room_to_close_is_counted_before_anything_is_written(tmp_path, capsys):
    """A disk with room for the store plus 3 MiB: zarr fits; HDF5, which keeps HDF5_CLOSE_RESERVE free to close its
    file (its writer stops short of it), is refused up front saying so, not 'the disk is full' half-way."""
    from twinturbo.common.store import HDF5_CLOSE_RESERVE, SplitLayout, open_store
    from twinturbo.extract.disk import store_nbytes

    args = SMALL + ["--limit", "256"]
    assert run(args + ["--out", tmp_path / "sized"], capsys)[0] == 0
    with open_store(tmp_path / "sized" / "digits") as store:
        layouts = {name: SplitLayout(**layout) for name, layout in store.attrs["layouts"].items()}
    size = store_nbytes(layouts, 16, "float16") + (3 << 20)
    assert size < store_nbytes(layouts, 16, "float16") + HDF5_CLOSE_RESERVE
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        code, _, err = run(args + ["--format", "hdf5", "--out", disk], capsys)
        one_line_error(code, err, "the store needs about", "of which 4.0MiB HDF5 keeps free to close the file")
        assert not any(disk.iterdir())
        code, _, err = run(args + ["--out", disk], capsys)  # zarr needs no such room
        assert code == 0, err
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_a_full_disk_is_one_line_and_the_store_resumes(small_disk, fmt, tmp_path, capsys, same_stores):
    args = SMALL + ["--format", fmt, "--limit", "256", "--out", small_disk]
    code, out, err = run(args, capsys)  # the estimate: refused before anything is written
    one_line_error(code, err, "needs about", "free")
    assert not any(small_disk.iterdir())
    result = extract_ignoring_the_space_check(args)
    assert result.returncode == 2, result.stderr
    one_line_error(2, result.stderr, "the disk is full", "rerun the same command")
    subprocess.run(["mount", "-o", "remount,size=64M", str(small_disk)], check=True)
    result = extract_ignoring_the_space_check(args)
    assert result.returncode == 0, result.stderr
    clean = tmp_path / "clean"
    assert extract_ignoring_the_space_check(SMALL + ["--format", fmt, "--limit", "256", "--out", clean]).returncode == 0
    name = "digits.h5" if fmt == "hdf5" else "digits"
    same_stores(small_disk / name, clean / name)


# ---- image folders ------------------------------------------------------------------------------------------------

def image_folder(root: Path, classes=("cat", "dog"), per_class: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


FOLDER = ["--backbone", "effnet-lite0:320", "--resolution", "64", "--batch-size", "4", "--chunk-size", "4",
          "--device", "cpu", "--no-progress"]


def test_bad_image_files_are_listed_in_one_line_before_anything_is_written(tmp_path, capsys):
    root = image_folder(tmp_path / "pets")
    (root / "train" / "cat" / "empty.png").write_bytes(b"")
    (root / "train" / "dog" / "notes.jpg").write_text("not a picture")
    out = tmp_path / "features"
    args = ["--dataset", f"folder:{root}", "--out", out] + FOLDER
    code, _, err = run(args, capsys)
    one_line_error(code, err, "2 of 8 image files", "empty.png", "notes.jpg", "nothing was written")
    assert not out.exists() or not any(out.iterdir())
    (root / "train" / "cat" / "empty.png").unlink()
    (root / "train" / "dog" / "notes.jpg").unlink()
    code, _, err = run(args, capsys)  # fixed: the same command, no --overwrite
    assert code == 0, err


def test_images_in_sub_folders_count_for_their_class(tmp_path, capsys):
    from twinturbo.common.store import open_store

    root = image_folder(tmp_path / "pets")
    nested = root / "train" / "cat" / "indoor"
    nested.mkdir()
    shutil.copy(root / "train" / "cat" / "0.png", nested / "x.png")
    code, _, err = run(["--dataset", f"folder:{root}", "--out", tmp_path / "f"] + FOLDER, capsys)
    assert code == 0, err
    with open_store(tmp_path / "f" / "pets") as store:
        labels = store.split("train").labels()
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1]  # 4 cats (one nested), 3 dogs


def test_a_folder_with_one_class_is_refused(tmp_path, capsys):
    root = image_folder(tmp_path / "pets", classes=("cat",))
    code, _, err = run(["--dataset", f"folder:{root}", "--out", tmp_path / "f"] + FOLDER, capsys)
    one_line_error(code, err, "at least two classes", "'cat'")


def test_an_empty_class_folder_is_refused_naming_it_before_anything_is_written(tmp_path, capsys):
    root = image_folder(tmp_path / "pets")
    (root / "train" / "ant").mkdir()
    out = tmp_path / "f"
    code, _, err = run(["--dataset", f"folder:{root}", "--out", out] + FOLDER, capsys)
    one_line_error(code, err, f"class folder {root / 'train' / 'ant'} holds no images", "nothing was written")
    assert not out.exists() or not any(out.iterdir())
    (root / "train" / "ant").rmdir()
    code, _, err = run(["--dataset", f"folder:{root}", "--out", out] + FOLDER, capsys)
    assert code == 0, err


def test_a_store_whose_class_list_differs_from_the_folders_is_not_taken_as_complete(tmp_path, capsys):
    """A store made by an earlier tt-extract that kept an empty class folder as a class: removing the folder changes
    no file checksum, and the store must not be reported complete with its stale class list."""
    import zarr

    root = image_folder(tmp_path / "pets")
    args = ["--dataset", f"folder:{root}", "--out", tmp_path / "f"] + FOLDER
    assert run(args, capsys)[0] == 0
    zarr.open_group(str(tmp_path / "f" / "pets"), mode="r+").attrs["class_names"] = ["ant", "cat", "dog"]
    code, _, err = run(args, capsys)
    one_line_error(code, err, "other classes (ant, cat, dog where the dataset now has cat, dog)", "--overwrite")
    assert run(args + ["--overwrite"], capsys)[0] == 0


# ---- nothing written before the options are checked; Ctrl-C says how to resume --------------------------------

def test_sweep_checks_its_options_before_touching_out(write_tiny_store, tmp_path):
    from click.testing import CliRunner

    from twinturbo.train.cli import sweep_main

    store = write_tiny_store(tmp_path / "store")
    out = tmp_path / "sweep"
    for bad in (["--workers", "0"], ["--fuse", "0"], ["--launcher", "submitit", "--slurm-time", "0"],
                ["--labels", "5000"], ["--labels", "8", "--val-labels", "90"]):
        result = CliRunner().invoke(sweep_main, ["--features", str(store), "--out", str(out), *bad])
        assert result.exit_code == 2 and result.output.startswith("error: "), result.output
        assert not out.exists(), bad


def test_ctrl_c_that_lands_in_a_weakref_callback_still_stops_the_command():
    """A SIGINT handled while a weakref callback runs: Python drops the KeyboardInterrupt raised there ('Exception
    ignored in ...') and the command went on; every command (common/command.py) raises it again, so it still ends at
    once with its one line and exit code 130."""
    script = textwrap.dedent("""
        import os, signal, time, weakref
        import click
        from twinturbo.common.command import Command

        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C's action, whatever the suite inherited

        class Thing:
            pass

        @click.command(cls=Command)
        def slow():
            thing = Thing()
            keep = weakref.ref(thing, lambda ref: os.kill(os.getpid(), signal.SIGINT))
            del thing  # the callback runs here, and the handler inside it
            time.sleep(30)
            print("the interrupt was lost")

        slow.main([])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    # a lost interrupt sleeps 30 s, then prints so and exits 0
    assert result.returncode == 130 and result.stderr.strip() == "error: interrupted", result.stderr[-3000:]
    assert "lost" not in result.stdout


def test_ctrl_c_during_extraction_says_how_to_resume(tmp_path):
    process = subprocess.Popen([str(BIN / "tt-extract"), *SMALL[:-1], "--limit", "1000", "--out", str(tmp_path)],
                               stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "digits" / "train" / "done").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("error: interrupted; rerun the same command to resume from the first "
                                            "chunk not done")
