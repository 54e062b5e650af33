"""The store's read side: the raw-chunk fast path must return exactly what plain zarr / h5py return.

Every comparison is bitwise (float16 compared as uint16) against the library reading the same files independently.
"""
from __future__ import annotations

import copy
import json
import os

import h5py
import numpy as np
import pytest
import zarr

from twinturbo.common import store as store_mod
from twinturbo.common import raw_chunks
from twinturbo.common.store import DamagedChunk, SplitLayout, create_store, open_store

N, CHUNK, DC, T, DP = 70, 16, 5, 3, 4  # 5 chunks, the last one partial (6 of 16 samples)
RANGES = [(0, N), (0, CHUNK), (3, 37), (16, 48), (15, 17), (60, N), (N - 1, N), (5, 5)]


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16) if a.dtype == np.float16 else a


def _assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(_bits(actual), _bits(expected))


def _random_patches(seed=0):
    return (np.random.default_rng(seed).standard_normal((N, T, DP)) * 3).astype(np.float32)


def _make_store(path, patch_dtype="float16", chunks=None, seed=0):
    """A twinturbo store of N random samples; `chunks` lists the chunk indices written (all by default)."""
    rng = np.random.default_rng(seed + 1)
    cls = rng.standard_normal((N, DC)).astype(np.float16)
    patches = _random_patches(seed)
    labels = rng.integers(0, 10, N)
    layouts = {"train": SplitLayout(N, DC, T, DP)}
    with create_store(path, {"dataset": "unit"}, layouts, chunk_size=CHUNK, patch_dtype=patch_dtype) as store:
        for k in range(store_mod.num_chunks(N, CHUNK)) if chunks is None else chunks:
            rows = slice(k * CHUNK, min(N, (k + 1) * CHUNK))
            store.write_chunk("train", k, cls[rows], patches[rows], labels[rows])
    return path


def _library_read(path, name, start, stop):
    """What plain zarr / h5py return for one array, with no twinturbo code involved."""
    if str(path).endswith(".h5"):
        with h5py.File(path, "r") as f:
            return f["train"][name][start:stop]
    return zarr.open_group(str(path), mode="r")["train"][name][start:stop]


def _expected_patches(path, patch_dtype, start, stop):
    patches = _library_read(path, "patches", start, stop)
    if patch_dtype == "int8":
        scales = _library_read(path, "patch_scales", start, stop)
        return (patches.astype(np.float32) * scales.astype(np.float32)[..., None]).astype(np.float16)
    return patches


def _forbid_library_reads(monkeypatch):
    """Make zarr's and h5py's own data reads fail, so a passing read proves the raw path served it."""
    def refuse(*args, **kwargs):
        raise AssertionError("library read on the fast path")

    monkeypatch.setattr(zarr.Array, "__getitem__", refuse)
    monkeypatch.setattr(h5py.Dataset, "read_direct", refuse)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", refuse)


@pytest.fixture(params=["zarr", "hdf5"])
def fmt(request):
    return request.param


def _path(tmp_path, fmt):
    return tmp_path / ("s.h5" if fmt == "hdf5" else "s")


@pytest.mark.parametrize("patch_dtype", ["float16", "int8"])
def test_fast_path_matches_library(tmp_path, fmt, patch_dtype, monkeypatch):
    path = _make_store(_path(tmp_path, fmt), patch_dtype)
    expected = {r: (_library_read(path, "cls", *r), _expected_patches(path, patch_dtype, *r)) for r in RANGES}
    labels = _library_read(path, "labels", 0, N)
    with open_store(path) as store:
        split = store.split("train")
        _forbid_library_reads(monkeypatch)
        for (start, stop), (cls, patches) in expected.items():
            got_cls, got_patches = split.read(start, stop)
            _assert_same(got_cls, cls)
            _assert_same(got_patches, patches)
        _assert_same(split.labels(), labels)
        assert split.done_mask().all()


def test_int8_reads_dequantise_within_half_a_scale(tmp_path, fmt):
    original = _random_patches()
    path = _make_store(_path(tmp_path, fmt), "int8")
    scales = _library_read(path, "patch_scales", 0, N).astype(np.float32)
    with open_store(path) as store:
        _, patches = store.split("train").load_all(progress=False)
    # float16 output adds its own rounding (half an ulp of values up to 127*scale) on top of the int8 step
    bound = scales[..., None] / 2 + np.abs(original) * 2.0 ** -11
    assert patches.dtype == np.float16
    assert np.all(np.abs(patches.astype(np.float32) - original) <= bound + 1e-7)


@pytest.mark.parametrize("patch_dtype", ["float16", "int8"])
def test_missing_chunks_read_as_zero_like_the_library(tmp_path, fmt, patch_dtype, monkeypatch):
    path = _make_store(_path(tmp_path, fmt), patch_dtype, chunks=[0, 2])  # 1, 3 and the partial 4 never written
    if fmt == "zarr":
        os.remove(path / "train" / "cls" / "c" / "0" / "0")  # a chunk file lost after the fact reads as zero too
    expected_cls = _library_read(path, "cls", 0, N)
    expected_patches = _expected_patches(path, patch_dtype, 0, N)
    assert not expected_patches[CHUNK:2 * CHUNK].any() and expected_patches[2 * CHUNK:3 * CHUNK].any()
    with open_store(path) as store:
        split = store.split("train")
        if fmt == "zarr":  # a done chunk whose file is gone no longer matches its checksum: named, not read as zeros
            with pytest.raises(DamagedChunk, match=r"split 'train', cls chunk 0 \(samples 0-15\): does not match"):
                split.read(0, N)
            split.check_reads = False  # read as the library reads it
        _forbid_library_reads(monkeypatch)
        for start, stop in RANGES:
            cls, patches = split.read(start, stop)
            _assert_same(cls, expected_cls[start:stop])
            _assert_same(patches, expected_patches[start:stop])
        assert split.done_mask().tolist() == [True, False, True, False, False]


