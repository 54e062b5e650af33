"""Dataset readers against small files written in each dataset's official format (fixtures in conftest.py)."""
from __future__ import annotations

import builtins
import functools
import gzip
import hashlib
import http.server
import pickle
import shutil
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from twinturbo.common.errors import TwinTurboError
from twinturbo.extract import datasets
from twinturbo.extract.datasets import DATASET_NAMES, Download, download_dataset, read_dataset_split, store_name
from twinturbo.extract.datasets import idx


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def user_error(match: str, *args, **kwargs) -> str:
    """Run read_dataset_split(*args, **kwargs), expect a one-line TwinTurboError containing `match`; return its text."""
    with pytest.raises(TwinTurboError) as info:
        read_dataset_split(*args, **kwargs)
    message = str(info.value)
    assert match in message
    assert "\n" not in message
    return message


def assert_round_trip(split: datasets.DatasetSplit, raw, name: str) -> None:
    assert len(split) == len(raw.labels[name])
    images = split.read(0, len(split))
    assert images.dtype == np.uint8 and images.flags.c_contiguous
    np.testing.assert_array_equal(images, raw.images[name])
    assert split.labels.dtype == np.int64
    np.testing.assert_array_equal(split.labels, raw.labels[name])
    assert split.class_names == raw.class_names
    assert split.image_shape == raw.images[name].shape[1:]


# ---- MNIST -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train", "test"])
def test_mnist_round_trip(mnist_raw, name):
    split = read_dataset_split("mnist", name, mnist_raw.root)
    assert_round_trip(split, mnist_raw, name)
    assert split.image_shape == (28, 28, 1)
    prefix = "train" if name == "train" else "t10k"
    files = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    # the sha256 of the uncompressed IDX bytes, under the uncompressed name
    assert split.source_files == {f[:-3]: hashlib.sha256(gzip.decompress((mnist_raw.root / "mnist" / f).read_bytes()))
                                  .hexdigest() for f in files}


def test_mnist_reads_uncompressed_files_with_the_same_checksums(mnist_raw):
    compressed = read_dataset_split("mnist", "test", mnist_raw.root).source_files
    for gz in (mnist_raw.root / "mnist").glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    split = read_dataset_split("mnist", "test", mnist_raw.root)
    assert_round_trip(split, mnist_raw, "test")
    assert split.source_files == compressed  # same data, same store fingerprint, however it was packed
    assert set(split.source_files) == {"t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}


def test_read_returns_the_requested_range(mnist_raw):
    split = read_dataset_split("mnist", "train", mnist_raw.root)
    np.testing.assert_array_equal(split.read(5, 13), mnist_raw.images["train"][5:13])
    assert split.read(7, 7).shape == (0, 28, 28, 1)
    batch = split.read(0, 2)
    batch[:] = 0  # a fresh writable copy: torch.from_numpy needs that and the split must not change
    np.testing.assert_array_equal(split.read(0, 2), mnist_raw.images["train"][:2])
    for start, stop in ((0, len(split) + 1), (3, 2), (-1, 2)):
        with pytest.raises(IndexError):
            split.read(start, stop)


def test_mnist_missing_file_says_where_it_is_expected(tmp_path, mnist_root):
    expected = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    message = user_error(str(expected), "mnist", "train", tmp_path)
    assert "--download" in message
    (mnist_root / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    user_error(str(mnist_root / "mnist" / "t10k-labels-idx1-ubyte.gz"), "mnist", "test", mnist_root)


def _corrupt_truncated_gzip(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:-40])
    return "not a complete gzip file"


def _corrupt_wrong_magic(path: Path) -> str:
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(struct.pack(">I", 0x00000801) + data[4:]))  # a labels magic on an images file
    return "magic number 0x00000801, expected 0x00000803"


def _corrupt_truncated_data(path: Path) -> str:
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    return "truncated"


