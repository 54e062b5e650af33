"""Dataset readers: the official raw files of each dataset -> uint8 HWC images and int64 labels.

Stage 1 input. The paper's datasets (section 4.1: MNIST, CIFAR-10, SVHN) are read from the
files their publishers distribute, under `data_root` (default `data/`):

    data/mnist/    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz  t10k-images-idx3-ubyte.gz
                   t10k-labels-idx1-ubyte.gz   (each also accepted uncompressed, without `.gz`)
    data/cifar10/  cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}  or  cifar-10-python.tar.gz
    data/svhn/     train_32x32.mat  test_32x32.mat
    data/fashion-mnist/  the MNIST file names, same IDX format (also read from /usr/share/datasets/fashion-mnist/,
                   where Debian's package `dataset-fashion-mnist` installs them)

plus `digits` (scikit-learn's bundled 8x8 digits, no file needed), `folder:PATH` (PATH/train/<class>/*.png ...) and
`hf:NAME_OR_DIR[:CONFIG]` (a Hugging Face `datasets` dataset: its Image and ClassLabel columns).
Every reader checks what it reads and turns a missing, truncated or foreign file into one `TwinTurboError` line
naming the file. `download_dataset` fetches the official files and verifies their MD5 (torchvision's values; for
Fashion-MNIST those of its publisher's README).
"""
from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from twinturbo.common.errors import TwinTurboError, import_optional, one_line
from twinturbo.common.hashing import file_digest

DATASET_NAMES = ("mnist", "fashion-mnist", "cifar10", "svhn", "digits")
FOLDER_PREFIX = "folder:"
HF_PREFIX = "hf:"
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DIGIT_CLASSES = [str(d) for d in range(10)]
# The label names of zalandoresearch/fashion-mnist's README, in label order 0..9.
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_META = "batches.meta"
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
# Where Debian's package `dataset-fashion-mnist` puts the publisher's files (recompressed, same uncompressed bytes).
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

# IDX header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions (LeCun's MNIST page).
IDX_UBYTE = 0x08


# ----------------------------------------------------------------------------------------------------------------
# The split object


class DecodedOnDemand:
    """Images decoded only when a slice of them is read, RGB uint8 of one `size` (width, height: PIL's order), so a
    large split never has to fit in memory. A subclass says where its images are (`_sources`) and how many."""

    size: tuple[int, int]

    def __len__(self) -> int:
        raise NotImplementedError

    def _sources(self, index: slice) -> list[tuple[object, str | None]]:
        """(what PIL opens, how an error names it or None for the source itself) of each image of `index`."""
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.size[1], self.size[0], 3)

    def __getitem__(self, index: slice) -> np.ndarray:
        sources = self._sources(index)
        out = np.empty((len(sources), self.size[1], self.size[0], 3), dtype=np.uint8)
        for i, (source, where) in enumerate(sources):
            out[i] = _decode_image(source, self.size, where=where)
        return out


class ImageFiles(DecodedOnDemand):
    """Image files decoded on demand, so a large `folder:` dataset never has to fit in memory.

    Every image is converted to RGB and, when its size differs from `size` (the first image of the split),
    resized bilinearly to it: the backbone resizes again anyway, and a batch must be one array.
    """

    def __init__(self, paths: Sequence[Path], size: tuple[int, int]):
        self.paths = list(paths)
        self.size = size  # (width, height), PIL's order

    def __len__(self) -> int:
        return len(self.paths)

    def _sources(self, index: slice) -> list[tuple[object, str | None]]:
        return [(path, None) for path in self.paths[index]]


@dataclass
class DatasetSplit:
    """One split of one dataset: labels and class names in memory, images read by contiguous range.

    `source_files` maps each raw file read to the sha256 of its bytes, so a feature store records exactly which
    files it was made from.
    """

    dataset: str
    split: str
    labels: np.ndarray  # int64 [N]
    class_names: list[str]
    source_files: dict[str, str]
    images: np.ndarray | ImageFiles = field(repr=False)  # uint8 [N, H, W, C] or lazily decoded files

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image `read` returns."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images start..stop-1 as a fresh, writable uint8 array [B, H, W, C] with C in {1, 3}."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"read({start}, {stop}) outside 0..{len(self)} of {self.dataset}/{self.split}")
        return np.array(self.images[start:stop], dtype=np.uint8, copy=True)


