"""Loading a split for training: int8 stores stay int8 in memory and are dequantised per batch, bit-equal to the
store's own float16 reader."""
from __future__ import annotations

import numpy as np
import torch

from twinturbo.common.store import SplitLayout, create_store, open_store
from twinturbo.train.run.data import load_split


def test_int8_split_stays_int8_and_batches_equal_the_float16_reader(tmp_path):
    layout = SplitLayout(n=50, cls_dim=6, num_patches=3, patch_dim=8)
    rng = np.random.default_rng(0)
    path = tmp_path / "int8"
    with create_store(path, {"dataset": "unit", "backbone": "toy", "weights_id": "x", "resolution": 8,
                             "class_names": ["a", "b"]}, {"train": layout}, 10, patch_dtype="int8") as store:
        for chunk in range(5):
            store.write_chunk("train", chunk, rng.normal(size=(10, 6)), rng.normal(size=(10, 3, 8)) * 4,
                              rng.integers(0, 2, size=10))
    with open_store(path) as store:
        split = load_split(store, "train", torch.device("cpu"), progress=False)
        reader = store.split("train")
        expected_cls, expected_patches = reader.read(0, 50)  # float16, dequantised by the store's reader
        # int8 tokens + a float16 scale each, against float16 tokens (RADIO-B: 770 vs 1536 bytes a token)
        assert (reader.loaded_nbytes(quantised=True), reader.loaded_nbytes()) == (50 * (2 * 6 + 3 * (8 + 2)),
                                                                                   50 * 2 * (6 + 3 * 8))
    assert split.patches.dtype == torch.int8 and split.patch_scales.dtype == torch.float16
    assert split.patches.numel() + 2 * split.patch_scales.numel() == 50 * 3 * (8 + 2)
    index = torch.tensor([7, 0, 49, 7, 23])
    cls, patches, labels = split.batch(index, torch.device("cpu"))
    assert patches.dtype == torch.float32
    assert torch.equal(patches, torch.from_numpy(expected_patches[index.numpy()]).float())  # bit-equal
    assert torch.equal(cls, torch.from_numpy(expected_cls[index.numpy()]).float())
