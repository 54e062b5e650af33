"""Reading one split of a feature store: contiguous sample ranges, every whole chunk checked against its checksum,
int8 patch tokens dequantised (or kept as stored, for a trainer that holds half the memory)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..raw_chunks import check_out, check_range, dequantise_into
from .format import VIEW_SPLITS, DamagedChunk, UnreadableChunk, chunk_digest, num_chunks

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
