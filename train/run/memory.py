"""The one memory policy of a run: its splits are held in memory when train + test fit the memory limit, else the
train split is streamed (train/run/stream.py) and the test split held if what is left holds it, else read in order.

The limit is `--memory-limit` when given, else MEMORY_HEADROOM of the host's free memory (`default_memory_limit`);
tt-sweep's local workers each get their share of it (train/sweep/local.py), and nothing else checks memory: the limit a
process is given is the one it obeys.
"""
from __future__ import annotations

import torch

from twinturbo.common.sizes import format_size
from twinturbo.common.store import FeatureStore
from twinturbo.train.run.data import Split, SplitTensors, load_split
from twinturbo.train.run.stream import RangeSplit, StreamedSplit

# The share of the free host memory the splits may take by default (--memory-limit); the rest is left to the model,
# optimiser states and activations.
MEMORY_HEADROOM = 0.7


def available_host_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes, or None where there is no such file."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def default_memory_limit() -> int | None:
    """What the machine has for the splits: MEMORY_HEADROOM of the free host memory (None where unknown)."""
    free_host = available_host_memory()
    return None if free_host is None else int(MEMORY_HEADROOM * free_host)


def load_splits(store: FeatureStore, device: torch.device, memory_limit: int | None = None,
                progress: bool = True, views: bool = False) -> tuple[Split, Split]:
    """(train, test) for training: both in memory (load_split) when they fit `memory_limit` bytes together (default:
    default_memory_limit()); else the train split streamed (stream.StreamedSplit: the labelled subset, a shuffle
    buffer and chunks read ahead stay under the limit) and the test split in memory if what is left holds it, else
    read in order at each evaluation. With `views` (a run's terms read augmented views) the train split's views
    are held or streamed with it."""
    limit = default_memory_limit() if memory_limit is None else memory_limit
    readers = {name: store.split(name) for name in ("train", "test")}
    needed = {name: reader.loaded_nbytes(quantised=reader.patch_dtype == "int8", views=views)
              for name, reader in readers.items()}
    if limit is None or needed["train"] + needed["test"] <= limit:
        return tuple(load_split(store, name, device, progress, views) for name in ("train", "test"))
    train = StreamedSplit(readers["train"], limit, views=views)
    streaming = train.resident_nbytes(0, 1)
    test = load_split(store, "test", device, progress) if needed["test"] + streaming <= limit else \
        RangeSplit(readers["test"])
    if progress:
        print(f"{store.path}: the splits ({format_size(needed['train'] + needed['test'])}) are over the memory limit "
              f"({format_size(limit)}): streaming the train split; test split "
              + ("in memory" if isinstance(test, SplitTensors) else "read from the store at each evaluation"))
    return train, test