# ----------------------------------------------------------------------------------------------------------------
# Public entry points


def store_name(dataset: str) -> str:
    """Directory name of the feature store of `dataset`: the dataset name, the folder's basename, or for hf: the
    directory's basename or the hub name's last part (with "-CONFIG")."""
    if dataset.startswith(HF_PREFIX):
        return _hf_store_name(dataset)
    folder = _parse_dataset(dataset)
    if folder is None:
        return dataset
    name = folder.name
    return name if name not in ("", ".", "..") else folder.resolve().name


def read_dataset_split(dataset: str, split: str, data_root: Path | str = "data", download: bool = False,
                       hf_options: HFDatasetOptions | None = None) -> DatasetSplit:
    """Read one split of `dataset` ("mnist", "cifar10", "svhn", "digits", "folder:PATH" or "hf:NAME_OR_DIR[:CONFIG]")
    from `data_root`.

    With `download=True` the official files of MNIST/CIFAR-10/SVHN are first fetched into `data_root` (kept if
    already present with the right checksum). `hf_options` are the columns and splits of an hf: dataset.
    """
    folder = _parse_dataset(dataset)
    if split not in SPLITS:
        raise TwinTurboError(f"unknown split '{split}' of {dataset}: expected one of {', '.join(SPLITS)}")
    root = Path(data_root)
    if dataset.startswith(HF_PREFIX):
        return _load_hf(dataset, split, root, hf_options or HFDatasetOptions())
    if download and dataset in DOWNLOADS:
        download_dataset(dataset, root, splits=(split,))
    if folder is not None:
        return _load_folder(dataset, _resolve_folder(folder, root), split)
    if dataset in IDX_CLASSES:
        return _load_idx_dataset(dataset, split, root)
    loader = {"cifar10": _load_cifar10, "svhn": _load_svhn, "digits": _load_digits}[dataset]
    return loader(split, root)


def _parse_dataset(dataset: str) -> Path | None:
    """None for a named or hf: dataset, the folder path for "folder:PATH"; anything else is a user error."""
    if dataset.startswith(HF_PREFIX):
        _hf_spec(dataset)  # "hf:" alone is refused here
        return None
    if dataset.startswith(FOLDER_PREFIX):
        path = dataset[len(FOLDER_PREFIX):]
        if not path:
            raise TwinTurboError("dataset 'folder:' needs a path: folder:PATH with PATH/train/<class>/*.png")
        return Path(path).expanduser()
    if dataset not in DATASET_NAMES:
        raise TwinTurboError(f"unknown dataset '{dataset}': expected one of {', '.join(DATASET_NAMES)}, folder:PATH or "
                             "hf:NAME_OR_DIR[:CONFIG]")
    return None


# ----------------------------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files

IDX_CLASSES = {"mnist": DIGIT_CLASSES, "fashion-mnist": FASHION_CLASSES}


