"""The feature store's format: its version, arrays, identity and checksums, shared by the writer and the reader.

common/store/__init__.py describes the layout; this module holds what both sides must agree on: which versions are
read, which arrays carry a digest, which attributes make a store's identity (a store is resumed only by the same
extraction), the int8 quantisation, and how a path names a format.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TwinTurboError
from ..hashing import canonical_json

FORMAT_VERSION = 1  # a store without views: written as every earlier version wrote it
VIEWS_FORMAT_VERSION = 2  # a store with augmented views (extract/views.py): version 1 readers must refuse it
READABLE_VERSIONS = (FORMAT_VERSION, VIEWS_FORMAT_VERSION)
VIEW_SPLITS = ("train",)  # the splits that get views: the test split never does
FORMATS = ("zarr", "hdf5")
PATCH_DTYPES = ("float16", "int8")
HDF5_SUFFIXES = (".h5", ".hdf5")
HDF5_CLOSE_RESERVE = 4 << 20  # free bytes an HDF5 store keeps to flush its metadata and close cleanly

# Keys whose values must agree between an existing store and a new extraction for it to be resumed.
IDENTITY_KEYS = (
    "format_version", "dataset", "backbone", "weights_id", "resolution", "patch_dtype", "chunk_size", "layouts",
)
# What a complete store's root attributes hold at least (tt-extract --verify checks them).
REQUIRED_ATTRS = IDENTITY_KEYS + ("splits",)
# The digest recorded per chunk and array (bench/checksum.py: xxh3-64 hashed a 160 KiB chunk ~4x faster than crc32c).
CHECKSUM_ALGORITHM = "xxh3_64"


def checksummed_arrays(patch_dtype: str, views: bool = False) -> tuple[str, ...]:
    """The arrays whose chunks carry a digest, in the column order of a split's `checksums` array."""
    int8 = patch_dtype == "int8"
    return (("cls", "patches", "labels") + (("patch_scales",) if int8 else ())
            + ((("views_cls", "views_patches") + (("views_patch_scales",) if int8 else ())) if views else ()))


def view_fields(attrs: dict) -> dict:
    """The root attributes that say what a store's views are (none for a store without views): part of its identity,
    so a store is resumed only with the same views."""
    return {key: attrs[key] for key in ("views", "view_seed") if attrs.get("views")}


def chunk_digest(rows: np.ndarray) -> int:
    """The digest of one chunk's rows of one array, as stored (C order bytes)."""
    import xxhash

    return xxhash.xxh3_64_intdigest(np.ascontiguousarray(rows).data)


class UnreadableChunk(Exception):
    """Raised by a backend for chunk `chunk` of the array being read, whose file its library cannot decode."""

    def __init__(self, chunk: int, message: str):
        super().__init__(message)
        self.chunk = chunk


class DamagedChunk(TwinTurboError):
    """A chunk whose content does not match its checksum, or cannot be read at all."""

    def __init__(self, path: Path, split: str, array: str, chunk: int, lo: int, hi: int, what: str):
        self.split, self.array, self.chunk, self.samples = split, array, chunk, (lo, hi)
        super().__init__(f"{path}: split '{split}', {array} chunk {chunk} (samples {lo}-{hi - 1}): {what}")


@dataclass(frozen=True)
class SplitLayout:
    """Shapes of one split: N samples, a (Dc,) summary and (T, Dp) patch tokens each."""

    n: int
    cls_dim: int
    num_patches: int
    patch_dim: int

    def to_dict(self) -> dict:
        return {"n": self.n, "cls_dim": self.cls_dim, "num_patches": self.num_patches, "patch_dim": self.patch_dim}


def num_chunks(n: int, chunk_size: int) -> int:
    return (n + chunk_size - 1) // chunk_size


def quantise_int8(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absmax int8 per token: returns (q int8 [..., Dp], scale float16 [...]) with |x - q*scale| <= scale/2.

    The scale is rounded *up* to float16 before quantising so that q never needs clipping.
    """
    x = np.asarray(patches, dtype=np.float32)
    scale32 = np.abs(x).max(axis=-1) / 127.0
    scale16 = scale32.astype(np.float16)
    too_small = scale16.astype(np.float32) < scale32
    scale16[too_small] = np.nextafter(scale16[too_small], np.float16(np.inf))
    divisor = np.where(scale16 > 0, scale16.astype(np.float32), 1.0)[..., None]
    q = np.clip(np.rint(x / divisor), -127, 127).astype(np.int8)
    return q, scale16


def detect_format(path: Path) -> str:
    return "hdf5" if path.suffix in HDF5_SUFFIXES else "zarr"


def resolve_store_path(path: str | os.PathLike) -> Path:
    """`features/svhn` finds `features/svhn/` (zarr) or `features/svhn.h5` (hdf5)."""
    path = Path(path)
    if path.exists():
        return path
    for suffix in HDF5_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            return candidate
    raise TwinTurboError(f"feature store {path} does not exist (expected a zarr directory or a .h5 file from tt-extract)")



def identity_mismatch(existing: dict, wanted: dict) -> str | None:
    """The first identity key whose value differs, as 'key: existing != wanted', or None when they agree."""
    for key in IDENTITY_KEYS:
        if canonical_json(existing.get(key)) != canonical_json(wanted.get(key)):
            return f"{key}: store has {existing.get(key)!r}, this run wants {wanted.get(key)!r}"
    if canonical_json(view_fields(existing)) != canonical_json(view_fields(wanted)):
        return (f"views: store has {view_fields(existing).get('views') or 'none'}, this run wants "
                f"{view_fields(wanted).get('views') or 'none'}")
    return None

