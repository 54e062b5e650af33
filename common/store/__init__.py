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
with plain zarr/h5py; this package only adds resume bookkeeping, identity checks and int8 dequantisation.

The modules: `format` (versions, identity, checksums, int8), `backends` (zarr and HDF5), `reader` (one split),
`feature_store` (an opened store, `open_store`, chunk writes), `create` (`create_store`).
"""
from .create import create_store
from .feature_store import FeatureStore, open_store
from .format import (CHECKSUM_ALGORITHM, FORMAT_VERSION, FORMATS, HDF5_CLOSE_RESERVE, HDF5_SUFFIXES, IDENTITY_KEYS,
                     PATCH_DTYPES, READABLE_VERSIONS, REQUIRED_ATTRS, VIEW_SPLITS, VIEWS_FORMAT_VERSION,
                     DamagedChunk, SplitLayout, UnreadableChunk, checksummed_arrays, chunk_digest, detect_format,
                     identity_mismatch, num_chunks, quantise_int8, resolve_store_path, view_fields)
from .reader import SplitReader

__all__ = ["CHECKSUM_ALGORITHM", "FORMAT_VERSION", "FORMATS", "HDF5_CLOSE_RESERVE", "HDF5_SUFFIXES", "IDENTITY_KEYS",
           "PATCH_DTYPES", "READABLE_VERSIONS", "REQUIRED_ATTRS", "VIEW_SPLITS", "VIEWS_FORMAT_VERSION",
           "DamagedChunk", "FeatureStore", "SplitLayout", "SplitReader", "UnreadableChunk", "checksummed_arrays",
           "chunk_digest", "create_store", "detect_format", "identity_mismatch", "num_chunks", "open_store",
           "quantise_int8", "resolve_store_path", "view_fields"]
