"""CIFAR-10: the python pickle batches, extracted or inside the official .tar.gz (read without extracting)."""
from __future__ import annotations

import codecs
import hashlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from twinturbo.common.errors import TwinTurboError, one_line
from twinturbo.common.hashing import file_digest

from .split import DatasetSource, DatasetSplit

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_META = "batches.meta"


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


def load_cifar10(split: str, root: Path) -> DatasetSplit:
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


DATASET = DatasetSource("cifar10", lambda request: load_cifar10(request.split, request.root), order=30)