def _corrupt_not_gzip(path: Path) -> str:
    path.write_bytes(b"<html>404 Not Found</html>")
    return "not a complete gzip file"


@pytest.mark.parametrize("corrupt", [_corrupt_truncated_gzip, _corrupt_wrong_magic, _corrupt_truncated_data,
                                     _corrupt_not_gzip])
def test_mnist_corrupt_file_names_the_file(mnist_root, corrupt):
    path = mnist_root / "mnist" / "train-images-idx3-ubyte.gz"
    expected = corrupt(path)
    message = user_error(expected, "mnist", "train", mnist_root)
    assert str(path) in message


def test_mnist_image_and_label_counts_must_agree(mnist_raw):
    from conftest import write_idx

    labels_path = mnist_raw.root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels_path, mnist_raw.labels["test"][:-1].astype(np.uint8))
    user_error("holds 20 images but", "mnist", "test", mnist_raw.root)


# ---- CIFAR-10 ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train", "test"])
def test_cifar10_round_trip_extracted(cifar10_raw, name):
    split = read_dataset_split("cifar10", name, cifar10_raw.root)
    assert_round_trip(split, cifar10_raw, name)
    folder = cifar10_raw.root / "cifar10" / "cifar-10-batches-py"
    batches = [f"data_batch_{i}" for i in range(1, 6)] if name == "train" else ["test_batch"]
    assert split.source_files == {f: sha256(folder / f) for f in [*batches, "batches.meta"]}


@pytest.mark.parametrize("name", ["train", "test"])
def test_cifar10_round_trip_from_the_archive(cifar10_tar_raw, name):
    archive = cifar10_tar_raw.root / "cifar10" / "cifar-10-python.tar.gz"
    assert not (cifar10_tar_raw.root / "cifar10" / "cifar-10-batches-py").exists()
    split = read_dataset_split("cifar10", name, cifar10_tar_raw.root)
    assert_round_trip(split, cifar10_tar_raw, name)
    assert split.source_files == {"cifar-10-python.tar.gz": sha256(archive)}


