"""The feature store: the only contract between stage 1 (`tt-extract`) and stage 2 (`tt-train`, `tt-sweep`).

One store per dataset and backbone. Zarr v3 (a directory, the default) or HDF5 (one `.h5` file), same layout:

    <root>                attrs: see `FeatureStore.attrs` (format version, backbone, resolution, dataset, ...)
      <split>/            one group per split (`train`, `test`), attrs: n, chunk_size
        cls      (N, Dc)     float16   global summary token
        patches  (N, T, Dp)  float16   patch tokens (int8 when the store was written with --dtype int8)
        patch_scales (N, T)  float16   only for int8 patches: one absmax scale per token, x ~= q * scale
        labels   (N,)        int64     class index, -1 where the source has none
        views_cls     (N, V, Dc)     float16   only in a store with views (format 2), train split: V augmented views
        views_patches (N, V, T, Dp)  float16   of each image through the same backbone (int8: + views_patch_scales
                                               (N, V, T)); view v belongs to the root's `views` entry covering it
        checksums (N/chunk, A) uint64  per chunk, the xxh3-64 digest of each array's rows as stored (A arrays, named
                                       in the split's attrs); written before the chunk's done flag
        done     (N/chunk,)  bool      chunk k is completely written (resume + integrity)

Chunks run along N only, so a training batch reads whole contiguous chunks. All arrays are stored uncompressed:
compression saves <= 15% on fp16 tokens and costs read speed (bench/README.md, "Reading a split"). A store is readable
with plain zarr/h5py; this module only adds resume bookkeeping, identity checks and int8 dequantisation.
"""
from __future__ import annotations

import hashlib
import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import TwinTurboError
from .hashing import canonical_json
from .raw_chunks import (RawLayout, Segments, check_out, check_range, chunk_spans,
                         dequantise_into, hdf5_raw_layout, map_rows, read_rows, zarr_raw_layout)

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


# ---------------------------------------------------------------------------------------------------------------------
# Backends: the minimum each format must do. Both read/write plain numpy arrays by name under a split group.
# ---------------------------------------------------------------------------------------------------------------------

