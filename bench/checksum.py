"""The price of the store's checksums: which digest to record per chunk, and what checking them costs a trainer.

1. digest throughput on one chunk of each array of a store (or random bytes of the study's chunk size), xxh3-64
   against crc32c (and zlib's crc32 for reference), best of `--repeats`;
2. loading a whole train split as tt-train does (`memory.load_splits`), with every chunk checked against its
   checksum and with the check off (`SplitReader.check_reads`), passes interleaved, best of each.

    .venv/bin/python bench/checksum.py --features features/fashion-mnist

Prints the ratios last and writes bench/checksum.json (or --json).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch


def throughput(function, data: bytes, repeats: int) -> float:
    """GB/s of `function(data)`, best of `repeats` batches of 50 calls."""
    function(data)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(50):
            function(data)
        best = min(best, (time.perf_counter() - start) / 50)
    return len(data) / best / 1e9


def main() -> None:
    import google_crc32c
    import xxhash

    from twinturbo.common.store import open_store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="a store (its train split is loaded)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved load passes of each variant")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    with open_store(args.features) as store:
        reader = store.split("train")
        cls, patches = reader.read(0, reader.chunk_size)
    chunk = np.ascontiguousarray(patches).tobytes()  # the largest array's chunk
    digests = {"xxh3_64": lambda b: xxhash.xxh3_64_intdigest(b), "crc32c": lambda b: google_crc32c.value(b),
               "zlib.crc32": lambda b: zlib.crc32(b)}
    rates = {name: throughput(f, chunk, args.repeats) for name, f in digests.items()}
    for name, rate in rates.items():
        print(f"{name}: {rate:.1f} GB/s on a {len(chunk) / 1024:.0f} KiB patches chunk")

    def load(check: bool) -> float:
        with open_store(args.features) as store:
            reader = store.split("train")
            reader.check_reads = check
            out_cls = np.empty((reader.n, reader.cls_dim), dtype=np.float16)
            out_patches = np.empty((reader.n, reader.num_patches, reader.patch_dim), dtype=np.float16)
            start = time.perf_counter()
            reader.load_all(progress=False, out_cls=out_cls, out_patches=out_patches)
            reader.labels()
            return time.perf_counter() - start

    times = {True: [], False: []}
    for _ in range(args.rounds):
        for check in (False, True):
            times[check].append(load(check))
    checked, unchecked = min(times[True]), min(times[False])
    result = {"chunk_bytes": len(chunk), "digest_gb_per_s": rates, "load_s_checked": checked,
              "load_s_unchecked": unchecked, "check_overhead": checked / unchecked - 1,
              "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"xxh3_64 / crc32c: {rates['xxh3_64'] / rates['crc32c']:.2f}x")
    print(f"loading the train split: {unchecked:.2f} s unchecked, {checked:.2f} s checked: "
          f"+{100 * (checked / unchecked - 1):.1f}%  (wrote {args.json})")


if __name__ == "__main__":
    main()