def test_cifar10_missing_files_name_both_layouts(tmp_path):
    message = user_error(str(tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_1"), "cifar10", "train",
                         tmp_path)
    assert str(tmp_path / "cifar10" / "cifar-10-python.tar.gz") in message


def test_cifar10_corrupt_batch_names_the_file(cifar10_root):
    path = cifar10_root / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    user_error(f"{path} is not a CIFAR-10 python batch", "cifar10", "train", cifar10_root)
    # the test split does not read data_batch_3 and is unaffected
    assert len(read_dataset_split("cifar10", "test", cifar10_root)) == 20


def test_cifar10_truncated_archive_names_the_file(cifar10_tar_root):
    archive = cifar10_tar_root / "cifar10" / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    user_error(f"{archive} is not a complete .tar.gz archive", "cifar10", "test", cifar10_tar_root)


class _OpensAFile:
    """Unpickling this calls open(path, "w"): what a hostile batch file could do with a plain pickle.load."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return builtins.open, (str(self.path), "w")


def test_cifar10_batch_cannot_run_code(cifar10_root, tmp_path):
    marker = tmp_path / "pwned"
    path = cifar10_root / "cifar10" / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _OpensAFile(marker), b"labels": []}, protocol=2))
    user_error("refusing to load io.open", "cifar10", "test", cifar10_root)
    assert not marker.exists()


def test_cifar10_batch_with_wrong_layout(cifar10_root):
    path = cifar10_root / "cifar10" / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]}))
    user_error("has no uint8 'data' of shape [N, 3072]", "cifar10", "test", cifar10_root)


# ---- SVHN --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train", "test"])
def test_svhn_round_trip_and_label_10_is_0(svhn_raw, name):
    import scipy.io

    path = svhn_raw.root / "svhn" / f"{name}_32x32.mat"
    file_labels = scipy.io.loadmat(path)["y"].ravel()
    assert (file_labels == 10).any() and not (file_labels == 0).any()
    split = read_dataset_split("svhn", name, svhn_raw.root)
    assert_round_trip(split, svhn_raw, name)
    np.testing.assert_array_equal(split.labels == 0, file_labels == 10)
    assert split.source_files == {path.name: sha256(path)}


def test_svhn_missing_and_corrupt_files(svhn_root, tmp_path):
    user_error(str(tmp_path / "svhn" / "train_32x32.mat"), "svhn", "train", tmp_path)
    path = svhn_root / "svhn" / "test_32x32.mat"
    path.write_bytes(path.read_bytes()[:300])
    user_error(f"svhn: {path} is not a readable MATLAB file", "svhn", "test", svhn_root)


def test_svhn_wrong_layout_is_refused(svhn_root):
    import scipy.io

    path = svhn_root / "svhn" / "train_32x32.mat"
    scipy.io.savemat(path, {"X": np.zeros((4, 32, 32, 3), np.uint8), "y": np.ones((4, 1), np.uint8)})
    user_error("needs a uint8 'X' of shape [32, 32, 3, N], found (4, 32, 32, 3)", "svhn", "train", svhn_root)


# ---- folder:PATH -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train", "test"])
def test_folder_round_trip(image_folder_raw, name):
    split = read_dataset_split(f"folder:{image_folder_raw.root}", name)
    assert split.class_names == ["bird", "cat", "dog"]
    assert_round_trip(split, image_folder_raw, name)
    assert isinstance(split.images, datasets.ImageFiles)  # decoded on read, not at load
    np.testing.assert_array_equal(split.read(1, 3), image_folder_raw.images[name][1:3])
    assert list(split.source_files) == [f"{name}/"] and len(split.source_files[f"{name}/"]) == 64


def test_folder_test_split_uses_the_train_classes(image_folder_raw):
    test = read_dataset_split(f"folder:{image_folder_raw.root}", "test")
    assert test.class_names == ["bird", "cat", "dog"]  # 'bird' has no test images, yet keeps index 0
    assert sorted(set(test.labels.tolist())) == [1, 2]


def test_folder_unknown_test_class_is_refused(image_folder):
    (image_folder / "test" / "cow").mkdir()
    user_error(str(image_folder / "test" / "cow"), f"folder:{image_folder}", "test")


def test_folder_resizes_to_the_first_image(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    for name in "ab":
        (tmp_path / "train" / name).mkdir(parents=True)
    Image.fromarray(first).save(tmp_path / "train" / "a" / "0.png")
    Image.fromarray(other).save(tmp_path / "train" / "a" / "1.png")
    Image.fromarray(other).save(tmp_path / "train" / "b" / "0.png")
    split = read_dataset_split(f"folder:{tmp_path}", "train")
    images = split.read(0, 2)
    assert images.shape == (2, 10, 12, 3)
    np.testing.assert_array_equal(images[0], first)
    np.testing.assert_array_equal(images[1], np.asarray(Image.fromarray(other).resize((12, 10), Image.BILINEAR)))


def test_folder_corrupt_image_names_the_file(image_folder, tmp_path):
    image_folder = Path(shutil.copytree(image_folder, tmp_path / "pets"))  # the fixture's folder is shared
    bad = image_folder / "train" / "cat" / "cat_03.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    message = user_error("1 of 9 image files", f"folder:{image_folder}", "train")  # checked before anything is read
    assert str(bad) in message and "nothing was written" in message


def test_folder_missing_or_empty(tmp_path):
    user_error(f"{tmp_path / 'nothing' / 'train'}/<class>/*.png", f"folder:{tmp_path / 'nothing'}", "train")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    user_error("holds only 'a' as class sub-folders", f"folder:{tmp_path / 'empty'}", "train")
    (tmp_path / "empty" / "train" / "b").mkdir()
    user_error("no images", f"folder:{tmp_path / 'empty'}", "train")
    user_error(f"{tmp_path / 'empty' / 'test'}/<class>", f"folder:{tmp_path / 'empty'}", "test")


def test_folder_path_may_be_relative_to_the_data_root(image_folder_raw):
    split = read_dataset_split("folder:pets", "train", data_root=image_folder_raw.root.parent)
    assert_round_trip(split, image_folder_raw, "train")


# ---- digits ------------------------------------------------------------------------------------------------------


def test_digits_split_matches_an_independent_train_test_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    for name, x_ref, y_ref in (("train", x_train, y_train), ("test", x_test, y_test)):
        split = read_dataset_split("digits", name)
        assert len(split) == {"train": 1257, "test": 540}[name]
        assert split.class_names == [str(d) for d in range(10)]
        np.testing.assert_array_equal(split.labels, y_ref)
        images = split.read(0, len(split))
        assert images.shape == (len(y_ref), 8, 8, 1) and images.dtype == np.uint8
        np.testing.assert_array_equal(images[..., 0].reshape(len(y_ref), 64), np.round(x_ref * 255 / 16))
        assert images.max() == 255 and images.min() == 0
        [(key, digest)] = split.source_files.items()
        assert key.startswith("sklearn-") and key.endswith("/digits.csv.gz") and len(digest) == 64


# ---- names -------------------------------------------------------------------------------------------------------


def test_unknown_dataset_and_split():
    message = user_error("unknown dataset 'imagenet'", "imagenet", "train")
    assert all(name in message for name in DATASET_NAMES) and "folder:PATH" in message
    user_error("unknown split 'val'", "digits", "val")
    user_error("needs a path", "folder:", "train")


def test_store_names(tmp_path):
    assert [store_name(d) for d in DATASET_NAMES] == list(DATASET_NAMES)
    assert store_name(f"folder:{tmp_path / 'pets'}") == "pets"
    assert store_name(f"folder:{tmp_path / 'pets'}/") == "pets"
    with pytest.raises(TwinTurboError, match="unknown dataset"):
        store_name("cifar100")


# ---- downloads (loopback only) -----------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields (directory, base URL)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    directory = tmp_path / "served"
    directory.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=directory))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield directory, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing.gz"  # nobody listens there now: connection refused


def point_mnist_at(monkeypatch, source: Path, urls_for, md5_for=md5) -> None:
    """Replace the official MNIST table by the same file names served from `urls_for(name)`."""
    table = tuple(
        Download(item.filename, tuple(urls_for(item.filename)), md5_for(source / item.filename), item.splits)
        for item in datasets.DOWNLOADS["mnist"]
    )
    monkeypatch.setitem(datasets.DOWNLOADS, "mnist", table)


def test_download_over_http_then_load(mnist_raw, served, tmp_path, monkeypatch):
    directory, base = served
    source = mnist_raw.root / "mnist"
    for file in source.iterdir():
        shutil.copy(file, directory / file.name)
    # first mirror answers 404, second serves the file: the reader must fall through to the second
    point_mnist_at(monkeypatch, source, lambda name: [base + "missing/" + name, base + name])
    root = tmp_path / "fresh"
    split = read_dataset_split("mnist", "train", root, download=True)
    assert_round_trip(split, mnist_raw, "train")
    assert sorted(p.name for p in (root / "mnist").iterdir()) == ["train-images-idx3-ubyte.gz",
                                                                   "train-labels-idx1-ubyte.gz"]
    # present with the right checksum: kept, nothing fetched (the URLs now lead nowhere)
    point_mnist_at(monkeypatch, source, lambda name: [closed_port_url()])
    assert len(download_dataset("mnist", root, splits=("train",))) == 2


def test_download_from_a_file_url(mnist_raw, tmp_path, monkeypatch):
    source = mnist_raw.root / "mnist"
    point_mnist_at(monkeypatch, source, lambda name: [(source / name).as_uri()])
    paths = download_dataset("mnist", tmp_path / "fresh")
    assert [md5(p) for p in paths] == [md5(source / p.name) for p in paths] and len(paths) == 4


def test_download_checksum_mismatch_leaves_no_file(mnist_raw, served, tmp_path, monkeypatch):
    directory, base = served
    source = mnist_raw.root / "mnist"
    for file in source.iterdir():
        shutil.copy(file, directory / file.name)
    point_mnist_at(monkeypatch, source, lambda name: [base + name], md5_for=lambda path: "0" * 32)
    root = tmp_path / "fresh"
    with pytest.raises(TwinTurboError, match="checksum mismatch") as info:
        download_dataset("mnist", root, splits=("test",))
    assert f"expected {'0' * 32}" in str(info.value) and "\n" not in str(info.value)
    assert list((root / "mnist").iterdir()) == []  # neither the final name nor a temporary file


def test_download_without_network_says_where_to_put_the_file(mnist_raw, tmp_path, monkeypatch):
    point_mnist_at(monkeypatch, mnist_raw.root / "mnist", lambda name: [closed_port_url()])
    root = tmp_path / "fresh"
    message = user_error(f"place the file at {root / 'mnist' / 'train-images-idx3-ubyte.gz'}", "mnist", "train",
                         root, download=True)
    assert "could not download train-images-idx3-ubyte.gz" in message
    assert list((root / "mnist").iterdir()) == []  # no temporary file left behind


def test_download_of_a_dataset_without_official_files():
    with pytest.raises(TwinTurboError, match="cannot be downloaded"):
        download_dataset("digits", "data")
    with pytest.raises(TwinTurboError, match="unknown dataset"):
        download_dataset("imagenet", "data")


# ---- Fashion-MNIST -------------------------------------------------------------------------------------------------

# sha256 of the publisher's uncompressed files (Debian's .gz are recompressed, their content is these bytes).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


@pytest.mark.parametrize("name", ["train", "test"])
def test_fashion_mnist_round_trip_with_its_class_names(fashion_mnist_raw, name, monkeypatch, tmp_path):
    monkeypatch.setattr(idx, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    split = read_dataset_split("fashion-mnist", name, fashion_mnist_raw.root)
    assert_round_trip(split, fashion_mnist_raw, name)
    assert split.class_names[0] == "T-shirt/top" and split.class_names[9] == "Ankle boot"
    assert split.dataset == "fashion-mnist" and store_name("fashion-mnist") == "fashion-mnist"


def test_fashion_mnist_falls_back_to_debians_system_folder(fashion_mnist_raw, tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    shutil.copytree(fashion_mnist_raw.root / "fashion-mnist", system)
    monkeypatch.setattr(idx, "FASHION_MNIST_SYSTEM_DIR", system)
    split = read_dataset_split("fashion-mnist", "test", tmp_path / "empty-data-root")
    assert_round_trip(split, fashion_mnist_raw, "test")
    assert split.source_files == {f[:-3]: hashlib.sha256(gzip.decompress((system / f).read_bytes())).hexdigest()
                                  for f in idx.MNIST_FILES["test"]}


def test_fashion_mnist_missing_names_both_places_and_both_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    message = user_error(str(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"), "fashion-mnist", "train",
                         tmp_path)
    assert str(tmp_path / "system") in message
    assert "--download" in message and "make fashion-mnist" in message and "apt-get install dataset-fashion-mnist" \
        in message


def test_fashion_mnist_corrupt_file_names_its_dataset(fashion_mnist_raw, monkeypatch, tmp_path):
    monkeypatch.setattr(idx, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    path = fashion_mnist_raw.root / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    user_error(f"fashion-mnist: {path} is not a complete gzip file", "fashion-mnist", "test", fashion_mnist_raw.root)


def test_fashion_mnist_download_table_is_the_publishers():
    table = {item.filename: (item.urls, item.md5) for item in datasets.DOWNLOADS["fashion-mnist"]}
    base = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    assert table == {
        "train-images-idx3-ubyte.gz": ((base + "train-images-idx3-ubyte.gz",), "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte.gz": ((base + "train-labels-idx1-ubyte.gz",), "25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte.gz": ((base + "t10k-images-idx3-ubyte.gz",), "bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte.gz": ((base + "t10k-labels-idx1-ubyte.gz",), "bb300cfdad3c16e7a12a480ee83cd310"),
    }


def point_at_server(monkeypatch, dataset: str, source: Path, base: str, md5_for=md5) -> None:
    table = tuple(Download(item.filename, (base + item.filename,), md5_for(source / item.filename), item.splits)
                  for item in datasets.DOWNLOADS[dataset])
    monkeypatch.setitem(datasets.DOWNLOADS, dataset, table)


def test_fashion_mnist_download_over_http_checks_md5(fashion_mnist_raw, served, tmp_path, monkeypatch):
    directory, base = served
    source = fashion_mnist_raw.root / "fashion-mnist"
    for file in source.iterdir():
        shutil.copy(file, directory / file.name)
    monkeypatch.setattr(idx, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    root = tmp_path / "fresh"
    point_at_server(monkeypatch, "fashion-mnist", source, base, md5_for=lambda path: "f" * 32)
    with pytest.raises(TwinTurboError, match="checksum mismatch"):
        read_dataset_split("fashion-mnist", "train", root, download=True)
    assert list((root / "fashion-mnist").iterdir()) == []  # no file, no temporary file
    point_at_server(monkeypatch, "fashion-mnist", source, base)
    split = read_dataset_split("fashion-mnist", "train", root, download=True)
    assert_round_trip(split, fashion_mnist_raw, "train")
    assert sorted(p.name for p in (root / "fashion-mnist").iterdir()) == ["train-images-idx3-ubyte.gz",
                                                                           "train-labels-idx1-ubyte.gz"]


def real_fashion_mnist_folder() -> Path | None:
    """Debian's files, where `make fashion-mnist` or `apt-get install dataset-fashion-mnist` put them."""
    for folder in (Path(__file__).parents[1] / "data" / "fashion-mnist", idx.FASHION_MNIST_SYSTEM_DIR):
        if all((folder / name).is_file() for names in idx.MNIST_FILES.values() for name in names):
            return folder
    return None


@pytest.mark.skipif(real_fashion_mnist_folder() is None,
                    reason="Fashion-MNIST not installed (make fashion-mnist, as `make test` does)")
def test_real_fashion_mnist_files_are_the_publishers_bytes():
    folder = real_fashion_mnist_folder()
    for names in idx.MNIST_FILES.values():
        for name in names:
            content = gzip.decompress((folder / name).read_bytes())
            assert hashlib.sha256(content).hexdigest() == FASHION_MNIST_SHA256[name[:-3]], name
    split = read_dataset_split("fashion-mnist", "train", folder.parent)
    assert len(split) == 60000 and np.bincount(split.labels).tolist() == [6000] * 10
    assert split.source_files == {name: FASHION_MNIST_SHA256[name] for name in FASHION_MNIST_SHA256
                                  if name.startswith("train")}
    assert split.image_shape == (28, 28, 1)


# ---- hf:NAME_OR_DIR[:CONFIG] (issue 29) --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train", "test"])
def test_hf_saved_dataset_round_trip(hf_dataset_raw, name):
    split = read_dataset_split(f"hf:{hf_dataset_raw.root}", name)
    assert_round_trip(split, hf_dataset_raw, name)  # the ClassLabel's names, in its order (not sorted)
    arrow = hf_dataset_raw.root / name / "data-00000-of-00001.arrow"
    assert split.source_files == {f"{name}/{arrow.name}": sha256(arrow)}


def test_hf_dataset_without_a_test_split_says_which_exist_and_how_to_choose(write_hf_dataset_dict, tmp_path):
    from twinturbo.extract.datasets import HFDatasetOptions

    raw = write_hf_dataset_dict(tmp_path / "two", splits=(("train", 6), ("validation", 3)))
    message = user_error("has no split 'test' (it has train, validation)", f"hf:{raw.root}", "test")
    assert "--test-split NAME" in message and "--splits train" in message
    split = read_dataset_split(f"hf:{raw.root}", "test", hf_options=HFDatasetOptions(test_split="validation"))
    assert_round_trip(split, argparse_like(raw, test="validation"), "test")
    assert set(split.source_files) == {"validation/data-00000-of-00001.arrow"}


def argparse_like(raw, test: str):
    """`raw` with its split `test` under the name "test"."""
    return type(raw)(raw.root, {"test": raw.images[test]}, {"test": raw.labels[test]}, raw.class_names)


def test_hf_dataset_columns_found_or_named(hf_dataset_raw, tmp_path):
    import datasets as hf

    from twinturbo.extract.datasets import HFDatasetOptions

    spec = f"hf:{hf_dataset_raw.root}"
    user_error("--image-column photo: ", spec, "train", hf_options=HFDatasetOptions(image_column="photo"))
    message = user_error("--label-column caption: the column of", spec, "train",
                         hf_options=HFDatasetOptions(label_column="caption"))
    assert "is Value, not ClassLabel" in message and "class_encode_column" in message
    two = hf.load_from_disk(str(hf_dataset_raw.root)).cast_column("image", hf.Image(decode=False))
    features = hf.Features({**two["train"].features, "thumb": hf.Image(decode=False)})
    two = two.map(lambda row: {"thumb": row["image"]}, features=features)
    two = two.cast_column("image", hf.Image()).cast_column("thumb", hf.Image())
    two.save_to_disk(str(tmp_path / "two-images"))
    spec = f"hf:{tmp_path / 'two-images'}"
    user_error("2 (image, thumb) of its columns (image, label, caption, thumb) are Image features; name one with "
               "--image-column NAME", spec, "train")
    split = read_dataset_split(spec, "train", hf_options=HFDatasetOptions(image_column="thumb"))
    assert_round_trip(split, hf_dataset_raw, "train")


def test_hf_dataset_through_load_dataset_equals_the_image_folder(image_folder_raw, monkeypatch, tmp_path):
    """A local data directory goes through load_dataset (its imagefolder builder): the same images and labels as
    folder:PATH, in the builder's order."""
    import datasets as hf

    monkeypatch.setattr(hf.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    for name in ("train", "test"):
        by_hf = read_dataset_split(f"hf:{image_folder_raw.root}", name)
        assert by_hf.class_names == image_folder_raw.class_names
        images = by_hf.read(0, len(by_hf))
        want = {(int(label), image.tobytes()) for label, image in zip(image_folder_raw.labels[name],
                                                                      image_folder_raw.images[name])}
        assert {(int(label), image.tobytes()) for label, image in zip(by_hf.labels, images)} == want
        assert len(by_hf) == len(want) and all(key.startswith(f"{name}/") for key in by_hf.source_files)


def test_hf_dataset_specs_and_store_names(tmp_path):
    assert store_name(f"hf:{tmp_path / 'shapes'}") == "shapes"
    assert store_name("hf:someone/beans") == "beans" and store_name("hf:someone/beans:small") == "beans-small"
    user_error("dataset 'hf:' needs a name or a directory", "hf:", "train")
    user_error("could not load it", f"hf:{tmp_path / 'nothing-here'}", "train")


def test_hf_dataset_without_the_datasets_package_is_one_line(hf_dataset_raw, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # import datasets now fails
    user_error("needs the package datasets, which is not installed", f"hf:{hf_dataset_raw.root}", "train")
