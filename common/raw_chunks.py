"""Raw chunk reads. An uncompressed chunk, zarr v3 `bytes` codec or HDF5 without filters, *is* the array's bytes in C
order, and chunks run along N only, so samples [a, b) of one chunk are one contiguous byte range of one file.
Copying that range out of a read-only mapping runs at memcpy speed; zarr's `arr[a:b]` reaches ~0.3x of it and
h5py's ~0.4x (bench/read.py's --sweep table in bench/README.md). Anything that is not plain bytes reads through zarr/h5py instead.
"""
from __future__ import annotations

import functools
import math
import mmap
import sys
import warnings
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np

_RAW_DTYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64",
}

@dataclass(frozen=True)
class RawLayout:
    """An uncompressed array chunked along N only: chunk k holds rows [k*chunk_rows, (k+1)*chunk_rows) as raw bytes."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunk_rows: int
    fill_value: object

    @functools.cached_property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_rows * self.row_bytes

def _plain_fill(value) -> bool:
    return isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating))

def zarr_raw_layout(meta: dict) -> RawLayout | None:
    """The layout of a zarr v3 array whose chunk files are its raw bytes, read from its zarr.json; None otherwise.

    Plain means: a regular grid chunked along N only, default chunk keys, the `bytes` codec alone (little endian on
    a little-endian machine), no storage transformer, a numeric fill value. Compressors, sharding, transposes and
    v2 keys all fail the test and read through zarr.
    """
    try:
        if meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or meta.get("storage_transformers"):
            return None
        shape = tuple(int(s) for s in meta["shape"])
        grid, keys, codecs = meta["chunk_grid"], meta["chunk_key_encoding"], meta["codecs"]
        chunk_shape = tuple(int(s) for s in grid["configuration"]["chunk_shape"])
        if grid.get("name") != "regular" or not shape or chunk_shape[1:] != shape[1:] or chunk_shape[0] < 1:
            return None
        if keys.get("name") != "default" or keys.get("configuration", {}).get("separator", "/") != "/":
            return None
        if len(codecs) != 1 or codecs[0].get("name") != "bytes" or meta["data_type"] not in _RAW_DTYPES:
            return None
        dtype = np.dtype(meta["data_type"])
        endian = (codecs[0].get("configuration") or {}).get("endian")
        if dtype.itemsize > 1 and (endian != "little" or sys.byteorder != "little"):
            return None
        if not _plain_fill(meta.get("fill_value")):
            return None
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return RawLayout(shape, dtype, chunk_shape[0], meta["fill_value"])

def hdf5_raw_layout(dataset) -> tuple[RawLayout, dict[int, int]] | None:
    """Layout and file offset of each written chunk of an HDF5 dataset stored as plain bytes; None otherwise.

    Chunked (along N only) or contiguous, no filters, no external files, native little-endian numbers, no userblock
    (so HDF5 addresses are file offsets). A chunk HDF5 never allocated is absent from the offsets: it reads as the
    fill value.
    """
    import h5py

    dtype = dataset.dtype
    if (dataset.file.userblock_size or not dataset.shape or dtype.kind not in "biuf" or not dtype.isnative
            or sys.byteorder != "little"):
        return None
    plist = dataset.id.get_create_plist()
    if plist.get_nfilters() != 0:
        return None
    shape = tuple(int(s) for s in dataset.shape)
    fill = np.asarray(dataset.fillvalue).item()
    kind = plist.get_layout()
    if kind == h5py.h5d.CONTIGUOUS:
        layout = RawLayout(shape, np.dtype(dtype), max(shape[0], 1), fill)
        if plist.get_external_count() != 0:
            return None
        offset = dataset.id.get_offset()
        if offset is None:
            return layout, {}
        if dataset.id.get_storage_size() != shape[0] * layout.row_bytes:
            return None
        return layout, {0: int(offset)}
    if kind != h5py.h5d.CHUNKED or tuple(dataset.chunks[1:]) != shape[1:]:
        return None
    layout = RawLayout(shape, np.dtype(dtype), int(dataset.chunks[0]), fill)
    infos = []
    if hasattr(dataset.id, "chunk_iter"):
        dataset.id.chunk_iter(infos.append)
    else:
        infos = [dataset.id.get_chunk_info(i) for i in range(dataset.id.get_num_chunks())]
    offsets = {}
    for info in infos:
        if info.filter_mask != 0 or info.size != layout.chunk_bytes or info.byte_offset is None:
            return None
        offsets[info.chunk_offset[0] // layout.chunk_rows] = int(info.byte_offset)
    return layout, offsets

def map_rows(fd: int, offset: int, layout: RawLayout, rows: int) -> np.ndarray:
    """`rows` samples of `layout` stored at byte `offset` of `fd`, as a read-only view of a mapping (no copy).

    The mapping lives as long as the view; copying from it is a plain memcpy out of the page cache, about twice as
    fast as read()/pread() into the same buffer on these machines. MAP_POPULATE maps all its pages in one call
    instead of one page fault per 64 KiB or so, which costs most when other processes load the CPU.
    """
    nbytes = rows * layout.row_bytes
    if nbytes == 0:
        return np.zeros((rows,) + layout.shape[1:], dtype=layout.dtype)
    aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
    mapping = mmap.mmap(fd, nbytes + offset - aligned, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                        prot=mmap.PROT_READ, offset=aligned)
    flat = np.frombuffer(mapping, dtype=layout.dtype, count=nbytes // layout.dtype.itemsize, offset=offset - aligned)
    return flat.reshape((rows,) + layout.shape[1:])

def chunk_spans(chunk_rows: int, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
    """(chunk index, first row, end row) of every chunk overlapping [start, stop), in order."""
    for k in range(start // chunk_rows, (stop + chunk_rows - 1) // chunk_rows):
        yield k, max(start, k * chunk_rows), min(stop, (k + 1) * chunk_rows)

class Segments(NamedTuple):
    """Rows [start, stop) of one array as consecutive (first row, end row, rows) pieces, one per chunk on the fast
    path: `rows` is a read-only view of the stored bytes (valid until dropped), or None for a chunk never written,
    which reads as `fill_value`. On the library path there is one piece, read by zarr/h5py."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: object
    pieces: Iterator[tuple[int, int, np.ndarray | None]]