class _ZarrBackend:
    def __init__(self, path: Path, mode: str):
        import zarr

        self.path = path
        self._raw_layouts: dict[tuple[str, str], tuple[tuple, RawLayout | None]] = {}
        self._write_arrays: dict[tuple[str, str], object] = {}
        try:
            self.root = zarr.open_group(str(path), mode=mode)
        except Exception as err:  # zarr raises several types for a missing/corrupt group
            raise TwinTurboError(f"cannot open zarr store {path}: {type(err).__name__}: {err}".splitlines()[0]) from None

    def attrs(self) -> dict:
        return dict(self.root.attrs)

    def set_attrs(self, attrs: dict) -> None:
        self.root.attrs.update(attrs)

    def split_names(self) -> list[str]:
        return sorted(name for name, _ in self.root.groups())

    def split_attrs(self, split: str) -> dict:
        return dict(self.root[split].attrs)

    def create_split(self, split: str, attrs: dict, arrays: dict[str, tuple[tuple, tuple, str]]) -> None:
        self._write_arrays = {key: a for key, a in self._write_arrays.items() if key[0] != split}
        group = self.root.create_group(split, overwrite=True)
        group.attrs.update(attrs)
        for name, (shape, chunks, dtype) in arrays.items():
            group.create_array(
                name, shape=shape, chunks=chunks, dtype=dtype, compressors=None, fill_value=0,
                config={"write_empty_chunks": True},
            )

    def array(self, split: str, name: str):
        return self.root[split][name]

    def write(self, split: str, name: str, start: int, values: np.ndarray) -> None:
        # Opening an array re-reads its zarr.json: ~7% of writing a RADIO-size chunk, so keep it open.
        key = (split, name)
        array = self._write_arrays.get(key)
        if array is None:
            array = self._write_arrays[key] = self.root[split][name]
        array[start:start + len(values)] = values

    def read(self, split: str, name: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of one array, into `out` when given: chunk files copied directly where plain."""
        return read_rows(self.segments(split, name, start, stop), start, stop, out)

    def _raw_layout(self, split: str, name: str) -> RawLayout | None:
        """The array's plain layout from its zarr.json, cached until that file changes (a split written anew)."""
        meta_path = self.path / split / name / "zarr.json"
        try:
            st = meta_path.stat()
        except OSError:
            return None  # zarr's own read then says what is missing
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._raw_layouts.get((split, name))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            meta = json.loads(meta_path.read_bytes())
        except (OSError, ValueError):
            meta = None
        layout = zarr_raw_layout(meta) if isinstance(meta, dict) else None
        self._raw_layouts[(split, name)] = (stamp, layout)
        return layout

    def segments(self, split: str, name: str, start: int, stop: int) -> "Segments":
        """Rows [start, stop) chunk by chunk, as views of the chunk files when plain (see `Segments`)."""
        layout = self._raw_layout(split, name)
        if layout is None:
            array = self.array(split, name)
            return Segments(tuple(array.shape), np.dtype(array.dtype), array.fill_value,
                             iter([(start, stop, array[start:stop])] if stop > start else []))
        chunk_dir = os.path.join(self.path, split, name, "c", "")
        trailing = "/0" * (len(layout.shape) - 1)

        def chunks() -> Iterator[tuple[int, int, np.ndarray | None]]:
            for k, lo, hi in chunk_spans(layout.chunk_rows, start, stop):
                try:
                    fd = os.open(f"{chunk_dir}{k}{trailing}", os.O_RDONLY)
                except FileNotFoundError:
                    yield lo, hi, None  # never written: zarr reads it as the fill value, so do we
                    continue
                try:
                    if os.fstat(fd).st_size == layout.chunk_bytes:
                        rows = map_rows(fd, (lo - k * layout.chunk_rows) * layout.row_bytes, layout, hi - lo)
                    else:
                        try:  # not plain bytes of the expected size: zarr's own reader decides
                            rows = self.array(split, name)[lo:hi]
                        except Exception as err:  # a truncated or garbled chunk file
                            raise UnreadableChunk(k, f"{type(err).__name__}: {err}".splitlines()[0]) from None
                finally:
                    os.close(fd)
                yield lo, hi, rows

        return Segments(layout.shape, layout.dtype, layout.fill_value, chunks())

    def flush(self) -> None:
        pass  # every zarr write is already a finished chunk file

    def close(self) -> None:
        pass


class _Hdf5Backend:
    def __init__(self, path: Path, mode: str):
        import h5py

        self.path = path
        self._raw_layouts: dict[tuple[str, str], tuple[RawLayout, dict[int, int]] | None] = {}
        h5_mode = {"r": "r", "r+": "r+", "w": "w", "a": "a"}[mode]
        try:
            self.file = h5py.File(path, h5_mode)
        except OSError as err:
            raise TwinTurboError(
                f"cannot open HDF5 store {path}: {str(err).splitlines()[0]} "
                "(damaged by a kill during a write? rerun tt-extract with --overwrite)"
            ) from None

    @staticmethod
    def _decode(value):
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and (value[:1] in "[{" or value == "null"):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        if isinstance(value, np.generic):
            return value.item()
        return value

    @staticmethod
    def _encode(value):
        """HDF5 attributes hold strings and numbers: containers and None (e.g. `limit` without --limit) go as JSON."""
        return json.dumps(value) if value is None or isinstance(value, (dict, list, tuple)) else value

    def attrs(self) -> dict:
        return {k: self._decode(v) for k, v in self.file.attrs.items()}

    def set_attrs(self, attrs: dict) -> None:
        for key, value in attrs.items():
            self.file.attrs[key] = self._encode(value)

    def split_names(self) -> list[str]:
        return sorted(self.file.keys())

    def split_attrs(self, split: str) -> dict:
        return {k: self._decode(v) for k, v in self.file[split].attrs.items()}

    def create_split(self, split: str, attrs: dict, arrays: dict[str, tuple[tuple, tuple, str]]) -> None:
        if split in self.file:
            del self.file[split]
        group = self.file.create_group(split)
        for key, value in attrs.items():
            group.attrs[key] = self._encode(value)
        for name, (shape, chunks, dtype) in arrays.items():
            group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fillvalue=0)

    def array(self, split: str, name: str):
        return self.file[split][name]

    def write(self, split: str, name: str, start: int, values: np.ndarray) -> None:
        # HDF5 reports a full disk only when it evicts the chunk from its cache, inside h5py's deallocation, and
        # that ended the process with a segmentation fault: stop while there is still room for the file to close.
        room = os.statvfs(self.path.parent)
        free = room.f_bavail * room.f_frsize
        if free < values.nbytes + HDF5_CLOSE_RESERVE:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {free / 2**20:.1f} MiB free, and HDF5 keeps "
                                        f"{HDF5_CLOSE_RESERVE >> 20} MiB free to close the file", str(self.path))
        self.file[split][name][start:start + len(values)] = values

    def read(self, split: str, name: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of one dataset, into `out` when given: chunk bytes copied directly where plain."""
        return read_rows(self.segments(split, name, start, stop), start, stop, out)

    def segments(self, split: str, name: str, start: int, stop: int) -> "Segments":
        """Rows [start, stop) chunk by chunk, as views of the file's chunk bytes when plain (see `Segments`)."""
        dataset = self.file[split][name]
        # Only a read-only file: one opened for writing may hold chunks in HDF5's cache that are not on disk yet,
        # and its chunk offsets change as chunks are allocated.
        key = (split, name)
        if self.file.mode == "r" and key not in self._raw_layouts:
            self._raw_layouts[key] = hdf5_raw_layout(dataset)
        raw = self._raw_layouts.get(key) if self.file.mode == "r" else None
        if raw is None:
            rows = np.empty((stop - start,) + dataset.shape[1:], dtype=dataset.dtype)
            if stop > start:
                dataset.read_direct(rows, source_sel=np.s_[start:stop])
            return Segments(dataset.shape, dataset.dtype, dataset.fillvalue, iter([(start, stop, rows)]))
        layout, offsets = raw

        def chunks() -> Iterator[tuple[int, int, np.ndarray | None]]:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                for k, lo, hi in chunk_spans(layout.chunk_rows, start, stop):
                    base = offsets.get(k)
                    if base is None:
                        yield lo, hi, None  # never allocated: HDF5 reads it as the fill value
                    else:
                        yield lo, hi, map_rows(fd, base + (lo - k * layout.chunk_rows) * layout.row_bytes, layout,
                                                hi - lo)
            finally:
                os.close(fd)

        return Segments(layout.shape, layout.dtype, layout.fill_value, chunks())

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _open_backend(path: Path, mode: str):
    return (_Hdf5Backend if detect_format(path) == "hdf5" else _ZarrBackend)(path, mode)


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------

class SplitReader:
    """Read access to one split. `read(a, b)` returns float16 (cls, patches); int8 patches come back dequantised.

    Reads are contiguous sample ranges, never fancy indexing: a trainer reads whole chunks (or the whole split with
    `load_all`) in order and shuffles in memory. Plain (uncompressed) chunks are copied straight out of the files.
    """

    def __init__(self, backend, name: str, store_attrs: dict, path: Path | None = None):
        self._backend = backend
        self.name = name
        self.path = path
        attrs = backend.split_attrs(name)
        self.checksum_arrays: tuple[str, ...] = tuple(attrs.get("checksum_arrays", ()))
        self.check_reads = True  # check every whole chunk read against its checksum (bench/checksum.py turns it off)
        self._checksums: np.ndarray | None = None
        self._checked_done: np.ndarray | None = None
        self.n: int = int(attrs["n"])
        self.chunk_size: int = int(attrs["chunk_size"])
        self.patch_dtype: str = store_attrs.get("patch_dtype", "float16")
        cls_shape = backend.array(name, "cls").shape
        patch_shape = backend.array(name, "patches").shape
        self.cls_dim: int = int(cls_shape[1])
        self.num_patches: int = int(patch_shape[1])
        self.patch_dim: int = int(patch_shape[2])
        # The augmented views of each sample (none in a store without views and in the test split): `view_kinds`
        # maps each name of the root's `views` entries to its (first view index, count).
        self.view_kinds: dict[str, tuple[int, int]] = {}
        if name in VIEW_SPLITS:
            for entry in store_attrs.get("views") or ():
                self.view_kinds[str(entry["name"])] = (sum(c for _, c in self.view_kinds.values()), int(entry["count"]))
        self.num_views: int = sum(count for _, count in self.view_kinds.values())

    @property
    def num_chunks(self) -> int:
        return num_chunks(self.n, self.chunk_size)

    def done_mask(self) -> np.ndarray:
        return np.asarray(self._backend.read(self.name, "done", 0, self.num_chunks), dtype=bool)

    @property
    def has_checksums(self) -> bool:
        return bool(self.checksum_arrays)

    def checksums(self) -> np.ndarray:
        """[num_chunks, len(checksum_arrays)] uint64 digests (stores written before checksums: an empty array)."""
        if self._checksums is None:
            self._checksums = np.asarray(self._backend.read(self.name, "checksums", 0, self.num_chunks)) \
                if self.has_checksums else np.zeros((self.num_chunks, 0), dtype=np.uint64)
        return self._checksums

    def damaged(self, array: str, chunk: int, what: str) -> DamagedChunk:
        lo = chunk * self.chunk_size
        return DamagedChunk(self.path, self.name, array, chunk, lo, min(lo + self.chunk_size, self.n), what)

    def check_rows(self, array: str, start: int, rows: np.ndarray) -> None:
        """Raise DamagedChunk when a whole chunk among `rows` (samples [start, start + len(rows)) of `array`, as
        stored) does not match its checksum; partial chunks at either end are not checked."""
        if not (self.check_reads and array in self.checksum_arrays):
            return
        column = self.checksum_arrays.index(array)
        size, stop = self.chunk_size, start + len(rows)
        if self._checked_done is None:  # read once: a chunk not yet written has no checksum (it reads as the fill)
            self._checked_done = self.done_mask()
        done = self._checked_done
        for k in range(-(-start // size), num_chunks(stop, size) if stop == self.n else stop // size):
            if not done[k]:
                continue
            lo, hi = k * size, min((k + 1) * size, self.n)
            if chunk_digest(rows[lo - start:hi - start]) != int(self.checksums()[k, column]):
                raise self.damaged(array, k, "does not match its checksum: the store is damaged (tt-extract --verify "
                                             "names every damaged chunk, --verify --repair marks them for re-extraction)")

    def read_checked(self, array: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of one array as stored, each whole chunk checked against its checksum; a chunk that
        cannot be read at all (a truncated file) is a DamagedChunk too."""
        try:
            rows = self._backend.read(self.name, array, start, stop, out)
        except UnreadableChunk as err:
            raise self.damaged(array, err.chunk, f"cannot be read ({err}): the store is damaged (tt-extract --verify "
                                                 "--repair marks it for re-extraction)") from None
        self.check_rows(array, start, rows)
        return rows

    def labels(self) -> np.ndarray:
        return np.asarray(self.read_checked("labels", 0, self.n), dtype=np.int64)

    def read_cls(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Summary tokens of samples [start, stop) as float16 [n, Dc], written into `out` when given."""
        check_range(start, stop, self.n)
        return self.read_checked("cls", start, stop, out)

    def read_patches(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Patch tokens of samples [start, stop) as float16 [n, T, Dp] (int8 stores dequantised, not checked: the
        stored int8 tokens are, by read_stored), into `out`."""
        check_range(start, stop, self.n)
        if self.patch_dtype != "int8":
            return self.read_checked("patches", start, stop, out)
        shape = (stop - start, self.num_patches, self.patch_dim)
        if out is None:
            out = np.empty(shape, dtype=np.float16)
        else:
            check_out(out, shape, np.dtype(np.float16), "patches")
        scales = self._backend.read(self.name, "patch_scales", start, stop)
        segments = self._backend.segments(self.name, "patches", start, stop)
        for lo, hi, q in segments.pieces:
            dequantise_into(q, scales[lo - start:hi - start], out[lo - start:hi - start], segments.fill_value)
        return out

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples [start, stop) as (cls [n, Dc] float16, patches [n, T, Dp] float16). Contiguous, never fancy."""
        return self.read_cls(start, stop), self.read_patches(start, stop)

    def read_into(self, out_cls: np.ndarray, out_patches: np.ndarray, start: int, stop: int) -> None:
        """`read` into preallocated float16 arrays (e.g. slices of one whole-split buffer): no allocation, one copy."""
        self.read_cls(start, stop, out_cls)
        self.read_patches(start, stop, out_patches)

    def loaded_nbytes(self, quantised: bool = False, views: bool = False) -> int:
        """Bytes of RAM `load_all` needs (and with `views`, `load_views` too): float16 tokens, or with `quantised`
        (int8 stores) int8 patch tokens plus their float16 scales, about half."""
        rows = self.n * (1 + (self.num_views if views else 0))
        if quantised and self.patch_dtype == "int8":
            return rows * self.stored_row_nbytes()
        return 2 * rows * (self.cls_dim + self.num_patches * self.patch_dim)

    def load_all(self, progress: bool = True, samples_per_read: int = 512, out_cls: np.ndarray | None = None,
                 out_patches: np.ndarray | None = None,
                 out_scales: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The whole split in memory as float16 (cls [N, Dc], patches [N, T, Dp]), filled in order a few whole
        chunks (about `samples_per_read` samples) at a time, with a progress bar; into `out_*` when given (e.g.
        numpy views of pinned torch tensors). With `out_scales` [N, T] (int8 stores), `out_patches` receives the
        int8 tokens as stored and `out_scales` their scales: dequantise per batch (patches * scales[..., None])."""
        from tqdm.auto import tqdm

        quantised = out_scales is not None
        if quantised and self.patch_dtype != "int8":
            raise ValueError(f"split {self.name} holds {self.patch_dtype} patches, not int8")
        cls = np.empty((self.n, self.cls_dim), dtype=np.float16) if out_cls is None else out_cls
        patches = (np.empty((self.n, self.num_patches, self.patch_dim), dtype=np.float16) if out_patches is None
                   else out_patches)
        chunks_per_read = max(1, samples_per_read // self.chunk_size)
        with tqdm(total=self.n, unit="sample", desc=f"loading {self.name}", disable=not progress, leave=False) as bar:
            for start, stop in self.iter_chunks(chunks_per_read):
                if quantised:
                    self.read_stored(start, stop, cls[start:stop], patches[start:stop], out_scales[start:stop])
                else:
                    self.read_into(cls[start:stop], patches[start:stop], start, stop)
                bar.update(stop - start)
        return cls, patches

    def read_stored(self, start: int, stop: int, out_cls: np.ndarray, out_patches: np.ndarray,
                    out_scales: np.ndarray | None = None) -> None:
        """Samples [start, stop) as stored: float16 cls, patches float16 or (int8 stores) int8 with their float16
        scales into `out_scales`, not dequantised (what a trainer holds to use half the memory)."""
        check_range(start, stop, self.n)
        self.read_cls(start, stop, out_cls)
        if self.patch_dtype == "int8":
            if out_scales is None:
                raise ValueError(f"split {self.name} holds int8 patches: read_stored needs out_scales")
            self.read_checked("patches", start, stop, out_patches)
            self.read_checked("patch_scales", start, stop, out_scales)
        else:
            self.read_checked("patches", start, stop, out_patches)

    def stored_row_nbytes(self, views: bool = False) -> int:
        """Bytes one sample takes as stored (cls, patch tokens, int8 scales; with `views`, its views too): the unit of
        a trainer's memory."""
        if self.patch_dtype == "int8":
            one = 2 * self.cls_dim + self.num_patches * (self.patch_dim + 2)
        else:
            one = 2 * (self.cls_dim + self.num_patches * self.patch_dim)
        return one * (1 + (self.num_views if views else 0))

    def read_views_stored(self, start: int, stop: int, out_cls: np.ndarray, out_patches: np.ndarray,
                          out_scales: np.ndarray | None = None) -> None:
        """The views of samples [start, stop) as stored, each whole chunk checked: float16 cls [n, V, Dc], patches
        [n, V, T, Dp] float16 or (int8 stores) int8 with their float16 scales into `out_scales` [n, V, T]."""
        check_range(start, stop, self.n)
        if not self.num_views:
            raise ValueError(f"split {self.name} has no views")
        self.read_checked("views_cls", start, stop, out_cls)
        self.read_checked("views_patches", start, stop, out_patches)
        if self.patch_dtype == "int8":
            if out_scales is None:
                raise ValueError(f"split {self.name} holds int8 patches: read_views_stored needs out_scales")
            self.read_checked("views_patch_scales", start, stop, out_scales)

    def read_views(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The views of samples [start, stop) as float16 (cls [n, V, Dc], patches [n, V, T, Dp]), int8 dequantised
        as `read_patches` does."""
        n, views = stop - start, self.num_views
        cls = np.empty((n, views, self.cls_dim), dtype=np.float16)
        patches = np.empty((n, views, self.num_patches, self.patch_dim),
                           dtype=np.int8 if self.patch_dtype == "int8" else np.float16)
        scales = np.empty((n, views, self.num_patches), dtype=np.float16) if self.patch_dtype == "int8" else None
        self.read_views_stored(start, stop, cls, patches, scales)
        if scales is None:
            return cls, patches
        dequantised = np.empty(patches.shape, dtype=np.float16)
        dequantise_into(patches, scales, dequantised)
        return cls, dequantised

    def iter_chunks(self, chunks_per_read: int = 1) -> Iterator[tuple[int, int]]:
        """(start, stop) ranges of whole chunks, in order."""
        step = self.chunk_size * chunks_per_read
        for start in range(0, self.n, step):
            yield start, min(start + step, self.n)


class FeatureStore:
    """An opened store. Use `open_store` to read and `create_store` to write."""

    def __init__(self, path: Path, backend, writable: bool):
        self.path = path
        self.format = detect_format(path)
        self._backend = backend
        self.writable = writable
        self.attrs: dict = backend.attrs()
        if "format_version" not in self.attrs:
            raise TwinTurboError(f"{path} is not a twinturbo feature store (no format_version attribute)")
        if self.attrs["format_version"] not in READABLE_VERSIONS:
            raise TwinTurboError(
                f"{path} has store format version {self.attrs['format_version']}, this twinturbo reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}: re-extract it with this version's tt-extract"
            )

    @property
    def splits(self) -> list[str]:
        return list(self.attrs.get("splits", self._backend.split_names()))

    def split(self, name: str) -> SplitReader:
        if name not in self._backend.split_names():
            raise TwinTurboError(f"{self.path} has no split '{name}' (it has: {', '.join(self.splits) or 'none'})")
        return SplitReader(self._backend, name, self.attrs, self.path)

    @property
    def class_names(self) -> list[str]:
        return list(self.attrs.get("class_names", []))

    def identity(self) -> dict:
        """What a run needs to record to know later which features it trained on.

        The fingerprint hashes the extraction's recipe (source file checksums, backbone, weights, resolution, dtype,
        layout), not its creation time: the same extraction redone on another machine has the same fingerprint, so a
        committed sweep resumes there (its run ids contain the fingerprint).
        """
        key = {k: self.attrs.get(k) for k in IDENTITY_KEYS + ("source_checksums",)} | view_fields(self.attrs)
        return {
            "path": str(self.path.resolve()),
            "dataset": self.attrs.get("dataset"),
            "backbone": self.attrs.get("backbone"),
            "created": self.attrs.get("created"),
            "fingerprint": hashlib.sha256(canonical_json(key).encode()).hexdigest()[:16],
        }

    def require_complete(self) -> None:
        for name in self.splits:
            done = self.split(name).done_mask()
            if not done.all():
                raise TwinTurboError(
                    f"{self.path}: split '{name}' is incomplete ({int(done.sum())}/{len(done)} chunks done); "
                    "rerun the same tt-extract command to finish it"
                )

    # -- writing ----------------------------------------------------------------------------------------------------

    def done_mask(self, split: str) -> np.ndarray:
        return self.split(split).done_mask()

    def write_chunk(self, split: str, chunk_index: int, cls: np.ndarray, patches: np.ndarray,
                    labels: np.ndarray, views_cls: np.ndarray | None = None,
                    views_patches: np.ndarray | None = None) -> None:
        """Write one whole chunk, then mark it done. A kill before the flag leaves it to be redone on resume.
        A split with views takes them too: `views_cls` [n, V, Dc], `views_patches` [n, V, T, Dp]."""
        if not self.writable:
            raise RuntimeError("store opened read-only")
        with_views = self.split(split).num_views > 0
        if with_views != (views_cls is not None):
            raise ValueError(f"split {split} {'holds' if with_views else 'has no'} views: write_chunk "
                             f"{'needs' if with_views else 'takes no'} views_cls and views_patches")
        chunk_size = int(self.attrs["chunk_size"])
        start = chunk_index * chunk_size
        int8 = self.attrs["patch_dtype"] == "int8"
        stored = {"cls": np.asarray(cls, dtype=np.float16), "labels": np.asarray(labels, dtype=np.int64)}
        if int8:
            stored["patches"], stored["patch_scales"] = quantise_int8(patches)
        else:
            stored["patches"] = np.asarray(patches, dtype=np.float16)
        if with_views:
            stored["views_cls"] = np.asarray(views_cls, dtype=np.float16)
            if int8:
                stored["views_patches"], stored["views_patch_scales"] = quantise_int8(views_patches)
            else:
                stored["views_patches"] = np.asarray(views_patches, dtype=np.float16)
        for name, values in stored.items():
            self._backend.write(split, name, start, values)
        arrays = checksummed_arrays(self.attrs["patch_dtype"], with_views)
        digests = np.array([[chunk_digest(stored[name]) for name in arrays]], dtype=np.uint64)
        self._backend.write(split, "checksums", chunk_index, digests)
        self._backend.flush()
        self._backend.write(split, "done", chunk_index, np.ones(1, dtype=bool))
        self._backend.flush()

    def mark_not_done(self, split: str, chunks: list[int]) -> None:
        """Clear the done flags of `chunks` (tt-extract --verify --repair): the same tt-extract command redoes them."""
        for chunk in chunks:
            self._backend.write(split, "done", chunk, np.zeros(1, dtype=bool))
        self._backend.flush()

    def chunks_done(self) -> int:
        """Chunks marked done over every split (0: the store holds nothing computed yet)."""
        return sum(int(self.done_mask(split).sum()) for split in self.splits if split in self._backend.split_names())

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(path: str | os.PathLike, writable: bool = False) -> FeatureStore:
    """Open an existing store (zarr directory or .h5 file) for reading, or for writing its chunks."""
    resolved = resolve_store_path(path)
    return FeatureStore(resolved, _open_backend(resolved, "r+" if writable else "r"), writable)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _was_killed_while_created(path: Path) -> bool:
    """A store whose creation never finished holds no chunk yet: it is safe to start it again."""
    try:
        attrs = _open_backend(path, "r").attrs()
    except TwinTurboError:
        return False
    return bool(attrs.get("twinturbo_creating")) and "format_version" not in attrs


def identity_mismatch(existing: dict, wanted: dict) -> str | None:
    """The first identity key whose value differs, as 'key: existing != wanted', or None when they agree."""
    for key in IDENTITY_KEYS:
        if canonical_json(existing.get(key)) != canonical_json(wanted.get(key)):
            return f"{key}: store has {existing.get(key)!r}, this run wants {wanted.get(key)!r}"
    if canonical_json(view_fields(existing)) != canonical_json(view_fields(wanted)):
        return (f"views: store has {view_fields(existing).get('views') or 'none'}, this run wants "
                f"{view_fields(wanted).get('views') or 'none'}")
    return None


def create_store(path: str | os.PathLike, attrs: dict, layouts: dict[str, SplitLayout], chunk_size: int,
                 patch_dtype: str = "float16", overwrite: bool = False) -> FeatureStore:
    """Create a store, or reopen a matching one to resume it.

    An existing store whose identity (dataset, backbone, weights, resolution, dtype, chunking, shapes, views) differs
    is refused unless `overwrite`, which deletes it first. Metadata is written before any chunk, and the `done` flags
    last, so a store killed at any point is recognisably incomplete. `attrs` with `views` (a list of {"name",
    "count", ...} entries, extract/views.py) and `view_seed` make a store with views (format 2): its VIEW_SPLITS get
    the views arrays, as many views per image as the entries' counts add up to.
    """
    path = Path(path)
    if patch_dtype not in PATCH_DTYPES:
        raise TwinTurboError(f"--dtype {patch_dtype}: expected one of {', '.join(PATCH_DTYPES)}")
    full_attrs = dict(attrs)
    num_views = sum(int(entry["count"]) for entry in full_attrs.get("views") or ())
    if not num_views:
        full_attrs.pop("views", None), full_attrs.pop("view_seed", None)
    full_attrs.update(
        format_version=VIEWS_FORMAT_VERSION if num_views else FORMAT_VERSION, patch_dtype=patch_dtype,
        chunk_size=int(chunk_size), layouts={name: layout.to_dict() for name, layout in layouts.items()},
        splits=list(layouts),
    )
    if path.exists() and (overwrite or _was_killed_while_created(path)):
        _remove(path)
    if path.exists():
        try:
            existing = open_store(path, writable=True)
        except TwinTurboError as err:
            raise TwinTurboError(f"{err} (or pass --overwrite to replace it)") from None
        mismatch = identity_mismatch(existing.attrs, full_attrs)
        if mismatch and existing.chunks_done() == 0:  # nothing computed yet, nothing lost: start it afresh
            existing.close()
            _remove(path)
        elif mismatch:
            existing.close()
            raise TwinTurboError(
                f"{path} holds a different extraction ({mismatch}); pass --overwrite to replace it or choose another --out"
            )
        else:
            return existing

    path.parent.mkdir(parents=True, exist_ok=True)
    backend = _open_backend(path, "w")
    backend.set_attrs({"twinturbo_creating": True})
    for split, layout in layouts.items():
        arrays = {
            "cls": ((layout.n, layout.cls_dim), (chunk_size, layout.cls_dim), "float16"),
            "patches": ((layout.n, layout.num_patches, layout.patch_dim),
                        (chunk_size, layout.num_patches, layout.patch_dim), patch_dtype),
            "labels": ((layout.n,), (chunk_size,), "int64"),
            "done": ((num_chunks(layout.n, chunk_size),), (1,), "bool"),
        }
        if patch_dtype == "int8":
            arrays["patch_scales"] = ((layout.n, layout.num_patches), (chunk_size, layout.num_patches), "float16")
        views = num_views if split in VIEW_SPLITS else 0
        if views:
            arrays["views_cls"] = ((layout.n, views, layout.cls_dim), (chunk_size, views, layout.cls_dim), "float16")
            arrays["views_patches"] = ((layout.n, views, layout.num_patches, layout.patch_dim),
                                       (chunk_size, views, layout.num_patches, layout.patch_dim), patch_dtype)
            if patch_dtype == "int8":
                arrays["views_patch_scales"] = ((layout.n, views, layout.num_patches),
                                                (chunk_size, views, layout.num_patches), "float16")
        summed = checksummed_arrays(patch_dtype, views > 0)
        arrays["checksums"] = ((num_chunks(layout.n, chunk_size), len(summed)), (1, len(summed)), "uint64")
        backend.create_split(split, {"n": layout.n, "chunk_size": int(chunk_size), "split": split,
                                     "checksum": CHECKSUM_ALGORITHM, "checksum_arrays": list(summed)}, arrays)
    backend.set_attrs({**full_attrs, "twinturbo_creating": False})
    backend.flush()
    return FeatureStore(path, backend, writable=True)
