"""`tt-extract --verify`: is a feature store complete and sane, and what is in it.

Checks, per split: every chunk's `done` flag, the arrays' shapes and dtypes against the store's own attributes
(read with plain zarr/h5py, so the on-disk layout itself is checked, not twinturbo's view of it), labels within
[-1, number of classes), then every chunk of every array read once: its checksum (stores written since checksums
were recorded: common/store/), no NaN/Inf in `cls`, `patches` or int8 scales, and how many of their vectors are
constant (common/liveness.py: counted afresh here, else as the store records them). A structural failure or a NaN is
raised as one `TwinTurboError` line; damaged chunks are all listed in the `StoreSummary`, one line each, and
`repair_store` marks them for re-extraction.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.liveness import ARRAYS as LIVENESS_ARRAYS, Liveness, recorded
from twinturbo.common.store import (REQUIRED_ATTRS, DamagedChunk, detect_format, num_chunks, open_store,
                                    resolve_store_path)


@dataclass
class SplitSummary:
    name: str
    n: int
    cls_shape: tuple[int, ...]
    patches_shape: tuple[int, ...]
    patch_dtype: str
    nbytes: int  # on disk
    class_counts: dict[str, int]
    views: dict[str, int] = field(default_factory=dict)  # augmented views per image, by policy name
    liveness: Liveness | None = None  # constant vectors per array (None: neither counted nor recorded)


@dataclass
class StoreSummary:
    path: Path
    attrs: dict
    splits: list[SplitSummary]
    damaged: list[DamagedChunk] = field(default_factory=list)  # chunks that fail their checksum or cannot be read
    checksums: bool | None = None  # whether every chunk carries a checksum (None: not checked)

    def lines(self) -> list[str]:
        a = self.attrs
        state = "DAMAGED" if self.damaged else "OK"
        out = [f"{self.path}: {state}  dataset={a['dataset']} backbone={a['backbone']} weights={a['weights_id']} "
               f"resolution={a['resolution']} chunk={a['chunk_size']}"]
        if self.checksums is False:
            out.append("  no checksums: this store was written before tt-extract recorded them, so a damaged chunk "
                       "of finite values cannot be told apart (re-extract it to have them)")
        for s in self.splits:
            counts = " ".join(f"{name}:{count}" for name, count in s.class_counts.items())
            out.append(f"  {s.name}: N={s.n} cls={s.cls_shape} float16 patches={s.patches_shape} {s.patch_dtype} "
                       f"{s.nbytes / 1e6:.2f} MB  classes {counts}")
            if s.views:
                out.append("    views per image: " + ", ".join(f"{kind} {count}" for kind, count in s.views.items()))
            if s.liveness is not None:
                out.append(s.liveness.line())
        return out

    def warnings(self) -> list[str]:
        """One `warning:` line per split and array with too many constant vectors (common/liveness.py)."""
        return [line for s in self.splits if s.liveness is not None
                for line in s.liveness.warnings(str(self.attrs["backbone"]), int(self.attrs["resolution"]))]


def _plain_arrays(path: Path, split: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and dtype of each array of one split, read with plain zarr / h5py."""
    if detect_format(path) == "hdf5":
        import h5py

        with h5py.File(path, "r") as f:
            return {name: (tuple(d.shape), d.dtype.name) for name, d in f[split].items()}
    import zarr

    group = zarr.open_group(str(path), mode="r")[split]
    return {name: (tuple(a.shape), np.dtype(a.dtype).name) for name, a in group.arrays()}


def _disk_bytes(path: Path, split: str) -> int:
    if detect_format(path) == "hdf5":
        import h5py

        with h5py.File(path, "r") as f:
            return sum(d.id.get_storage_size() for d in f[split].values())
    return sum(p.stat().st_size for p in (path / split).rglob("*") if p.is_file())


