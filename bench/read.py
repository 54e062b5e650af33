"""Feature-store read speed in training order against a raw numpy memmap of the same bytes (the limit).

A trainer reads a split front to back in batch-sized contiguous ranges (whole chunks), or loads it whole into
memory; either way every byte is copied once out of the page cache. This script times exactly that for the zarr
and the HDF5 store (`SplitReader.read` / `read_into`) and for `np.memmap` slices of raw files holding the same
arrays, all in one process, page cache warm (every source read once before timing), best and median of
`--repeats` passes with the sources interleaved so that load from other processes hits them alike.

    python bench/read.py                       # 4096 x (196x768 + 2304) fp16 = 1.25 GB, chunks of 64, reads of 512
    python bench/read.py --n 1024 --sweep      # plus chunk sizes 32..256, library reads, zarr sharding, HDF5 layouts

The last two lines are the ratios zarr/memmap and hdf5/memmap (samples/s, batch reads, best pass); goal >= 0.8.
Results also go to bench/read.json (or --json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import zarr
from tqdm.auto import tqdm

from twinturbo.common.store import SplitLayout, create_store, open_store, quantise_int8

GOAL = 0.8


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4096, help="samples in the split (default 4096)")
    parser.add_argument("--patches", type=int, default=196, help="patch tokens per sample T (default 196)")
    parser.add_argument("--patch-dim", type=int, default=768, help="patch token width Dp (default 768)")
    parser.add_argument("--cls-dim", type=int, default=2304, help="summary token width Dc (default 2304)")
    parser.add_argument("--chunk-size", type=int, default=64, help="samples per store chunk (default 64)")
    parser.add_argument("--batch", type=int, default=512, help="samples per read, as the trainer reads (default 512)")
    parser.add_argument("--dtype", choices=["float16", "int8"], default="float16",
                        help="patch dtype of the stores; int8 is dequantised to float16 on read (default float16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per source (default 5)")
    parser.add_argument("--sweep", action="store_true",
                        help="also time chunk sizes 32/64/128/256, zarr/h5py's own reads, zarr sharding, HDF5 "
                             "contiguous layout (float16, --sweep-n samples)")
    parser.add_argument("--sweep-n", type=int, default=1024, help="samples per sweep store (default 1024)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the data (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory afterwards")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"),
                        help="where to write the results (default bench/read.json)")
    args = parser.parse_args()
    if args.n < 1 or args.chunk_size < 1 or args.batch < 1 or args.repeats < 1:
        parser.error("--n, --chunk-size, --batch and --repeats must be positive")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Data: random fp16 tokens in raw .npy files (the memmap baseline), then the same samples in the stores.
# ---------------------------------------------------------------------------------------------------------------------

def make_raw(workdir: Path, layout: SplitLayout, patch_dtype: str, seed: int = 0) -> dict[str, np.memmap]:
    """Raw arrays holding exactly the bytes the store holds: cls, patches (+ patch_scales for int8), labels."""
    rng = np.random.default_rng(seed)
    n, t, dp = layout.n, layout.num_patches, layout.patch_dim
    open_mm = np.lib.format.open_memmap
    raw = {
        "cls": open_mm(workdir / "cls.npy", "w+", np.float16, (n, layout.cls_dim)),
        "patches_f16": open_mm(workdir / "patches_f16.npy", "w+", np.float16, (n, t, dp)),
        "labels": open_mm(workdir / "labels.npy", "w+", np.int64, (n,)),
    }
    if patch_dtype == "int8":
        raw["patches"] = open_mm(workdir / "patches_q.npy", "w+", np.int8, (n, t, dp))
        raw["patch_scales"] = open_mm(workdir / "patch_scales.npy", "w+", np.float16, (n, t))
    step = 256
    for start in tqdm(range(0, n, step), desc="random tokens", unit="block", leave=False):
        stop = min(n, start + step)
        raw["cls"][start:stop] = rng.standard_normal((stop - start, layout.cls_dim), dtype=np.float32)
        raw["patches_f16"][start:stop] = rng.standard_normal((stop - start, t, dp), dtype=np.float32)
        raw["labels"][start:stop] = rng.integers(0, 10, stop - start)
        if patch_dtype == "int8":
            raw["patches"][start:stop], raw["patch_scales"][start:stop] = quantise_int8(raw["patches_f16"][start:stop])
    if patch_dtype == "float16":
        raw["patches"] = raw["patches_f16"]
    for array in raw.values():
        array.flush()
    return raw


def make_store(path: Path, raw: dict[str, np.ndarray], layout: SplitLayout, chunk_size: int, patch_dtype: str):
    """A twinturbo store of the raw samples, written chunk by chunk as tt-extract writes it."""
    with create_store(path, {"dataset": "bench"}, {"train": layout}, chunk_size, patch_dtype, overwrite=True) as store:
        for k, start in enumerate(tqdm(range(0, layout.n, chunk_size), desc=f"write {path.name}", leave=False)):
            rows = slice(start, min(layout.n, start + chunk_size))
            store.write_chunk("train", k, raw["cls"][rows], raw["patches_f16"][rows], raw["labels"][rows])
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Readers: each reads the whole split front to back, `batch` samples a read.
# ---------------------------------------------------------------------------------------------------------------------

def memmap_pass(arrays: list[np.ndarray], n: int, batch: int, outs: list[np.ndarray] | None) -> Callable[[], None]:
    """The limit: slices of memmaps copied into fresh arrays (batch) or into reused buffers (into).

    Fresh arrays are allocated as the store reader allocates them (np.empty, then one copy), so that the ratio
    compares where the bytes come from, not how new memory is faulted in."""
    def run() -> None:
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            if outs is None:
                for array in arrays:
                    np.copyto(np.empty((stop - start,) + array.shape[1:], array.dtype), array[start:stop])
            else:
                for array, out in zip(arrays, outs):
                    np.copyto(out[:stop - start], array[start:stop])
    return run


def store_pass(split, batch: int, outs: tuple[np.ndarray, np.ndarray] | None) -> Callable[[], None]:
    def run() -> None:
        for start in range(0, split.n, batch):
            stop = min(split.n, start + batch)
            if outs is None:
                split.read(start, stop)
            else:
                split.read_into(outs[0][:stop - start], outs[1][:stop - start], start, stop)
    return run


def library_pass(arrays: list, n: int, batch: int) -> Callable[[], None]:
    """Plain zarr `arr[a:b]` / h5py `ds[a:b]`, what a reader without the fast path gets."""
    def run() -> None:
        for start in range(0, n, batch):
            for array in arrays:
                array[start:min(n, start + batch)]
    return run


def measure(passes: dict[str, Callable[[], None]], n: int, nbytes: int, repeats: int, label: str) -> dict:
    """Warm every source with one pass, then time `repeats` interleaved passes of each; samples/s best and median."""
    for run in tqdm(passes.values(), desc=f"{label}: warm-up", leave=False):
        run()
    times: dict[str, list[float]] = {name: [] for name in passes}
    names = list(passes)
    for r in tqdm(range(repeats), desc=f"{label}: timing", leave=False):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate so no source always goes first
            t0 = time.perf_counter()
            passes[name]()
            times[name].append(time.perf_counter() - t0)
    return {
        name: {
            "samples_per_s_best": n / min(ts), "samples_per_s_median": n / statistics.median(ts),
            "gb_per_s_best": nbytes / min(ts) / 1e9, "seconds": ts,
        }
        for name, ts in times.items()
    }


def ratio(results: dict, name: str, baseline: str, stat: str = "best") -> float:
    return results[name][f"samples_per_s_{stat}"] / results[baseline][f"samples_per_s_{stat}"]


# ---------------------------------------------------------------------------------------------------------------------
# Main comparison and the chunking sweep
# ---------------------------------------------------------------------------------------------------------------------

def main_comparison(args, workdir: Path) -> dict:
    layout = SplitLayout(args.n, args.cls_dim, args.patches, args.patch_dim)
    raw = make_raw(workdir, layout, args.dtype)
    stores = {fmt: make_store(workdir / name, raw, layout, args.chunk_size, args.dtype)
              for fmt, name in (("zarr", "store"), ("hdf5", "store.h5"))}
    names = ["cls", "patches"] + (["patch_scales"] if args.dtype == "int8" else [])
    baseline = [np.load(workdir / Path(raw[name].filename).name, mmap_mode="r") for name in names]
    nbytes = sum(array.nbytes for array in baseline)
    batch = min(args.batch, args.n)
    baseline_outs = [np.empty((batch,) + array.shape[1:], array.dtype) for array in baseline]
    store_outs = (np.empty((batch, args.cls_dim), np.float16),
                  np.empty((batch, args.patches, args.patch_dim), np.float16))
    opened = {fmt: open_store(path) for fmt, path in stores.items()}
    passes = {"memmap": memmap_pass(baseline, args.n, batch, None),
              "memmap into": memmap_pass(baseline, args.n, batch, baseline_outs)}
    for fmt, store in opened.items():
        split = store.split("train")
        passes[fmt] = store_pass(split, batch, None)
        passes[f"{fmt} into"] = store_pass(split, batch, store_outs)
    results = measure(passes, args.n, nbytes, args.repeats, "main")
    for store in opened.values():
        store.close()
    for name, value in results.items():
        print(f"{name:<14} {value['samples_per_s_best']:>9.0f} samples/s  {value['gb_per_s_best']:5.2f} GB/s  "
              f"(median {value['samples_per_s_median']:.0f})")
    return results


def sweep(args, workdir: Path) -> list[dict]:
    """Chunk size x (twinturbo fast path, zarr/h5py's own reads, zarr sharded, HDF5 contiguous), fp16."""
    n = min(args.sweep_n, args.n)
    layout = SplitLayout(n, args.cls_dim, args.patches, args.patch_dim)
    sweep_dir = workdir / "sweep"
    sweep_dir.mkdir(exist_ok=True)
    raw = make_raw(sweep_dir, layout, "float16", seed=1)
    baseline = [np.load(sweep_dir / "cls.npy", mmap_mode="r"), np.load(sweep_dir / "patches_f16.npy", mmap_mode="r")]
    nbytes = sum(array.nbytes for array in baseline)
    batch = min(args.batch, n)
    rows = []
    for chunk in (32, 64, 128, 256):
        stores = {fmt: make_store(sweep_dir / name, raw, layout, chunk, "float16")
                  for fmt, name in (("zarr", "store"), ("hdf5", "store.h5"))}
        sharded = zarr.open_group(str(sweep_dir / "sharded"), mode="w")
        for name, array in (("cls", raw["cls"]), ("patches", raw["patches_f16"])):
            shard_rows = max(chunk, batch - batch % chunk)  # one shard per batch read
            target = sharded.create_array(name, shape=array.shape, dtype=array.dtype, compressors=None,
                                          chunks=(chunk,) + array.shape[1:], shards=(shard_rows,) + array.shape[1:])
            target[:] = array
        contiguous = h5py.File(sweep_dir / "contiguous.h5", "w")
        for name, array in (("cls", raw["cls"]), ("patches", raw["patches_f16"])):
            contiguous.create_dataset(name, data=array)
        opened = {fmt: open_store(path) for fmt, path in stores.items()}
        zarr_group = zarr.open_group(str(stores["zarr"]), mode="r")["train"]
        h5_file = h5py.File(stores["hdf5"], "r")
        passes = {
            "memmap": memmap_pass(baseline, n, batch, None),
            "zarr fast path": store_pass(opened["zarr"].split("train"), batch, None),
            "hdf5 fast path": store_pass(opened["hdf5"].split("train"), batch, None),
            "zarr arr[a:b]": library_pass([zarr_group["cls"], zarr_group["patches"]], n, batch),
            "zarr sharded arr[a:b]": library_pass([sharded["cls"], sharded["patches"]], n, batch),
            "h5py ds[a:b]": library_pass([h5_file["train"]["cls"], h5_file["train"]["patches"]], n, batch),
            "h5py contiguous ds[a:b]": library_pass([contiguous["cls"], contiguous["patches"]], n, batch),
        }
        results = measure(passes, n, nbytes, args.repeats, f"chunk {chunk}")
        row = {"chunk_size": chunk, "results": results,
               "ratios": {name: ratio(results, name, "memmap") for name in passes if name != "memmap"}}
        rows.append(row)
        print(f"chunk {chunk:>3}: " + "  ".join(f"{name} {value:.2f}" for name, value in row["ratios"].items()))
        h5_file.close()
        contiguous.close()
        for store in opened.values():
            store.close()
        for path in list(stores.values()) + [sweep_dir / "sharded", sweep_dir / "contiguous.h5"]:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return rows


def main() -> None:
    args = parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="tt-bench-read-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = main_comparison(args, workdir)
        sweep_rows = sweep(args, workdir) if args.sweep else []
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    ratios = {
        "zarr/memmap": ratio(results, "zarr", "memmap"),
        "hdf5/memmap": ratio(results, "hdf5", "memmap"),
        "zarr into/memmap into": ratio(results, "zarr into", "memmap into"),
        "hdf5 into/memmap into": ratio(results, "hdf5 into", "memmap into"),
        "zarr/memmap (median)": ratio(results, "zarr", "memmap", "median"),
        "hdf5/memmap (median)": ratio(results, "hdf5", "memmap", "median"),
    }
    report = {
        "config": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "zarr": zarr.__version__, "h5py": h5py.__version__},
        "goal": GOAL, "results": results, "ratios": ratios, "sweep": sweep_rows,
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"into preallocated buffers: zarr {ratios['zarr into/memmap into']:.2f}x, "
          f"hdf5 {ratios['hdf5 into/memmap into']:.2f}x of memmap; results in {args.json}")
    print(f"zarr/memmap {ratios['zarr/memmap']:.2f} (goal >= {GOAL})")
    print(f"hdf5/memmap {ratios['hdf5/memmap']:.2f} (goal >= {GOAL})")


if __name__ == "__main__":
    main()
