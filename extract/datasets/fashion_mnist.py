"""fashion-mnist: Zalando's clothing images (Xiao et al. 2017), MNIST's IDX files under data/fashion-mnist/ or Debian's
/usr/share/datasets/fashion-mnist/ (idx.py)."""
from __future__ import annotations

from .idx import load_idx_dataset
from .split import DatasetSource

DATASET = DatasetSource("fashion-mnist", lambda request: load_idx_dataset("fashion-mnist", request.split, request.root),
                        order=20)
