"""A split as the training loop reads it (`Split`), and a split held in memory (`SplitTensors`).

In memory: the whole split in host memory (and on the GPU when it fits there) as the store holds it, float16 or int8
with a scale per token (dequantised per batch, on the device), so every training batch is an in-memory gather: the
store is read once per run in whole-chunk ranges, never with scattered indices (scattered reads of a chunked store
cost a chunk decode per sample). Whether a split is held or streamed (train/stream.py) is train/memory.py's decision.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from twinturbo.common.store import FeatureStore
from twinturbo.train.sampling import EpochPlan, epoch_plan

READ_SAMPLES = 512  # samples per read: big enough to amortise per-call overhead, small enough for a smooth bar
GPU_HEADROOM = 0.7  # the share of a GPU's free memory a split may take there (the rest: model, optimiser, activations)


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


def load_split(store: FeatureStore, split: str, device: torch.device, progress: bool = True) -> SplitTensors:
    """Read a whole split into memory, int8 patch tokens kept int8: on `device` when it is a GPU with room for it
    (GPU_HEADROOM of its free memory), else in host memory (pinned when training on a GPU). Whether it should be
    held at all is train/memory.py's decision."""
    reader = store.split(split)
    quantised = reader.patch_dtype == "int8"
    nbytes = reader.loaded_nbytes(quantised=quantised)
    on_gpu = device.type == "cuda" and nbytes < GPU_HEADROOM * torch.cuda.mem_get_info(device)[0]
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


def num_classes_of(store: FeatureStore, train_labels: torch.Tensor) -> int:
    """C from the store's `class_names`, else one more than the largest label seen."""
    if store.class_names:
        return len(store.class_names)
    return int(train_labels.max()) + 1
