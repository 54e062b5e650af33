"""`tt-extract --verify`: is a feature store complete and sane, and what is in it.

Checks, per split: every chunk's `done` flag, the arrays' shapes and dtypes against the store's own attributes
(read with plain zarr/h5py, so the on-disk layout itself is checked, not twinturbo's view of it), labels within
[-1, number of classes), and no NaN/Inf in `cls` or the (dequantised) `patches`. The first failure is raised as one
`TwinTurboError` line; a passing store yields a `StoreSummary`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import REQUIRED_ATTRS, detect_format, num_chunks, open_store, resolve_store_path


@dataclass
class SplitSummary:
    name: str
    n: int
    cls_shape: tuple[int, ...]
    patches_shape: tuple[int, ...]
    patch_dtype: str
    nbytes: int  # on disk
    class_counts: dict[str, int]


@dataclass
class StoreSummary:
    path: Path
    attrs: dict
    splits: list[SplitSummary]

    def lines(self) -> list[str]:
        a = self.attrs
        out = [f"{self.path}: OK  dataset={a['dataset']} backbone={a['backbone']} weights={a['weights_id']} "
               f"resolution={a['resolution']} chunk={a['chunk_size']}"]
        for s in self.splits:
            counts = " ".join(f"{name}:{count}" for name, count in s.class_counts.items())
            out.append(f"  {s.name}: N={s.n} cls={s.cls_shape} float16 patches={s.patches_shape} {s.patch_dtype} "
                       f"{s.nbytes / 1e6:.2f} MB  classes {counts}")
        return out


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
    """Check the store at `path` (see module docstring); raise a one-line TwinTurboError at the first problem.

    `scan_values=False` skips the NaN/Inf scan, the only check that reads every token (tt-extract's own summary).
    """
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
            done = reader.done_mask()
            if not done.all():
                first = int(np.flatnonzero(~done)[0])
                raise TwinTurboError(
                    f"{resolved}: split '{name}' is incomplete ({int(done.sum())}/{len(done)} chunks done, first "
                    f"missing chunk {first}); rerun the same tt-extract command to finish it")
            labels = reader.labels()
            bad = (labels < -1) | (labels >= n_classes)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise TwinTurboError(f"{resolved}: {name}/labels[{i}] = {labels[i]}, expected -1..{n_classes - 1}")
            names = attrs.get("class_names") or []
            counts = Counter(labels.tolist())
            class_counts = {(names[c] if 0 <= c < len(names) else str(c)): counts[c] for c in sorted(counts)}
            summaries.append(SplitSummary(name, n, expected["cls"][0], expected["patches"][0], patch_dtype,
                                          _disk_bytes(resolved, name), class_counts))
        # The value scan reads every token: only once every split passed the cheap checks above.
        for summary in summaries if scan_values else ():
            _scan_values(resolved, store.split(summary.name), progress, samples_per_read)
    return StoreSummary(resolved, attrs, summaries)


def _scan_values(path: Path, reader, progress: bool, samples_per_read: int) -> None:
    """Raise at the first sample whose cls or (dequantised) patches hold NaN or Inf."""
    from tqdm.auto import tqdm

    name = reader.name
    with tqdm(total=reader.n, unit="sample", desc=f"verify {name}", disable=not progress, leave=False) as bar:
        for start, stop in reader.iter_chunks(max(1, samples_per_read // reader.chunk_size)):
            cls, patches = reader.read(start, stop)
            for array, values in (("cls", cls), ("patches", patches)):
                finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
                if not finite.all():
                    i = start + int(np.flatnonzero(~finite)[0])
                    raise TwinTurboError(f"{path}: {name}/{array} of sample {i} holds NaN or Inf")
            bar.update(stop - start)
