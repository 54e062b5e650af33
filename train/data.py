"""Load a split of the feature store into tensors, once, by contiguous chunk reads.

The whole split is held in host memory (and on the GPU when it fits there) as the store holds it, float16 or int8 with
a scale per token (dequantised per batch, on the device), so every training batch is an
in-memory gather: the store is read once per run in whole-chunk ranges, never with scattered indices
(DESIGN.md: scattered reads of a chunked store are orders of magnitude slower).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import FeatureStore

# Leave this share of free memory to the model, optimiser states and activations.
MEMORY_HEADROOM = 0.7
READ_SAMPLES = 512  # samples per read: big enough to amortise per-call overhead, small enough for a smooth bar


@dataclass
class SplitTensors:
    """One split in memory: cls [N, Dc] float16, patches [N, T, Dp] float16 (or int8 with `patch_scales` [N, T]
    float16, as an int8 store holds them: half the memory), labels [N] int64 (-1 = none)."""

    cls: torch.Tensor
    patches: torch.Tensor
    labels: torch.Tensor
    patch_scales: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.cls.device

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
            f"{free_host / 2**30:.1f} GiB is available"
            + ("" if quantised else " (re-extract with --dtype int8 to halve it, or use a bigger machine)"))
    on_gpu = device.type == "cuda" and nbytes < MEMORY_HEADROOM * torch.cuda.mem_get_info(device)[0]
    pinned = device.type == "cuda"
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


def num_classes_of(store: FeatureStore, train_labels: torch.Tensor) -> int:
    """C from the store's `class_names`, else one more than the largest label seen."""
    if store.class_names:
        return len(store.class_names)
    return int(train_labels.max()) + 1
