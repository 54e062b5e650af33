"""A split as the training loop reads it (`Split`), and a split held in memory (`SplitTensors`).

In memory: the whole split in host memory (and on the GPU when it fits there) as the store holds it, float16 or int8
with a scale per token (dequantised per batch, on the device), so every training batch is an in-memory gather: the
store is read once per run in whole-chunk ranges, never with scattered indices (scattered reads of a chunked store
cost a chunk decode per sample). Whether a split is held or streamed (train/run/stream.py) is train/run/memory.py's decision.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import FeatureStore
from twinturbo.train.run.sampling import EpochPlan, epoch_plan
from twinturbo.train.terms import TASK_LOSSES, RowGroup, active_terms

READ_SAMPLES = 512  # samples per read: big enough to amortise per-call overhead, small enough for a smooth bar
GPU_HEADROOM = 0.7  # the share of a GPU's free memory a split may take there (the rest: model, optimiser, activations)


class Split:
    """What the training loop reads of a split: `len`, `labels` [N], the widths `cls_dim`, `num_patches`,
    `patch_dim`, the stored views `view_kinds`, and `batch(index, device, views)`; these defaults are the in-memory
    behaviour, which streamed splits (train/run/stream.py) replace."""

    cls_dim: int
    num_patches: int
    patch_dim: int
    labels: torch.Tensor
    view_kinds: dict[str, tuple[int, int]] = {}  # stored view kinds: name -> (first view index, count); none here

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
    float16, as an int8 store holds them: half the memory), labels [N] int64 (-1 = none); with views, their
    augmented views the same way, `views_cls` [N, V, Dc], `views_patches` [N, V, T, Dp] (and `views_patch_scales`),
    whose kinds `view_kinds` names (store.SplitReader.view_kinds)."""

    cls: torch.Tensor
    patches: torch.Tensor
    labels: torch.Tensor
    patch_scales: torch.Tensor | None = None
    views_cls: torch.Tensor | None = None
    views_patches: torch.Tensor | None = None
    views_patch_scales: torch.Tensor | None = None
    view_kinds: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cls_dim, (self.num_patches, self.patch_dim) = self.cls.shape[1], self.patches.shape[1:]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.cls.device

    def subset(self, index: torch.Tensor) -> "SplitTensors":
        """Samples `index`, clean tokens only (a validation split is scored on the clean view)."""
        index = index.to(self.device)
        scales = None if self.patch_scales is None else self.patch_scales[index]
        return SplitTensors(self.cls[index], self.patches[index], self.labels[index], scales)

    def put(self, rows: torch.Tensor, part: "SplitTensors", offsets: torch.Tensor) -> None:
        """Copy samples `offsets` of `part` into rows `rows` of this split (every array it holds, labels aside)."""
        for name in ("cls", "patches", "patch_scales", "views_cls", "views_patches", "views_patch_scales"):
            target = getattr(self, name)
            if target is not None:
                target[rows] = getattr(part, name)[offsets]

    def batch(self, index: torch.Tensor, device: torch.device,
              views: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cls, patches, labels) of the samples `index`, as float32 on `device` (bf16 autocast does the rest); with
        `views`, row i through stored view views[i] (-1: its clean tokens).

        int8 patches are dequantised here, on `device`, and rounded to float16 first, exactly as the store's own
        float16 reader does: a run on an int8 store is the same whether the split is held as int8 or as float16.
        """
        index = index.to(self.device)
        if views is None or not bool((views >= 0).any()):
            cls, patches, labels = self.cls[index], self.patches[index], self.labels[index]
            scales = None if self.patch_scales is None else self.patch_scales[index]
        else:
            if self.views_cls is None:
                raise ValueError("this split holds no views")
            views = views.to(self.device)
            viewed = views >= 0

            def pick(clean: torch.Tensor | None, augmented: torch.Tensor | None) -> torch.Tensor | None:
                if clean is None:
                    return None
                out = clean.new_empty((len(index),) + clean.shape[1:])
                out[~viewed] = clean[index[~viewed]]
                out[viewed] = augmented[index[viewed], views[viewed]]
                return out

            cls, patches = pick(self.cls, self.views_cls), pick(self.patches, self.views_patches)
            scales, labels = pick(self.patch_scales, self.views_patch_scales), self.labels[index]
        non_blocking = cls.device.type == "cpu" and device.type == "cuda"
        cls, patches = cls.to(device, non_blocking=non_blocking), patches.to(device, non_blocking=non_blocking)
        if scales is not None:
            scales = scales.to(device, non_blocking=non_blocking)
            patches = (patches.float() * scales.float()[..., None]).half()
        return cls.float(), patches.float(), labels.to(device, non_blocking=non_blocking)


def load_split(store: FeatureStore, split: str, device: torch.device, progress: bool = True,
               views: bool = False) -> SplitTensors:
    """Read a whole split into memory, int8 patch tokens kept int8, and with `views` its augmented views (when it
    has any): on `device` when it is a GPU with room for it (GPU_HEADROOM of its free memory), else in host memory
    (pinned when training on a GPU). Whether it should be held at all is train/run/memory.py's decision."""
    reader = store.split(split)
    quantised = reader.patch_dtype == "int8"
    views = views and reader.num_views > 0
    nbytes = reader.loaded_nbytes(quantised=quantised, views=views)
    on_gpu = device.type == "cuda" and nbytes < GPU_HEADROOM * torch.cuda.mem_get_info(device)[0]
    pinned = device.type == "cuda"  # page-locked host memory exists only with a CUDA device
    held = empty_split(reader, reader.n, views, pinned)
    reader.load_all(progress, READ_SAMPLES, out_cls=held.cls.numpy(), out_patches=held.patches.numpy(),
                    out_scales=held.patch_scales.numpy() if quantised else None)
    if views:
        from tqdm.auto import tqdm

        with tqdm(total=reader.n, unit="sample", desc=f"loading {split} views", disable=not progress,
                  leave=False) as bar:
            for start, stop in reader.iter_chunks(max(1, READ_SAMPLES // reader.chunk_size)):
                reader.read_views_stored(start, stop, held.views_cls[start:stop].numpy(),
                                         held.views_patches[start:stop].numpy(),
                                         None if held.views_patch_scales is None
                                         else held.views_patch_scales[start:stop].numpy())
                bar.update(stop - start)
    held.labels = torch.from_numpy(reader.labels())
    if on_gpu:
        held = SplitTensors(*(None if t is None else t.to(device) for t in (
            held.cls, held.patches, held.labels, held.patch_scales, held.views_cls, held.views_patches,
            held.views_patch_scales)), view_kinds=held.view_kinds)
    return held


def empty_split(reader, rows: int, views: bool = False, pinned: bool = False) -> SplitTensors:
    """Host tensors for `rows` samples of `reader`'s split as the store holds them (int8 patch tokens stay int8,
    with their scales), with `views` its views too; labels -1."""
    quantised = reader.patch_dtype == "int8"
    v = reader.num_views if views else 0

    def empty(shape, dtype):
        return torch.empty(shape, dtype=dtype, pin_memory=pinned)

    patch_dtype = torch.int8 if quantised else torch.float16
    return SplitTensors(
        empty((rows, reader.cls_dim), torch.float16),
        empty((rows, reader.num_patches, reader.patch_dim), patch_dtype),
        torch.full((rows,), -1, dtype=torch.int64),
        empty((rows, reader.num_patches), torch.float16) if quantised else None,
        empty((rows, v, reader.cls_dim), torch.float16) if v else None,
        empty((rows, v, reader.num_patches, reader.patch_dim), patch_dtype) if v else None,
        empty((rows, v, reader.num_patches), torch.float16) if v and quantised else None,
        dict(reader.view_kinds) if v else {})


def check_views(store: FeatureStore, configs: list) -> None:
    """Refuse, in one line naming the term's option, runs whose terms read views the store's train split lacks."""
    kinds = store.split("train").view_kinds
    for config in configs:
        for term in [TASK_LOSSES[config.loss], *active_terms(config)]:
            missing = sorted({RowGroup.parse(group).view for group in term.rows} - {None} - set(kinds))
            if missing:
                option = term.weight.flag if term.weight else f"--loss {term.name}"
                held = f"only the views {', '.join(kinds)}" if kinds else "no views"
                raise TwinTurboError(
                    f"{option} reads the {' and '.join(missing)} views of its samples and {store.path} holds {held}: "
                    f"extract it with tt-extract --views {','.join(f'{kind}:2' for kind in missing)} (e.g. "
                    "weak:2,strong:4), or train on a store that has them")


def num_classes_of(store: FeatureStore, train_labels: torch.Tensor) -> int:
    """C from the store's `class_names`, else one more than the largest label seen."""
    if store.class_names:
        return len(store.class_names)
    return int(train_labels.max()) + 1