def read_rows(segments: Segments, start: int, stop: int, out: np.ndarray | None) -> np.ndarray:
    """Copy the pieces into `out` (allocated when None); the one copy a read makes."""
    shape = (stop - start,) + tuple(segments.shape[1:])
    if out is None:
        out = np.empty(shape, dtype=segments.dtype)
    else:
        check_out(out, shape, segments.dtype, "read")
    for lo, hi, rows in segments.pieces:
        if rows is None:
            out[lo - start:hi - start] = segments.fill_value
        else:
            np.copyto(out[lo - start:hi - start], rows, casting="no")
    return out

def dequantise_into(q: np.ndarray | None, scales: np.ndarray, out: np.ndarray, fill_value=0) -> None:
    """out = q * scale in float16, rounded once from the exact product: bit-equal to
    `(q.astype(float32) * scales.astype(float32)[..., None]).astype(float16)` (the inverse of store.quantise_int8). torch does it ~10x faster than numpy, whose float32 -> float16
    cast is scalar; q is a read-only view of the store, which torch only reads."""
    import torch

    if q is None:
        q = np.full(out.shape, fill_value, dtype=np.int8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        torch.mul(torch.from_numpy(q), torch.from_numpy(np.ascontiguousarray(scales))[..., None],
                  out=torch.from_numpy(out))

def check_range(start: int, stop: int, n: int) -> None:
    if not 0 <= start <= stop <= n:
        raise IndexError(f"sample range [{start}, {stop}) is outside [0, {n})")

def check_out(out: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(
            f"{what} output must be a writeable C-contiguous {np.dtype(dtype).name} array of shape {shape}, "
            f"got {out.dtype.name} {out.shape}"
        )
