"""The writing side of the feature store: create_store / write_chunk, resume identity, the done-flag order, int8.

(The read paths are tested in test_store_read.py.)"""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import zarr

from twinturbo.common import store as store_mod
from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import SplitLayout, create_store, open_store, quantise_int8
from twinturbo.common.store.backends import Hdf5Backend

CHUNK = 4
LAYOUTS = {"train": SplitLayout(n=10, cls_dim=6, num_patches=3, patch_dim=5), "test": SplitLayout(7, 6, 3, 5)}
ATTRS = {"dataset": "unit", "backbone": "toy", "weights_id": "abc", "resolution": 16, "class_names": ["a", "b", "c"]}


def store_path(tmp_path, fmt):
    return tmp_path / ("s.h5" if fmt == "hdf5" else "s")


def fake_tokens(layout: SplitLayout, seed: int):
    rng = np.random.default_rng(seed)
    cls = rng.normal(size=(layout.n, layout.cls_dim)).astype(np.float16)
    patches = (rng.normal(size=(layout.n, layout.num_patches, layout.patch_dim)) * 3).astype(np.float16)
    labels = rng.integers(0, 3, size=layout.n)
    return cls, patches, labels


def write_all(store, split, cls, patches, labels, chunks=None):
    n_chunks = store_mod.num_chunks(len(cls), CHUNK)
    for k in range(n_chunks) if chunks is None else chunks:
        sl = slice(k * CHUNK, (k + 1) * CHUNK)
        store.write_chunk(split, k, cls[sl], patches[sl], labels[sl])


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_written_store_reads_back_with_plain_zarr_or_h5py(tmp_path, fmt):
    path = store_path(tmp_path, fmt)
    data = {split: fake_tokens(layout, i) for i, (split, layout) in enumerate(LAYOUTS.items())}
    with create_store(path, ATTRS, LAYOUTS, CHUNK) as store:
        for split, arrays in data.items():
            write_all(store, split, *arrays)
    if fmt == "zarr":
        root = zarr.open_group(str(path), mode="r")
        attrs = dict(root.attrs)
        arrays = {s: {name: a[...] for name, a in root[s].arrays()} for s in LAYOUTS}
        assert root["train"]["cls"].chunks == (CHUNK, 6) and root["train"]["patches"].chunks == (CHUNK, 3, 5)
    else:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            arrays = {s: {name: d[...] for name, d in f[s].items()} for s in LAYOUTS}
            assert f["train"]["patches"].chunks == (CHUNK, 3, 5) and f["train"]["patches"].compression is None
        attrs = {k: Hdf5Backend._decode(v) for k, v in attrs.items()}
    assert attrs["format_version"] == store_mod.FORMAT_VERSION and attrs["patch_dtype"] == "float16"
    assert attrs["chunk_size"] == CHUNK and attrs["splits"] == ["train", "test"] and attrs["backbone"] == "toy"
    assert attrs["layouts"]["test"] == {"n": 7, "cls_dim": 6, "num_patches": 3, "patch_dim": 5}
    assert attrs["twinturbo_creating"] in (False, 0)
    for split, (cls, patches, labels) in data.items():
        got = arrays[split]
        assert got["cls"].dtype == np.float16 and got["labels"].dtype == np.int64 and got["done"].dtype == bool
        np.testing.assert_array_equal(got["cls"], cls)
        np.testing.assert_array_equal(got["patches"], patches)
        np.testing.assert_array_equal(got["labels"], labels)
        assert got["done"].tolist() == [True] * store_mod.num_chunks(len(cls), CHUNK)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_matching_store_resumes_mismatched_is_refused_overwrite_replaces(tmp_path, fmt):
    path = store_path(tmp_path, fmt)
    cls, patches, labels = fake_tokens(LAYOUTS["train"], 0)
    with create_store(path, ATTRS, LAYOUTS, CHUNK) as store:
        write_all(store, "train", cls, patches, labels, chunks=[0, 2])
    with create_store(path, dict(ATTRS, created="later"), LAYOUTS, CHUNK) as store:  # same identity: resumed
        assert store.done_mask("train").tolist() == [True, False, True]
        np.testing.assert_array_equal(store.split("train").read_cls(8, 10), cls[8:10])
    for change, word in ((dict(backbone="other"), "backbone"), (dict(resolution=32), "resolution")):
        with pytest.raises(TwinTurboError, match=f"{word}.*--overwrite"):
            create_store(path, dict(ATTRS, **change), LAYOUTS, CHUNK)
    with pytest.raises(TwinTurboError, match="patch_dtype"):
        create_store(path, ATTRS, LAYOUTS, CHUNK, patch_dtype="int8")
    with pytest.raises(TwinTurboError, match="layouts"):
        create_store(path, ATTRS, {"train": SplitLayout(11, 6, 3, 5)}, CHUNK)
    with create_store(path, dict(ATTRS, backbone="other"), LAYOUTS, CHUNK, overwrite=True) as store:
        assert store.attrs["backbone"] == "other" and not store.done_mask("train").any()


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_a_failed_chunk_write_leaves_its_done_flag_clear(tmp_path, fmt, monkeypatch):
    path = store_path(tmp_path, fmt)
    cls, patches, labels = fake_tokens(LAYOUTS["test"], 1)
    store = create_store(path, ATTRS, LAYOUTS, CHUNK)
    write_all(store, "test", cls, patches, labels, chunks=[0])
    real_write = store._backend.write

    def dying_write(split, name, start, values):
        if name == "labels":  # after cls and patches, before the flag
            raise OSError("disk full")
        real_write(split, name, start, values)

    monkeypatch.setattr(store._backend, "write", dying_write)
    with pytest.raises(OSError):
        write_all(store, "test", cls, patches, labels, chunks=[1])
    store.close()
    with open_store(path) as reopened:
        assert reopened.done_mask("test").tolist() == [True, False]
        with pytest.raises(TwinTurboError, match="incomplete"):
            reopened.require_complete()


