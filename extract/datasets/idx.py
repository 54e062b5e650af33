"""The IDX files of MNIST and Fashion-MNIST (section 4.1; Xiao et al. 2017): unsigned bytes under the same names, 28x28
grey, labels 0..9; Fashion-MNIST's also from Debian's package `dataset-fashion-mnist`. The two sources are mnist.py
and fashion_mnist.py."""
from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np

from twinturbo.common.errors import TwinTurboError, one_line

from .split import DIGIT_CLASSES, DatasetSplit

# The label names of zalandoresearch/fashion-mnist's README, in label order 0..9.
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Where Debian's package `dataset-fashion-mnist` puts the publisher's files (recompressed, same uncompressed bytes).
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

# IDX header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions (LeCun's MNIST page).
IDX_UBYTE = 0x08

IDX_CLASSES = {"mnist": DIGIT_CLASSES, "fashion-mnist": FASHION_CLASSES}


def load_idx_dataset(dataset: str, split: str, root: Path) -> DatasetSplit:
    """MNIST or Fashion-MNIST (same IDX files and names, section 4.1 / Xiao et al. 2017): 28x28 grey, labels 0..9."""
    image_name, label_name = MNIST_FILES[split]
    image_path, label_path = _idx_file(dataset, root, image_name), _idx_file(dataset, root, label_name)
    images, image_hash = _read_idx(image_path, ndim=3, dataset=dataset)
    labels, label_hash = _read_idx(label_path, ndim=1, dataset=dataset)
    if len(images) != len(labels):
        raise TwinTurboError(
            f"{dataset}: {image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise TwinTurboError(f"{dataset}: {label_path} holds label {labels.max()}, expected classes 0..9")
    # Keyed by the uncompressed name, hashed over the uncompressed bytes: the publisher's .gz, Debian's recompressed
    # .gz and a gunzipped copy are the same data and give the same store fingerprint.
    return DatasetSplit(
        dataset=dataset, split=split, labels=labels.astype(np.int64), class_names=list(IDX_CLASSES[dataset]),
        source_files={image_name[:-3]: image_hash, label_name[:-3]: label_hash}, images=images[..., None],
    )


def _idx_file(dataset: str, root: Path, name: str) -> Path:
    """`root/<dataset>/<name>` (.gz or uncompressed); for Fashion-MNIST also Debian's system-wide copy."""
    folders = [root / dataset] + ([FASHION_MNIST_SYSTEM_DIR] if dataset == "fashion-mnist" else [])
    for folder in folders:
        compressed = folder / name
        for path in (compressed, compressed.with_suffix("")):
            if path.is_file():
                return path
    expected = root / dataset / name
    if dataset == "fashion-mnist":
        raise TwinTurboError(
            f"fashion-mnist: expected {expected} (or uncompressed, or in {FASHION_MNIST_SYSTEM_DIR}/); get the files "
            f"with --download, or offline from Debian's package dataset-fashion-mnist: `make fashion-mnist` (no root, "
            f"into data/fashion-mnist/) or `apt-get install dataset-fashion-mnist`"
        )
    raise TwinTurboError(f"mnist: expected {expected} (or {expected.with_suffix('').name} uncompressed; or pass --download)")


def _read_idx(path: Path, ndim: int, dataset: str) -> tuple[np.ndarray, str]:
    """An IDX file of unsigned bytes with `ndim` dimensions (the MNIST format) and the sha256 of its uncompressed
    bytes."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise TwinTurboError(f"{dataset}: {path} is not a complete gzip file ({one_line(err)})") from None
    magic = 0x0800 + ndim
    if len(raw) < 4 or raw[0:2] != b"\0\0" or raw[2] != IDX_UBYTE or raw[3] != ndim:
        found = int.from_bytes(raw[:4].ljust(4, b"\0"), "big")
        raise TwinTurboError(
            f"{dataset}: {path} is not an IDX file of {ndim}-d unsigned bytes "
            f"(magic number 0x{found:08x}, expected 0x{magic:08x})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise TwinTurboError(f"{dataset}: {path} is truncated inside its IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise TwinTurboError(
            f"{dataset}: {path} has {len(raw)} bytes of data, its IDX header {tuple(dims)} says {expected} (truncated?)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims), hashlib.sha256(raw).hexdigest()

