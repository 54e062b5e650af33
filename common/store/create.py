"""Creating a feature store, or reopening a matching one to resume it: metadata first, the done flags last, so a
store killed at any point is recognisably incomplete."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import TwinTurboError
from .backends import open_backend
from .feature_store import FeatureStore, open_store
from .format import (CHECKSUM_ALGORITHM, FORMAT_VERSION, PATCH_DTYPES, VIEW_SPLITS, VIEWS_FORMAT_VERSION,
                     SplitLayout, checksummed_arrays, identity_mismatch, num_chunks)

def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _was_killed_while_created(path: Path) -> bool:
    """A store whose creation never finished holds no chunk yet: it is safe to start it again."""
    try:
        attrs = open_backend(path, "r").attrs()
    except TwinTurboError:
        return False
    return bool(attrs.get("twinturbo_creating")) and "format_version" not in attrs



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
    backend = open_backend(path, "w")
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
