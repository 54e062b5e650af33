"""An opened feature store: its attributes, identity and splits for reading (`open_store`), and the chunk writes of an
extraction, each chunk's data before its checksum and its done flag."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import TwinTurboError
from ..hashing import canonical_json
from .backends import open_backend
from .format import (IDENTITY_KEYS, READABLE_VERSIONS, checksummed_arrays, chunk_digest, detect_format,
                     quantise_int8, resolve_store_path, view_fields)
from .reader import SplitReader

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

    def set_attrs(self, attrs: dict) -> None:
        """Add or replace root attributes of a store opened for writing (e.g. common/liveness.py's counts)."""
        if not self.writable:
            raise ValueError(f"{self.path} is open read-only")
        self._backend.set_attrs(attrs)
        self.attrs.update(attrs)

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
    return FeatureStore(resolved, open_backend(resolved, "r+" if writable else "r"), writable)