def verify_store(path: str | Path, progress: bool = True, samples_per_read: int = 1024,
                 scan_values: bool = True) -> StoreSummary:
    """Check the store at `path` (see module docstring); raise a one-line TwinTurboError at the first structural
    problem. With `scan_values` every chunk is read: each one that fails its checksum or cannot be read is listed in
    the summary's `damaged`, and a NaN or Inf ends the check (tt-extract's own summary after writing skips it)."""
    resolved = resolve_store_path(path)
    with open_store(resolved) as store:
        attrs = store.attrs
        missing = [key for key in REQUIRED_ATTRS if key not in attrs]
        if missing:
            raise TwinTurboError(f"{resolved}: attribute(s) {', '.join(missing)} missing: not written by tt-extract?")
        patch_dtype = attrs["patch_dtype"]
        n_classes = len(attrs.get("class_names", []))
        summaries = []
        for name in attrs["splits"]:
            layout = attrs["layouts"][name]
            n, chunk = int(layout["n"]), int(attrs["chunk_size"])
            expected = {
                "cls": ((n, layout["cls_dim"]), "float16"),
                "patches": ((n, layout["num_patches"], layout["patch_dim"]), patch_dtype),
                "labels": ((n,), "int64"),
                "done": ((num_chunks(n, chunk),), "bool"),
            }
            if patch_dtype == "int8":
                expected["patch_scales"] = ((n, layout["num_patches"]), "float16")
            views = store.split(name).num_views
            if views:
                expected["views_cls"] = ((n, views, layout["cls_dim"]), "float16")
                expected["views_patches"] = ((n, views, layout["num_patches"], layout["patch_dim"]), patch_dtype)
                if patch_dtype == "int8":
                    expected["views_patch_scales"] = ((n, views, layout["num_patches"]), "float16")
            try:
                found = _plain_arrays(resolved, name)
            except KeyError:
                raise TwinTurboError(f"{resolved}: split '{name}' is listed in the attributes but missing") from None
            for array, (shape, dtype) in expected.items():
                if array not in found:
                    raise TwinTurboError(f"{resolved}: {name}/{array} is missing")
                if found[array] != (tuple(shape), dtype):
                    raise TwinTurboError(f"{resolved}: {name}/{array} is {found[array][1]} {found[array][0]}, "
                                         f"expected {dtype} {tuple(shape)}")
            reader = store.split(name)
            if reader.has_checksums:
                expected["checksums"] = ((num_chunks(n, chunk), len(reader.checksum_arrays)), "uint64")
                array_found = found.get("checksums")
                if array_found != (tuple(expected["checksums"][0]), "uint64"):
                    raise TwinTurboError(f"{resolved}: {name}/checksums is {array_found}, expected uint64 "
                                         f"{expected['checksums'][0]}")
            done = reader.done_mask()
            if not done.all():
                first = int(np.flatnonzero(~done)[0])
                raise TwinTurboError(
                    f"{resolved}: split '{name}' is incomplete ({int(done.sum())}/{len(done)} chunks done, first "
                    f"missing chunk {first}); rerun the same tt-extract command to finish it")
            labels, readable = _labels_of_intact_chunks(reader)
            bad = readable & ((labels < -1) | (labels >= n_classes))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise TwinTurboError(f"{resolved}: {name}/labels[{i}] = {labels[i]}, expected -1..{n_classes - 1}")
            names = attrs.get("class_names") or []
            counts = Counter(labels[readable].tolist())
            class_counts = {(names[c] if 0 <= c < len(names) else str(c)): counts[c] for c in sorted(counts)}
            summaries.append(SplitSummary(name, n, expected["cls"][0], expected["patches"][0], patch_dtype,
                                          _disk_bytes(resolved, name), class_counts,
                                          {kind: count for kind, (_, count) in reader.view_kinds.items()}))
        # The value scan reads every token: only once every split passed the cheap checks above.
        damaged: list[DamagedChunk] = []
        counted = {entry.split: entry for entry in recorded(attrs)}
        for summary in summaries:
            summary.liveness = counted.get(summary.name)
            if scan_values:
                summary.liveness = Liveness(summary.name)
                damaged += _scan_chunks(resolved, store.split(summary.name), progress, summary.liveness)
        checksums = all(store.split(s.name).has_checksums for s in summaries) if scan_values else None
    return StoreSummary(resolved, attrs, summaries, damaged, checksums)


def _labels_of_intact_chunks(reader) -> tuple[np.ndarray, np.ndarray]:
    """(labels, readable): the split's labels and which of them lie in a chunk that passes its checksum. A damaged
    labels chunk is then named by the chunk scan like any other (and repaired), not taken for labels out of range."""
    labels = np.zeros(reader.n, dtype=np.int64)
    readable = np.ones(reader.n, dtype=bool)
    for start, stop in reader.iter_chunks():
        try:
            labels[start:stop] = reader.read_checked("labels", start, stop)
        except DamagedChunk:
            readable[start:stop] = False
    return labels, readable


def _scan_chunks(path: Path, reader, progress: bool, liveness: Liveness) -> list[DamagedChunk]:
    """Read every chunk of every array once: each chunk that fails its checksum or cannot be read is returned; the
    first sample whose cls or patches (int8: their scales) hold NaN or Inf raises; the constant vectors of the token
    arrays of the chunks that could be read are counted into `liveness`."""
    from tqdm.auto import tqdm

    name, damaged = reader.name, []
    arrays = ("cls", "patches") + (("patch_scales",) if reader.patch_dtype == "int8" else ())
    if reader.num_views:
        arrays += ("views_cls", "views_patches") + (("views_patch_scales",) if reader.patch_dtype == "int8" else ())
    with tqdm(total=reader.n, unit="sample", desc=f"verify {name}", disable=not progress, leave=False) as bar:
        for start, stop in reader.iter_chunks():
            for array in dict.fromkeys(arrays + reader.checksum_arrays):
                try:
                    values = reader.read_checked(array, start, stop)
                except DamagedChunk as err:
                    damaged.append(err)
                    continue
                if array != "labels" and values.dtype != np.int8:
                    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
                    if not finite.all():
                        i = start + int(np.flatnonzero(~finite)[0])
                        raise TwinTurboError(f"{path}: {name}/{array} of sample {i} holds NaN or Inf")
                if array in LIVENESS_ARRAYS:
                    liveness.add(array, values)
            bar.update(stop - start)
    return damaged


def repair_store(path: str | Path, damaged: list[DamagedChunk]) -> int:
    """Mark every damaged chunk not done (`tt-extract --verify --repair`): rerunning the store's tt-extract command
    then recomputes exactly those chunks. Returns how many chunks were marked."""
    chunks = sorted({(d.split, d.chunk) for d in damaged})
    with open_store(resolve_store_path(path), writable=True) as store:
        for split in sorted({s for s, _ in chunks}):
            store.mark_not_done(split, [k for s, k in chunks if s == split])
    return len(chunks)
