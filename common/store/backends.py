"""The two backends of the feature store, zarr v3 (a directory) and HDF5 (one file): the minimum each format must
do. Both read and write plain numpy arrays by name under a split group; plain (uncompressed) chunks are read straight
from the files (common/raw_chunks.py).
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import TwinTurboError
from ..raw_chunks import RawLayout, Segments, chunk_spans, hdf5_raw_layout, map_rows, read_rows, zarr_raw_layout
from .format import HDF5_CLOSE_RESERVE, UnreadableChunk, detect_format

class ZarrBackend:
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


class Hdf5Backend:
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


def open_backend(path: Path, mode: str):
    return (Hdf5Backend if detect_format(path) == "hdf5" else ZarrBackend)(path, mode)
