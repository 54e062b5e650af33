"""The disk an extraction writes to: whether its store fits before anything is written, and a full disk met while
writing (how far the store got; HDF5's ids released while the interpreter is whole)."""
from __future__ import annotations

import shutil
from pathlib import Path

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.sizes import format_size
from twinturbo.common.store import HDF5_CLOSE_RESERVE, VIEW_SPLITS, FeatureStore, SplitLayout, detect_format, \
    num_chunks, open_store

def close_after_full_disk(store: FeatureStore) -> None:
    """Close a store whose last write met a full disk. HDF5 may not manage to flush its metadata then; h5py's object
    ids must still be released now, while the interpreter is whole: left to its shutdown, their deallocation met
    the same error and crashed the process (exit 139)."""
    try:
        store.close()
    except Exception:  # the file's tail is lost with the disk space; every chunk marked done is intact
        pass
    if store.format == "hdf5":
        import h5py

        try:
            h5py._objects.nonlocal_close()
        except Exception:
            pass


def progress_of(path: Path, split: str) -> str:
    """' (k of N chunks done)' for a split of the store at `path`, or '' when the store cannot be read now."""
    try:
        with open_store(path) as store:
            done = store.done_mask(split)
        return f" ({int(done.sum())} of {len(done)} chunks done)"
    except Exception:
        return ""


def store_nbytes(layouts: dict[str, SplitLayout], chunk_size: int, patch_dtype: str, num_views: int = 0) -> int:
    """About how many bytes a store's arrays take on disk, with one filesystem block of slack per chunk file; with
    `num_views`, the views of VIEW_SPLITS too."""
    need = 0
    int8 = patch_dtype == "int8"
    for name, layout in layouts.items():
        views = num_views if name in VIEW_SPLITS else 0
        patch_bytes = layout.num_patches * (layout.patch_dim * (1 if int8 else 2) + (2 if int8 else 0))
        files = num_chunks(layout.n, chunk_size) * ((5 if int8 else 4) + ((3 if int8 else 2) if views else 0))
        need += layout.n * ((1 + views) * (2 * layout.cls_dim + patch_bytes) + 8) + files * 4096
    return need


def check_free_space(path: Path, layouts: dict[str, SplitLayout], chunk_size: int, patch_dtype: str,
                     num_views: int = 0) -> None:
    """Refuse, before writing, an extraction whose store would not fit on its filesystem: the bytes its arrays need
    (store_nbytes), for HDF5 plus the room it keeps free to close the file (HDF5_CLOSE_RESERVE, which its writer
    enforces), less what an existing store already holds."""
    need = store_nbytes(layouts, chunk_size, patch_dtype, num_views)
    reserve = HDF5_CLOSE_RESERVE if detect_format(path) == "hdf5" else 0
    held = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else \
        (path.stat().st_size if path.exists() else 0)
    parent = next(p for p in (path, *path.parents) if p.exists())
    free = shutil.disk_usage(parent).free
    if need + reserve - held > free:
        kept = f", of which {format_size(reserve)} HDF5 keeps free to close the file" if reserve else ""
        raise TwinTurboError(f"--out {path.parent}: the store needs about {format_size(need + reserve - held)} more"
                             f"{kept}, and the filesystem has {format_size(free)} free; free some space or choose "
                             "another --out")