def test_a_store_killed_during_creation_is_started_again(tmp_path):
    path = tmp_path / "s"
    zarr.open_group(str(path), mode="w").attrs.update({"twinturbo_creating": True})
    with create_store(path, ATTRS, LAYOUTS, CHUNK) as store:
        assert store.attrs["backbone"] == "toy" and store.splits == ["train", "test"]


def test_quantise_int8_error_is_within_half_a_scale():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 7, 33)).astype(np.float32) * rng.uniform(1e-3, 300, size=(64, 7, 1))
    x[0, 0] = 0.0  # an all-zero token: scale 0, exact zeros back
    x[1, 1, 3] = 60000.0  # near float16's largest value
    x = x.astype(np.float16).astype(np.float32)
    q, scale = quantise_int8(x)
    assert q.dtype == np.int8 and scale.dtype == np.float16 and scale.shape == x.shape[:-1]
    assert np.abs(q.astype(np.int32)).max() <= 127
    s = scale.astype(np.float32)
    assert (s * 127 >= np.abs(x).max(axis=-1)).all()  # rounded up: no clipping
    back = q.astype(np.float32) * s[..., None]  # what a reader multiplies out
    assert (np.abs(back - x) <= s[..., None] / 2 * (1 + 1e-6)).all()
    assert (back[0, 0] == 0).all()


def test_int8_store_writes_the_quantised_tokens_and_their_scales(tmp_path):
    path = tmp_path / "s"
    cls, patches, labels = fake_tokens(LAYOUTS["train"], 2)
    with create_store(path, ATTRS, {"train": LAYOUTS["train"]}, CHUNK, patch_dtype="int8") as store:
        write_all(store, "train", cls, patches, labels)
    group = zarr.open_group(str(path), mode="r")["train"]
    q, scale = quantise_int8(patches)
    np.testing.assert_array_equal(group["patches"][...], q)
    np.testing.assert_array_equal(group["patch_scales"][...], scale)
    assert group["patches"].dtype == np.int8 and group["patch_scales"].shape == (10, 3)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_attributes_without_a_value_round_trip(tmp_path, fmt):
    """Regression: HDF5 has no None, so every extraction without --limit (attribute `limit: None`) crashed."""
    path = store_path(tmp_path, fmt)
    with create_store(path, dict(ATTRS, limit=None, n={"train": 10}), LAYOUTS, CHUNK) as store:
        write_all(store, "train", *fake_tokens(LAYOUTS["train"], 0))
    with open_store(path) as store:
        assert store.attrs["limit"] is None and store.attrs["n"] == {"train": 10}
        assert store.attrs["class_names"] == ["a", "b", "c"]
