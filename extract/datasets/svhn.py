"""SVHN: the MATLAB v5 files train_32x32.mat and test_32x32.mat (the digit 0 is written as class 10)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from twinturbo.common.errors import TwinTurboError, one_line
from twinturbo.common.hashing import file_digest

from .split import DIGIT_CLASSES, DatasetSource, DatasetSplit

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def load_svhn(split: str, root: Path) -> DatasetSplit:
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


DATASET = DatasetSource("svhn", lambda request: load_svhn(request.split, request.root), order=40)