def test_read_into_and_load_all_fill_preallocated_arrays(tmp_path, fmt):
    path = _make_store(_path(tmp_path, fmt))
    with open_store(path) as store:
        split = store.split("train")
        cls, patches = split.load_all(progress=False, samples_per_read=40)  # 2 chunks a read, unaligned tail
        _assert_same(cls, _library_read(path, "cls", 0, N))
        _assert_same(patches, _library_read(path, "patches", 0, N))
        assert split.loaded_nbytes() == cls.nbytes + patches.nbytes

        out_cls = np.full((N, DC), np.nan, dtype=np.float16)
        out_patches = np.full((N, T, DP), np.nan, dtype=np.float16)
        split.read_into(out_cls[10:50], out_patches[10:50], 10, 50)
        _assert_same(out_patches[10:50], patches[10:50])
        _assert_same(out_cls[10:50], cls[10:50])
        assert np.isnan(out_patches[:10]).all() and np.isnan(out_cls[50:]).all()  # nothing outside the slice

        with pytest.raises(ValueError, match=r"float16 array of shape \(40, 3, 4\)"):
            split.read_into(out_cls[10:50], np.empty((40, T, DP), np.float32), 10, 50)
        with pytest.raises(ValueError, match="C-contiguous"):
            split.read_cls(0, 4, out=np.empty((DC, 4), np.float16).T)
        with pytest.raises(IndexError, match=r"\[60, 71\) is outside \[0, 70\)"):
            split.read(60, N + 1)


def test_writable_hdf5_store_reads_what_was_just_written(tmp_path):
    """A store open for writing reads through h5py (chunks may still sit in HDF5's cache), and sees new chunks."""
    path = _make_store(tmp_path / "s.h5", chunks=[0])
    with open_store(path, writable=True) as store:
        split = store.split("train")
        assert not split.read_patches(CHUNK, 2 * CHUNK).any()
        values = np.ones((CHUNK, T, DP), np.float16)
        store.write_chunk("train", 1, np.ones((CHUNK, DC)), values, np.zeros(CHUNK, np.int64))
        _assert_same(split.read_patches(CHUNK, 2 * CHUNK), values)


def _rewrite_zarr_array(path, name, **options):
    """Replace one array of a twinturbo zarr store with the same values written by plain zarr with `options`."""
    group = zarr.open_group(str(path), mode="r+")["train"]
    values = group[name][:]
    array = group.create_array(name, shape=values.shape, dtype=values.dtype, fill_value=0, overwrite=True, **options)
    array[:] = values
    return values


@pytest.mark.parametrize("options", [
    {"chunks": (CHUNK, T, DP), "compressors": zarr.codecs.ZstdCodec(level=3)},
    {"chunks": (CHUNK, T, DP), "shards": (2 * CHUNK, T, DP), "compressors": None},
    {"chunks": (CHUNK, 1, DP), "compressors": None},  # chunked along T as well: not one byte range per sample
], ids=["zstd", "sharded", "chunked-along-T"])
def test_zarr_fallback_reads_arrays_that_are_not_plain_bytes(tmp_path, options):
    path = _make_store(tmp_path / "s")
    values = _rewrite_zarr_array(path, "patches", **options)
    meta = json.loads((path / "train" / "patches" / "zarr.json").read_text())
    assert raw_chunks.zarr_raw_layout(meta) is None
    with open_store(path) as store:
        split = store.split("train")
        for start, stop in RANGES:
            _assert_same(split.read_patches(start, stop), values[start:stop])


@pytest.mark.parametrize("layout", ["gzip", "contiguous"])
def test_hdf5_layouts_other_than_plain_chunks(tmp_path, layout):
    """gzip chunks read through h5py; a contiguous dataset is one plain byte range and stays on the fast path."""
    path = _make_store(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        values = f["train"]["patches"][:]
        del f["train"]["patches"]
        options = {"chunks": (CHUNK, T, DP), "compression": "gzip"} if layout == "gzip" else {}
        f["train"].create_dataset("patches", data=values, **options)
    with open_store(path) as store:
        dataset = store._backend.file["train"]["patches"]
        assert (raw_chunks.hdf5_raw_layout(dataset) is None) == (layout == "gzip")
        split = store.split("train")
        for start, stop in RANGES:
            _assert_same(split.read_patches(start, stop), values[start:stop])


PLAIN_META = {
    "zarr_format": 3, "node_type": "array", "shape": [70, 3, 4], "data_type": "float16",
    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [16, 3, 4]}},
    "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
    "fill_value": 0.0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
    "storage_transformers": [],
}


@pytest.mark.parametrize("change", [
    ("codecs", [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd"}]),
    ("codecs", [{"name": "bytes", "configuration": {"endian": "big"}}]),
    ("codecs", [{"name": "transpose", "configuration": {"order": [0, 2, 1]}}, {"name": "bytes"}]),
    ("chunk_key_encoding", {"name": "v2", "configuration": {"separator": "."}}),
    ("chunk_key_encoding", {"name": "default", "configuration": {"separator": "."}}),
    ("fill_value", "NaN"),
    ("storage_transformers", [{"name": "something"}]),
    ("data_type", "complex64"),
    ("zarr_format", 2),
], ids=lambda c: c[0] if not isinstance(c, tuple) else None)
def test_zarr_metadata_that_is_not_plain_bytes_is_refused(change):
    assert raw_chunks.zarr_raw_layout(PLAIN_META) is not None
    meta = copy.deepcopy(PLAIN_META)
    meta[change[0]] = change[1]
    assert raw_chunks.zarr_raw_layout(meta) is None
