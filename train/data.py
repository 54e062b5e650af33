"""The splits a run trains and evaluates on, held in memory when they fit the memory limit, else streamed.

In memory (`SplitTensors`): the whole split in host memory (and on the GPU when it fits there) as the store holds it,
float16 or int8 with a scale per token (dequantised per batch, on the device), so every training batch is an in-memory
gather: the store is read once per run in whole-chunk ranges, never with scattered indices (DESIGN.md: scattered reads
of a chunked store are orders of magnitude slower). Beyond the limit (`load_splits`), the train split is streamed in
shuffled whole-chunk order through a shuffle buffer and the test split is read in order (train/stream.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import FeatureStore
from twinturbo.train.config import MEMORY_HEADROOM
from twinturbo.train.sampling import EpochPlan, epoch_plan

READ_SAMPLES = 512  # samples per read: big enough to amortise per-call overhead, small enough for a smooth bar


class Split:
    """What the training loop reads of a split: `len`, `labels` [N], the widths `cls_dim`, `num_patches`,
    `patch_dim`, and `batch(index, device)`; these defaults are the in-memory behaviour, which streamed splits
    (train/stream.py) replace."""

    cls_dim: int
    num_patches: int
    patch_dim: int
    labels: torch.Tensor

    def epoch_plan(self, subset: torch.Tensor, batch_size: int, generator: torch.Generator,
                   read_unlabelled: bool = True) -> EpochPlan:
        """One epoch's batches: a permutation of the whole split, paired with the labelled repetitions."""
        return epoch_plan(len(self), subset, batch_size, generator)

    def consumed(self, unlabelled_index: torch.Tensor | None) -> None:
        """A step's unlabelled batch is no longer needed (a streamed split refills its buffer)."""

    def unlabelled_pass(self, batch_size: int) -> dict:
        """How the unlabelled batches were drawn, recorded with a run's metrics (it decides their order)."""
        return {"streamed": False}

    def close(self) -> None:
        """Stop any reading still under way."""

    def subset(self, index: torch.Tensor) -> "SplitTensors":
        """Samples `index` in memory as their own split, in that order (a run's validation split)."""
        raise NotImplementedError




