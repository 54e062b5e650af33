"""mnist: LeCun's handwritten digits (section 4.1), the IDX files under data/mnist/ (idx.py)."""
from __future__ import annotations

from .idx import load_idx_dataset
from .split import DatasetSource

DATASET = DatasetSource("mnist", lambda request: load_idx_dataset("mnist", request.split, request.root), order=10)