def _load_idx_dataset(dataset: str, split: str, root: Path) -> DatasetSplit:
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


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10: python pickle batches, extracted or inside the official .tar.gz


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only dicts/lists/strings/numbers and numpy arrays: a batch file can name no other callable.

    The CIFAR batches are Python 2 pickles of numpy arrays; `encoding="bytes"` keeps their str keys and raw
    pixel strings as bytes (the loading recipe on the CIFAR page).
    """

    _reconstruct = np.ndarray.__reduce__(np.empty(0))[0]
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles of protocol <= 2 spell bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _unpickle_batch(blob: bytes, where: str) -> dict[str, object]:
    try:
        obj = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as err:  # a corrupt pickle can raise almost anything; all of it means "not a batch"
        raise TwinTurboError(f"cifar10: {where} is not a CIFAR-10 python batch ({one_line(err)})") from None
    if not isinstance(obj, dict):
        raise TwinTurboError(f"cifar10: {where} is not a CIFAR-10 python batch (a {type(obj).__name__}, not a dict)")
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in obj.items()}


def _load_cifar10(split: str, root: Path) -> DatasetSplit:
    folder, archive = root / "cifar10" / CIFAR10_FOLDER, root / "cifar10" / CIFAR10_ARCHIVE
    members = CIFAR10_BATCHES[split] + (CIFAR10_META,)
    missing = [name for name in members if not (folder / name).is_file()]
    if not missing:
        blobs = {name: (folder / name).read_bytes() for name in members}
        source_files = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
        where = {name: str(folder / name) for name in members}
    elif archive.is_file():
        blobs = _read_tar_members(archive, [f"{CIFAR10_FOLDER}/{name}" for name in members])
        blobs = {name: blobs[f"{CIFAR10_FOLDER}/{name}"] for name in members}
        source_files = {archive.name: file_digest(archive)}
        where = {name: f"{archive}:{CIFAR10_FOLDER}/{name}" for name in members}
    else:
        raise TwinTurboError(f"cifar10: expected {folder / missing[0]} or {archive} (or pass --download)")

    meta = _unpickle_batch(blobs[CIFAR10_META], where[CIFAR10_META])
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise TwinTurboError(f"cifar10: {where[CIFAR10_META]} has no list of 10 'label_names'")
    class_names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]

    images, labels = [], []
    for name in CIFAR10_BATCHES[split]:
        batch = _unpickle_batch(blobs[name], where[name])
        data, batch_labels = batch.get("data"), np.asarray(batch.get("labels", []), dtype=np.int64)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise TwinTurboError(f"cifar10: {where[name]} has no uint8 'data' of shape [N, 3072]")
        in_range = batch_labels.size == 0 or 0 <= batch_labels.min() <= batch_labels.max() <= 9
        if batch_labels.shape != (len(data),) or not in_range:
            raise TwinTurboError(f"cifar10: {where[name]} needs one label in 0..9 per image ({len(data)})")
        # Each row is the 1024 red, then green, then blue values of a 32x32 image in row-major order (CHW).
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return DatasetSplit(
        dataset="cifar10", split=split, labels=np.concatenate(labels), class_names=class_names,
        source_files=source_files, images=np.ascontiguousarray(np.concatenate(images)),
    )


def _read_tar_members(archive: Path, names: list[str]) -> dict[str, bytes]:
    """The named members of a .tar.gz, read in one pass without extracting anything to disk."""
    wanted, found = set(names), {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    found[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise TwinTurboError(f"cifar10: {archive} is not a complete .tar.gz archive ({one_line(err)})") from None
    for name in names:
        if name not in found:
            raise TwinTurboError(f"cifar10: {archive} has no member {name}")
    return found


# ----------------------------------------------------------------------------------------------------------------
# SVHN: MATLAB v5 files


def _load_svhn(split: str, root: Path) -> DatasetSplit:
    import scipy.io  # scipy comes with scikit-learn; imported here as only SVHN needs it

    path = root / "svhn" / SVHN_FILES[split]
    if not path.is_file():
        raise TwinTurboError(f"svhn: expected {path} (or pass --download)")
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError, ... on a broken file
        raise TwinTurboError(f"svhn: {path} is not a readable MATLAB file ({one_line(err)})") from None
    x, y = mat.get("X"), mat.get("y")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        shape = getattr(x, "shape", None)
        raise TwinTurboError(f"svhn: {path} needs a uint8 'X' of shape [32, 32, 3, N], found {shape}")
    if not isinstance(y, np.ndarray) or y.size != x.shape[3]:
        raise TwinTurboError(f"svhn: {path} needs one 'y' label per image ({x.shape[3]})")
    labels = y.reshape(-1).astype(np.int64)
    if labels.size and not 1 <= labels.min() <= labels.max() <= 10:
        raise TwinTurboError(f"svhn: {path} has labels outside 1..10")
    labels[labels == 10] = 0  # SVHN writes the digit 0 as class 10
    return DatasetSplit(
        dataset="svhn", split=split, labels=labels, class_names=list(DIGIT_CLASSES),
        source_files={path.name: file_digest(path)}, images=np.ascontiguousarray(x.transpose(3, 0, 1, 2)),
    )


# ----------------------------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 digits


def _load_digits(split: str, root: Path) -> DatasetSplit:
    """8x8 digits with values 0..16, scaled to uint8 0..255 and split 70/30, stratified, random_state=0."""
    import importlib.resources

    import sklearn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    train_index, test_index = train_test_split(index, test_size=0.3, random_state=0, stratify=digits.target)
    chosen = train_index if split == "train" else test_index
    images = np.rint(digits.images[chosen] * (255.0 / 16.0)).astype(np.uint8)[..., None]
    source = importlib.resources.files("sklearn.datasets.data").joinpath("digits.csv.gz")
    return DatasetSplit(
        dataset="digits", split=split, labels=digits.target[chosen].astype(np.int64), class_names=list(DIGIT_CLASSES),
        source_files={f"sklearn-{sklearn.__version__}/digits.csv.gz": hashlib.sha256(source.read_bytes()).hexdigest()},
        images=np.ascontiguousarray(images),
    )


# ----------------------------------------------------------------------------------------------------------------
# folder:PATH — PATH/train/<class>/*.png, PATH/test/<class>/*.png


def _resolve_folder(folder: Path, root: Path) -> Path:
    """PATH as given (relative to the working directory), else under the data root."""
    if folder.is_dir() or folder.is_absolute() or not (root / folder).is_dir():
        return folder
    return root / folder


def _image_files(directory: Path) -> list[Path]:
    """Every image file under `directory`, sub-folders included (as torchvision's ImageFolder takes them), sorted."""
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def _class_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def unreadable_images(paths: list[Path]) -> list[tuple[Path, str]]:
    """(path, why) of every file whose image header does not decode (PIL's `verify`: no pixels decoded)."""
    bad = []
    for path in tqdm(paths, desc="checking images", unit="file", leave=False, disable=len(paths) < 2000):
        why = _image_problem(path)
        if why is not None:
            bad.append((path, why))
    return bad


def _image_problem(source) -> str | None:
    """Why the image header at `source` (a path or a file object) does not decode, or None when it does."""
    from PIL import Image

    try:
        with Image.open(source) as image:
            image.verify()
    except Exception as err:  # PIL raises several types for an empty, truncated or foreign file
        return one_line(err)
    return None


def _load_folder(dataset: str, folder: Path, split: str) -> DatasetSplit:
    """One sub-folder per class (images in its own sub-folders count for it); class names sorted; the test split uses
    the train split's classes. Every image is checked before anything is written: all bad files in one message."""
    train_dir, split_dir = folder / "train", folder / split
    for directory in dict.fromkeys((train_dir, split_dir)):
        if not directory.is_dir():
            raise TwinTurboError(
                f"{dataset}: expected {directory}/<class>/*.png (one sub-folder per class, {', '.join(IMAGE_SUFFIXES)})"
            )
    class_names = _class_dirs(train_dir)
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise TwinTurboError(f"{dataset}: {train_dir} holds {found} as class sub-folders: a classifier needs at least "
                             "two classes")
    unknown = sorted(set(_class_dirs(split_dir)) - set(class_names))
    if unknown:
        raise TwinTurboError(
            f"{dataset}: class folder {split_dir / unknown[0]} has no counterpart in {train_dir} "
            f"(classes: {', '.join(class_names)})"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        class_dir = split_dir / name
        files = _image_files(class_dir) if class_dir.is_dir() else []
        if not files and split_dir == train_dir:
            raise TwinTurboError(
                f"{dataset}: class folder {class_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}): every class needs "
                "train images; add some or remove the folder (nothing was written)")
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise TwinTurboError(f"{dataset}: no images ({', '.join(IMAGE_SUFFIXES)}) in {split_dir}/<class>/")
    bad = unreadable_images(paths)
    if bad:
        named = "; ".join(f"{path} ({why})" for path, why in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise TwinTurboError(f"{dataset}: {len(bad)} of {len(paths)} image files in {split_dir} cannot be read: "
                             f"{named}{more}; fix or remove them (nothing was written)")
    size = image_size(paths[0])
    return DatasetSplit(
        dataset=dataset, split=split, labels=np.asarray(labels, dtype=np.int64), class_names=class_names,
        source_files={f"{split}/": _manifest_sha256(paths, split_dir)}, images=ImageFiles(paths, size),
    )


def _manifest_sha256(paths: list[Path], base: Path) -> str:
    """One sha256 for a whole folder split: over "relative path NUL sha256 of the file" lines, in read order."""
    manifest = hashlib.sha256()
    for path in tqdm(paths, desc=f"hashing {base}", unit="file", leave=False, disable=len(paths) < 1000):
        manifest.update(f"{path.relative_to(base).as_posix()}\0{file_digest(path)}\n".encode())
    return manifest.hexdigest()


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as err:
        raise TwinTurboError(f"cannot read image {path} ({one_line(err)})") from None


def _decode_image(path, size: tuple[int, int], where: str | None = None) -> np.ndarray:
    """The image at `path` (a path or a file object; `where` names it in errors) as RGB uint8 of `size`."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if rgb.size != size:
                rgb = rgb.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(rgb)
    except (OSError, SyntaxError, ValueError) as err:
        why = one_line(err).replace(repr(path), "(its bytes)")  # PIL names a file object by its repr
        raise TwinTurboError(f"cannot read image {where or path} ({why})") from None


# ----------------------------------------------------------------------------------------------------------------
# hf:NAME_OR_DIR[:CONFIG] — a Hugging Face `datasets` dataset (issue 29)


@dataclass(frozen=True)
class HFDatasetOptions:
    """What the command line says about an hf: dataset: its image and label columns (None: found from its features)
    and which of its splits are stored as the store's train and test splits."""

    image_column: str | None = None
    label_column: str | None = None
    train_split: str = "train"
    test_split: str = "test"


def _hf_spec(dataset: str) -> tuple[str, str | None]:
    """(NAME_OR_DIR, CONFIG or None) of "hf:NAME_OR_DIR[:CONFIG]": the config follows the last ':' unless the whole
    text names an existing path."""
    text = dataset[len(HF_PREFIX):]
    if not text:
        raise TwinTurboError("dataset 'hf:' needs a name or a directory: hf:NAME_OR_DIR[:CONFIG]")
    if Path(text).expanduser().exists() or ":" not in text:
        return text, None
    source, _, config = text.rpartition(":")
    return source, config or None


def _hf_store_name(dataset: str) -> str:
    source, config = _hf_spec(dataset)
    name = Path(source.rstrip("/")).name
    if name in ("", ".", ".."):
        name = Path(source).expanduser().resolve().name
    return f"{name}-{config}" if config else name


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by save_to_disk: a DatasetDict (dataset_dict.json) or one Dataset (state.json)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _open_hf_dataset(dataset: str, root: Path):
    """The DatasetDict of an hf: dataset: load_from_disk for a save_to_disk directory, load_dataset otherwise (hub
    names, local data or script directories)."""
    hf = import_optional("datasets", f"--dataset {dataset}")
    source, config = _hf_spec(dataset)
    local = _resolve_folder(Path(source).expanduser(), root)
    try:
        if local.is_dir() and _is_saved_dataset(local):
            if config:
                raise TwinTurboError(f"{dataset}: {local} was written by save_to_disk and has no configurations; "
                                     f"drop ':{config}'")
            loaded = hf.load_from_disk(str(local))
        else:
            loaded = hf.load_dataset(str(local) if local.is_dir() else source, config)
    except TwinTurboError:
        raise
    except Exception as err:  # datasets raises many types: not found, offline, unknown config, unreadable files
        raise TwinTurboError(f"{dataset}: could not load it ({type(err).__name__}: {one_line(err)[:200]})") from None
    if not isinstance(loaded, hf.DatasetDict):
        raise TwinTurboError(f"{dataset}: one Dataset without splits; save a DatasetDict({{'train': ..., "
                             "'test': ...}) with save_to_disk")
    return loaded


def _hf_split(splits, dataset: str, split: str, options: HFDatasetOptions):
    """The dataset's split stored as `split` (train or test), or one line saying which splits exist and how to
    choose."""
    name = options.train_split if split == "train" else options.test_split
    if name in splits:
        return name, splits[name]
    other = "test" if split == "train" else "train"
    raise TwinTurboError(f"{dataset} has no split '{name}' (it has {', '.join(splits)}): choose the one stored as "
                         f"{split} with --{split}-split NAME, or extract only {other} with --splits {other}")


def _feature_column(table, wanted: str | None, kind: type, option: str, dataset: str, hint: str) -> str:
    """The column given with `option`, else the only column whose feature is a `kind`; it must be one."""
    features = table.features
    if wanted is not None:
        if wanted not in features:
            raise TwinTurboError(f"{option} {wanted}: {dataset} has no such column (columns: {', '.join(features)})")
        if not isinstance(features[wanted], kind):
            raise TwinTurboError(f"{option} {wanted}: the column of {dataset} is {type(features[wanted]).__name__}, "
                                 f"not {kind.__name__}{hint}")
        return wanted
    found = [name for name, feature in features.items() if isinstance(feature, kind)]
    if len(found) != 1:
        which = f"{len(found)} ({', '.join(found)})" if found else "none"
        raise TwinTurboError(f"{dataset}: {which} of its columns ({', '.join(features)}) are {kind.__name__} "
                             f"features; name one with {option} NAME{hint}")
    return found[0]


def _image_entry_source(entry: dict):
    """What PIL opens for one undecoded Image entry {"bytes", "path"}: the bytes, else the file."""
    return io.BytesIO(entry["bytes"]) if entry.get("bytes") is not None else entry.get("path")


class HFImages(DecodedOnDemand):
    """The images of one split of a Hugging Face dataset, decoded on demand as ImageFiles decodes files: RGB, resized
    bilinearly to `size` (the split's first image) when they differ."""

    def __init__(self, rows, column: str, size: tuple[int, int]):
        self.rows = rows  # the split with its image column undecoded: {"bytes", "path"} per row
        self.column = column
        self.size = size  # (width, height), PIL's order

    def __len__(self) -> int:
        return len(self.rows)

    def _sources(self, index: slice) -> list[tuple[object, str | None]]:
        start = index.indices(len(self.rows))[0]
        return [(_image_entry_source(entry), f"row {start + i}")
                for i, entry in enumerate(self.rows[index][self.column])]


def _unreadable_rows(rows, column: str, block: int = 1024) -> list[tuple[int, str]]:
    """(row index, why) of every image whose header does not decode (PIL's verify, as for image folders)."""
    bad = []
    for start in tqdm(range(0, len(rows), block), desc="checking images", unit="block", leave=False,
                      disable=len(rows) < 2000):
        for i, entry in enumerate(rows[start:start + block][column]):
            source = _image_entry_source(entry)
            why = _image_problem(source)
            if why is not None:
                bad.append((start + i, why.replace(repr(source), "(its bytes)")))
    return bad


def _hf_source_files(table, name: str) -> dict[str, str]:
    """The sha256 of each arrow file the split is read from, keyed "<split>/<file>"; a split held only in memory
    records its fingerprint instead."""
    files = [Path(entry["filename"]) for entry in table.cache_files]
    if files:
        return {f"{name}/{path.name}": file_digest(path) for path in files}
    return {f"{name}/fingerprint": str(table._fingerprint)}


def _load_hf(dataset: str, split: str, root: Path, options: HFDatasetOptions) -> DatasetSplit:
    """One split of an hf: dataset: the Image column decoded lazily, the ClassLabel column's labels and names (the test
    split must have the train split's names). Every image is checked before anything is written: all bad rows, with
    their split, in one message."""
    hf = import_optional("datasets", f"--dataset {dataset}")
    splits = _open_hf_dataset(dataset, root)
    name, table = _hf_split(splits, dataset, split, options)
    image_column = _feature_column(table, options.image_column, hf.Image, "--image-column", dataset, "")
    label_column = _feature_column(table, options.label_column, hf.ClassLabel, "--label-column", dataset,
                                   " (DatasetDict.class_encode_column(NAME) makes one; save_to_disk it again)")
    class_names = list(table.features[label_column].names)
    train_name = options.train_split
    if split == "test" and train_name in splits and label_column in splits[train_name].features:
        train_names = list(getattr(splits[train_name].features[label_column], "names", []))
        if train_names != class_names:
            raise TwinTurboError(f"{dataset}: split '{name}' has the classes {', '.join(class_names)}, split "
                                 f"'{train_name}' {', '.join(train_names)}: both must have the same ClassLabel")
    labels = np.asarray(table[label_column], dtype=np.int64)
    if labels.size and not -1 <= labels.min() <= labels.max() < len(class_names):
        raise TwinTurboError(f"{dataset}: split '{name}' has labels outside -1..{len(class_names) - 1}")
    rows = table.select_columns([image_column]).cast_column(image_column, hf.Image(decode=False))
    if len(rows) == 0:
        raise TwinTurboError(f"{dataset}: split '{name}' has no rows")
    bad = _unreadable_rows(rows, image_column)
    if bad:
        named = "; ".join(f"row {row} ({why})" for row, why in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise TwinTurboError(f"{dataset}: {len(bad)} of {len(rows)} images of split '{name}' (column {image_column}) "
                             f"cannot be read: {named}{more}; fix or remove them (nothing was written)")
    size = image_size(_image_entry_source(rows[0][image_column]))
    return DatasetSplit(dataset=dataset, split=split, labels=labels, class_names=class_names,
                        source_files=_hf_source_files(table, name), images=HFImages(rows, image_column, size))


# ----------------------------------------------------------------------------------------------------------------
# Downloads


@dataclass(frozen=True)
class Download:
    """One official file: where it goes under `data_root/<dataset>/`, the URLs to try in order, its MD5."""

    filename: str
    urls: tuple[str, ...]
    md5: str
    splits: tuple[str, ...]


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
# MD5 values as published with torchvision's MNIST, CIFAR10 and SVHN datasets.
DOWNLOADS: dict[str, tuple[Download, ...]] = {
    "mnist": tuple(
        Download(name, tuple(m + name for m in _MNIST_MIRRORS), md5, (split,))
        for name, md5, split in (
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "train"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "train"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "test"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "test"),
        )
    ),
    # URLs and MD5s of the .gz files as given in zalandoresearch/fashion-mnist's README.
    "fashion-mnist": tuple(
        Download(name, ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" + name,), md5, (split,))
        for name, md5, split in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "train"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "train"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "test"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "test"),
        )
    ),
    "cifar10": (
        Download(CIFAR10_ARCHIVE, ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                 "c58f30108f718f92721af3b95e74349a", ("train", "test")),
    ),
    "svhn": (
        Download("train_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
                 "e26dedcc434d2e4c54c9b2d4a06d8373", ("train",)),
        Download("test_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
                 "eb5a983be6a315427106f1b164d9cef3", ("test",)),
    ),
}
DOWNLOAD_TIMEOUT_S = 30.0


def download_dataset(name: str, data_root: Path | str = "data", splits: Sequence[str] = SPLITS) -> list[Path]:
    """Fetch the official files of `name` needed for `splits` into `data_root/<name>/`; return their paths.

    A file already there with the right MD5 is kept. Each download streams into `<file>.part` and is renamed only
    once its MD5 matches, so an interrupted or corrupted download never looks like a finished file.
    """
    if name not in DOWNLOADS:
        _parse_dataset(name)  # unknown names get the usual message
        raise TwinTurboError(f"{name} cannot be downloaded: --download supports {', '.join(DOWNLOADS)}")
    directory = Path(data_root) / name
    paths = []
    for item in DOWNLOADS[name]:
        if not set(item.splits) & set(splits):
            continue
        path = directory / item.filename
        if not (path.is_file() and file_digest(path, "md5") == item.md5):
            directory.mkdir(parents=True, exist_ok=True)
            _fetch(name, item, path)
        paths.append(path)
    return paths


def _fetch(name: str, item: Download, path: Path) -> None:
    """Try each URL of `item` in turn; keep the first download whose MD5 matches."""
    part = path.with_name(path.name + ".part")
    failures = []
    for url in item.urls:
        try:
            md5 = _stream_to(url, part)
        except OSError as err:  # URLError, HTTPError, timeouts and refused connections are all OSErrors
            part.unlink(missing_ok=True)
            if isinstance(err, urllib.error.HTTPError):
                err.close()  # it holds the response's socket
                reason: object = err
            else:
                reason = getattr(err, "reason", err)
            failures.append(f"{url}: {one_line(reason)}")
            continue
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        if md5 == item.md5:
            os.replace(part, path)
            return
        part.unlink()
        failures.append(f"{url}: checksum mismatch (md5 {md5}, expected {item.md5})")
    raise TwinTurboError(
        f"{name}: could not download {item.filename} ({'; '.join(failures)}); without network, place the file at {path}"
    )


def _stream_to(url: str, part: Path) -> str:
    """Stream `url` into `part` with a progress bar; return the MD5 of what was written."""
    md5 = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out:
        total = response.headers.get("Content-Length")
        with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=part.name[:-5]) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
                bar.update(len(chunk))
    return md5.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Small helpers