@dataclass
class SplitTensors(Split):
    """One split in memory: cls [N, Dc] float16, patches [N, T, Dp] float16 (or int8 with `patch_scales` [N, T]
    float16, as an int8 store holds them: half the memory), labels [N] int64 (-1 = none)."""

    cls: torch.Tensor
    patches: torch.Tensor
    labels: torch.Tensor
    patch_scales: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.cls_dim, (self.num_patches, self.patch_dim) = self.cls.shape[1], self.patches.shape[1:]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.cls.device

    def subset(self, index: torch.Tensor) -> "SplitTensors":
        index = index.to(self.device)
        scales = None if self.patch_scales is None else self.patch_scales[index]
        return SplitTensors(self.cls[index], self.patches[index], self.labels[index], scales)

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cls, patches, labels) of the samples `index`, as float32 on `device` (bf16 autocast does the rest).

        int8 patches are dequantised here, on `device`, and rounded to float16 first, exactly as the store's own
        float16 reader does: a run on an int8 store is the same whether the split is held as int8 or as float16.
        """
        index = index.to(self.device)
        cls, patches, labels = self.cls[index], self.patches[index], self.labels[index]
        non_blocking = cls.device.type == "cpu" and device.type == "cuda"
        cls, patches = cls.to(device, non_blocking=non_blocking), patches.to(device, non_blocking=non_blocking)
        if self.patch_scales is not None:
            scales = self.patch_scales[index].to(device, non_blocking=non_blocking)
            patches = (patches.float() * scales.float()[..., None]).half()
        return cls.float(), patches.float(), labels.to(device, non_blocking=non_blocking)


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


def load_split(store: FeatureStore, split: str, device: torch.device, progress: bool = True) -> SplitTensors:
    """Read a whole split into memory, int8 patch tokens kept int8: on `device` when it is a GPU with room for it,
    else in host memory (pinned when training on a GPU). A split larger than the free host memory is refused."""
    reader = store.split(split)
    quantised = reader.patch_dtype == "int8"
    nbytes = reader.loaded_nbytes(quantised=quantised)
    free_host = available_host_memory()
    if free_host is not None and nbytes > MEMORY_HEADROOM * free_host:
        raise TwinTurboError(
            f"{store.path}: split '{split}' needs {nbytes / 2**30:.1f} GiB in memory but only "
            f"{free_host / 2**30:.1f} GiB is available: give a --memory-limit below that to stream it"
            + ("" if quantised else ", or re-extract with --dtype int8 to halve it"))
    on_gpu = device.type == "cuda" and nbytes < MEMORY_HEADROOM * torch.cuda.mem_get_info(device)[0]
    pinned = device.type == "cuda"  # page-locked host memory exists only with a CUDA device
    cls = torch.empty((reader.n, reader.cls_dim), dtype=torch.float16, pin_memory=pinned)
    patches = torch.empty((reader.n, reader.num_patches, reader.patch_dim),
                          dtype=torch.int8 if quantised else torch.float16, pin_memory=pinned)
    scales = torch.empty((reader.n, reader.num_patches), dtype=torch.float16, pin_memory=pinned) if quantised else None
    reader.load_all(progress, READ_SAMPLES, out_cls=cls.numpy(), out_patches=patches.numpy(),
                    out_scales=scales.numpy() if quantised else None)
    labels = torch.from_numpy(reader.labels())
    if on_gpu:
        cls, patches, labels = cls.to(device), patches.to(device), labels.to(device)
        scales = scales.to(device) if quantised else None
    return SplitTensors(cls, patches, labels, scales)


def default_memory_limit() -> int | None:
    """What the machine has for the splits: MEMORY_HEADROOM of the free host memory (None where unknown)."""
    free_host = available_host_memory()
    return None if free_host is None else int(MEMORY_HEADROOM * free_host)


def load_splits(store: FeatureStore, device: torch.device, memory_limit: int | None = None,
                progress: bool = True) -> tuple[Split, Split]:
    """(train, test) for training: both in memory (load_split) when they fit `memory_limit` bytes together (default:
    default_memory_limit()); else the train split streamed (stream.StreamedSplit: the labelled subset, a shuffle
    buffer and chunks read ahead stay under the limit) and the test split in memory if what is left holds it, else
    read in order at each evaluation."""
    from twinturbo.train.stream import RangeSplit, StreamedSplit

    limit = default_memory_limit() if memory_limit is None else memory_limit
    readers = {name: store.split(name) for name in ("train", "test")}
    needed = {name: reader.loaded_nbytes(quantised=reader.patch_dtype == "int8") for name, reader in readers.items()}
    if limit is None or needed["train"] + needed["test"] <= limit:
        return tuple(load_split(store, name, device, progress) for name in ("train", "test"))
    train = StreamedSplit(readers["train"], limit)
    streaming = train.resident_nbytes(0, 1)
    test = load_split(store, "test", device, progress) if needed["test"] + streaming <= limit else \
        RangeSplit(readers["test"])
    if progress:
        print(f"{store.path}: the splits ({format_size(needed['train'] + needed['test'])}) are over the memory limit "
              f"({format_size(limit)}): streaming the train split; test split "
              + ("in memory" if isinstance(test, SplitTensors) else "read from the store at each evaluation"))
    return train, test


SIZE_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
              "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}


def format_size(nbytes: float) -> str:
    """Bytes as the user would write them back to --memory-limit: 512 -> '512B', 3 * 2**20 -> '3.0MiB'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f}{unit}"
    return f"{int(nbytes)}B"


def parse_size(text: str, option: str = "--memory-limit") -> int:
    """'8G', '512MiB', '1.5 GB', '1000000' -> bytes (binary units: K/M/G/T are powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise TwinTurboError(f"{option} {text}: expected a positive size such as 8G, 512M or 1.5GiB")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


def num_classes_of(store: FeatureStore, train_labels: torch.Tensor) -> int:
    """C from the store's `class_names`, else one more than the largest label seen."""
    if store.class_names:
        return len(store.class_names)
    return int(train_labels.max()) + 1
