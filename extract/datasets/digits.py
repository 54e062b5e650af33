"""digits: scikit-learn's bundled 8x8 digits, no file needed (the offline dataset of the demo and the tests)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .split import DIGIT_CLASSES, DatasetSource, DatasetSplit


def load_digits(split: str, root: Path) -> DatasetSplit:
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


DATASET = DatasetSource("digits", lambda request: load_digits(request.split, request.root), order=50)
