"""The extraction loop: images -> frozen backbone -> feature store, once per dataset (stage 1 of README.md's pipeline).

The backbone runs on a FIXED batch grid: batch b is samples [b*B, (b+1)*B) with B a multiple of the store's chunk
size, so every chunk is always computed inside the same batch. That is what makes a resumed run (after a kill,
SIGKILL included) and a multi-process run (`torchrun`, batches dealt round-robin to ranks) byte-identical to one
uninterrupted process: the same images go through the same forward in the same batch, whoever computes it and when.
A batch whose chunks are all marked done is skipped; a partially done one is recomputed and only its missing chunks
are written (a done chunk is never rewritten, so a kill can never leave a done flag over half-written data).

Resize follows Table 1 of the paper (28/32 -> 224): bilinear, grey repeated to 3 channels. The forward runs under
`torch.inference_mode`, in bf16 autocast on CUDA and fp32 on CPU (`common.device.extraction_bf16` says why).

The options are ExtractConfig's (config.py); torchrun's ranks are ranks.py's, the background writer writer.py's, the
room on disk disk.py's.
"""
from __future__ import annotations

import errno
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from twinturbo.common.device import extraction_bf16, resolve_device
from twinturbo.common.errors import TwinTurboError
from twinturbo.common.slurm import job_failure, raise_unfinished
from twinturbo.common.store import VIEW_SPLITS, FeatureStore, SplitLayout, create_store, open_store
from twinturbo.extract.backbones import BackboneOptions, build_backbone
from twinturbo.extract.config import ExtractConfig, batch_grid, store_path
from twinturbo.extract.datasets import read_dataset_split
from twinturbo.extract.disk import check_free_space, close_after_full_disk, progress_of
from twinturbo.extract.ranks import Ranks, detect_ranks, init_ranks
from twinturbo.extract.views import ViewMaker, ViewPolicy, ViewSpec
from twinturbo.extract.writer import ChunkWriter


def prepare_images(images: np.ndarray, resolution: int, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, C] -> float32 [B, 3, R, R] in [0, 1] on `device`: bilinear resize, grey repeated to RGB.

    The uint8 batch travels to the device (4x fewer bytes than float) and is resized there. Resizing one grey channel
    then repeating it equals repeating then resizing, at a third of the cost.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=False)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise TwinTurboError(f"images have {x.shape[1]} channels: expected 1 (grey) or 3 (RGB)")
    return x.contiguous()


def forward_features(backbone: torch.nn.Module, images: torch.Tensor,
                     bf16: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's (cls, patches) as float16 on the images' device, under bf16 autocast when `bf16` (default:
    `extraction_bf16`: on CUDA only)."""
    enabled = extraction_bf16(images.device) if bf16 is None else bf16
    with torch.inference_mode(), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=enabled):
        cls, patches = backbone(images)
    return cls.to(torch.float16), patches.to(torch.float16)



# ---------------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class SplitResult:
    split: str
    n: int
    computed: int  # samples this process ran through the backbone (0 when already done)
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class ExtractResult:
    path: Path
    splits: list[SplitResult]
    batch_size: int
    chunk_size: int


def pending_batches(done: np.ndarray, n: int, batch_size: int, chunk_size: int, ranks: Ranks) -> list[int]:
    """Batches of the fixed grid that this rank owns (b % world == rank) and that still have a chunk to write."""
    per_batch = batch_size // chunk_size
    owned = range(ranks.rank, (n + batch_size - 1) // batch_size, ranks.world)
    return [b for b in owned if not done[b * per_batch:(b + 1) * per_batch].all()]


def read_batch(data, lo: int, hi: int, views: ViewMaker | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Images [lo, hi) of a split as uint8 [B, H, W, C], and with `views` their augmented views [V, B, H, W, C]."""
    images = data.read(lo, hi)
    return images, (views(images, lo) if views is not None else None)


def forward_batch(backbone: torch.nn.Module, images: np.ndarray, view_images: np.ndarray | None, resolution: int,
                  device: torch.device) -> tuple[torch.Tensor, ...]:
    """(cls, patches) of the clean images, and with views (views_cls [B, V, Dc], views_patches [B, V, T, Dp]) after
    them. Each view goes through the backbone as its own batch of B images, the clean one exactly as in a store
    without views: the clean tokens do not depend on whether views are extracted."""
    tokens = forward_features(backbone, prepare_images(images, resolution, device))
    if view_images is None:
        return tokens
    per_view = [forward_features(backbone, prepare_images(view, resolution, device)) for view in view_images]
    return tokens + (torch.stack([cls for cls, _ in per_view], dim=1),
                     torch.stack([patches for _, patches in per_view], dim=1))


def extract_split(store: FeatureStore, split: str, data, n: int, backbone: torch.nn.Module, device: torch.device,
                  batch_size: int, ranks: Ranks = Ranks(), progress: bool = True,
                  views: ViewMaker | None = None) -> SplitResult:
    """Run this rank's missing batches of one split (and with `views` their augmented views) through the backbone
    and write their missing chunks."""
    from tqdm.auto import tqdm

    chunk_size = int(store.attrs["chunk_size"])
    done = store.done_mask(split)
    batches = pending_batches(done, n, batch_size, chunk_size, ranks)
    spans = [(b * batch_size, min((b + 1) * batch_size, n)) for b in batches]
    total = sum(hi - lo for lo, hi in spans)
    desc = f"{split}" + (f" rank {ranks.rank}/{ranks.world}" if ranks.distributed else "")
    resolution = int(backbone.resolution)
    writer = ChunkWriter(store)
    started = time.perf_counter()
    # Reading the next batch (decoding image files for `folder:`, augmenting its views) overlaps the current forward;
    # the reader thread is the only user of torch's global generator meanwhile (extract/views.py).
    with ThreadPoolExecutor(max_workers=1) as reader, \
            tqdm(total=total, unit="img", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        try:
            upcoming = reader.submit(read_batch, data, *spans[0], views) if spans else None
            for i, (lo, hi) in enumerate(spans):
                images, view_images = upcoming.result()
                if i + 1 < len(spans):
                    upcoming = reader.submit(read_batch, data, *spans[i + 1], views)
                tokens = forward_batch(backbone, images, view_images, resolution, device)
                first = lo // chunk_size
                missing = [k for k in range(first, (hi + chunk_size - 1) // chunk_size) if not done[k]]
                writer.put(split, lo, tokens, np.asarray(data.labels[lo:hi], dtype=np.int64), missing)
                bar.update(hi - lo)
        finally:
            writer.close()
    return SplitResult(split, n, total, time.perf_counter() - started)


def _store_attrs(config: ExtractConfig, backbone, splits: dict, batch_size: int, limit_n: dict[str, int]) -> dict:
    first = next(iter(splits.values()))
    spec = config.view_spec()
    views = {"views": spec.to_attrs(), "view_seed": int(config.view_seed)} if spec is not None else {}
    return {**views, 
        "dataset": config.dataset,
        "backbone": backbone.name,
        "weights_id": backbone.weights_id,
        "resolution": int(backbone.resolution),
        "class_names": list(first.class_names),
        "source_checksums": {name: dict(split.source_files) for name, split in splits.items()},
        "n": dict(limit_n),
        "limit": config.limit,
        "batch_size": int(batch_size),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": config.command,
    }



@dataclass
class Prepared:
    """An extraction with every user input checked and its backbone built; nothing written yet."""

    splits: dict
    counts: dict[str, int]
    backbone: torch.nn.Module
    layouts: dict[str, SplitLayout]
    path: Path
    batch_size: int
    chunk_size: int
    device: torch.device


def prepare(config: ExtractConfig, backbone: torch.nn.Module | None, ranks: Ranks, log, data: dict | None) -> Prepared:
    """Everything that can fail on user input, before the store exists: options, dataset files, the backbone."""
    config.validate()
    device = init_ranks(ranks, resolve_device(config.device))
    batch_size, chunk_size, note = batch_grid(config.batch_size, config.chunk_size)
    if note and ranks.rank == 0:
        log(f"note: {note}")
    splits = {name: data[name] if data and name in data else
              read_dataset_split(config.dataset, name, config.data_root, config.download, config.hf_options())
              for name in config.splits}
    counts = {name: min(len(split), config.limit) if config.limit else len(split) for name, split in splits.items()}
    for name, count in counts.items():
        if count == 0:
            raise TwinTurboError(f"{config.dataset}: split '{name}' has no images")
    if backbone is None:
        options = BackboneOptions(resolution=config.resolution, weights=config.weights,
                                  radio_checkpoint=config.radio_checkpoint, hub_dir=config.hub_dir,
                                  trust_remote_code=config.trust_remote_code)
        backbone = build_backbone(config.backbone, options)
        if getattr(backbone, "note", "") and ranks.rank == 0:
            log(f"note: {backbone.note}")
    elif config.resolution is not None and int(config.resolution) != int(backbone.resolution):
        raise TwinTurboError(f"--resolution {config.resolution} differs from the given backbone's {backbone.resolution}")
    backbone = backbone.to(device).eval()
    layouts = {
        name: SplitLayout(counts[name], int(backbone.cls_dim), int(backbone.num_patches), int(backbone.patch_dim))
        for name in splits
    }
    return Prepared(splits, counts, backbone, layouts, store_path(config), batch_size, chunk_size, device)


def open_for_writing(config: ExtractConfig, job: Prepared, log) -> FeatureStore:
    """Create the store, or reopen a matching one to resume it (one that holds nothing yet is started afresh)."""
    spec = config.view_spec()
    check_free_space(job.path, job.layouts, job.chunk_size, config.dtype, spec.count if spec else 0)
    attrs = _store_attrs(config, job.backbone, job.splits, job.batch_size, job.counts)
    store = create_store(job.path, attrs, job.layouts, job.chunk_size, patch_dtype=config.dtype,
                         overwrite=config.overwrite)
    previous = store.attrs.get("batch_size")
    if previous is not None and int(previous) != job.batch_size:
        log(f"note: {job.path} was started with --batch-size {previous}; the rest runs with {job.batch_size} "
            "(features may differ in their last bits from a run with one batch size)")
    changed = _changed_sources(store.attrs, attrs)
    if changed and store.chunks_done() == 0:
        store.close()  # the sources changed before anything was computed (a bad image fixed): start afresh
        store = create_store(job.path, attrs, job.layouts, job.chunk_size, patch_dtype=config.dtype, overwrite=True)
    elif changed:
        store.close()
        raise TwinTurboError(f"{job.path} was extracted from {changed}; pass --overwrite to replace it or choose "
                             "another --out")
    return store


def _changed_sources(stored: dict, wanted: dict) -> str | None:
    """What differs between the sources a store was extracted from and this extraction's, or None: the raw files'
    checksums, or the class list (a folder dataset whose empty class folder was removed keeps its files' checksums)."""
    if stored.get("source_checksums") is not None and stored["source_checksums"] != wanted["source_checksums"]:
        return "other source files (checksums differ)"
    if "class_names" in stored and list(stored["class_names"]) != list(wanted["class_names"]):
        return (f"other classes ({', '.join(map(str, stored['class_names']))} where the dataset now has "
                f"{', '.join(map(str, wanted['class_names']))})")
    return None


def views_of(store: FeatureStore, split: str) -> ViewMaker | None:
    """The ViewMaker of a split with views, from the store's own record of its policies and seed (None without)."""
    entries = store.attrs.get("views") or ()
    if split not in VIEW_SPLITS or not entries:
        return None
    spec = ViewSpec(tuple((e["name"], int(e["count"]), ViewPolicy(**e["policy"])) for e in entries))
    return ViewMaker(spec, int(store.attrs["view_seed"]))


def extract_all(store: FeatureStore, job: Prepared, ranks: Ranks, progress: bool) -> list[SplitResult]:
    """Every split's missing batches that `ranks` owns, through the backbone into `store` (closed at the end); a full
    disk is one line saying how far the store got."""
    results, current = [], None
    try:
        for name, split in job.splits.items():
            current = name
            results.append(extract_split(store, name, split, job.counts[name], job.backbone, job.device,
                                         job.batch_size, ranks, progress=progress, views=views_of(store, name)))
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        close_after_full_disk(store)
        raise TwinTurboError(f"{job.path}: the disk is full ({err.strerror or os.strerror(err.errno)}) while writing "
                             f"split '{current}'{progress_of(job.path, current)}; free some space and rerun the same "
                             "command: it resumes from the first chunk not done") from None
    store.close()
    return results


def run_extraction(config: ExtractConfig, backbone: torch.nn.Module | None = None,
                   ranks: Ranks | None = None, log=None, data: dict | None = None) -> ExtractResult:
    """Extract every requested split of `config.dataset` into its store; resume a matching store, refuse another.

    `backbone` may be passed in already built (the benchmark does, to time the same model); otherwise it is built
    from `config`. `data` may map split names to already loaded `DatasetSplit`s instead of reading
    `config.data_root`. Under torchrun each rank computes its share of the batches and rank 0 alone creates the store;
    with `--launcher submitit --tasks N`, N jobs do (`extract_over_jobs`).
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    ranks = ranks if ranks is not None else detect_ranks()
    several = ranks.distributed or config.tasks > 1
    if several and config.format == "hdf5":
        raise TwinTurboError(
            "--format hdf5 cannot be written by several processes or tasks (h5py has no parallel writer without "
            "MPI): use --format zarr with torchrun or --tasks, or run one process")
    if config.launcher == "submitit":
        return extract_over_jobs(config, log)
    job = prepare(config, backbone, ranks, log, data)
    failure = None
    if ranks.rank == 0:
        try:
            store = open_for_writing(config, job, log)
        except TwinTurboError as err:
            failure = str(err)
    failure = ranks.from_rank0(failure)
    if failure is not None:
        raise TwinTurboError(failure)
    if ranks.rank != 0:
        store = open_store(job.path, writable=True)
    results = extract_all(store, job, ranks, config.progress)
    # All ranks' figures, so rank 0's summary counts every image: the slowest rank sets the time.
    per_rank = ranks.gather(results)
    results = [SplitResult(r.split, r.n, sum(rank[i].computed for rank in per_rank),
                           max(rank[i].seconds for rank in per_rank)) for i, r in enumerate(results)]
    return ExtractResult(job.path, results, job.batch_size, job.chunk_size)


def extract_task(config: ExtractConfig, rank: int, world: int) -> list[SplitResult]:
    """Task `rank` of `world` (a submitit job): the batches b with b % world == rank of every split, written into the
    store the submitting process created (zarr: each chunk is its own files, so tasks never write the same file)."""
    job = prepare(config, None, Ranks(), lambda message: None, None)
    return extract_all(open_store(job.path, writable=True), job, Ranks(rank, world), progress=False)


def extract_over_jobs(config: ExtractConfig, log) -> ExtractResult:
    """--launcher submitit --tasks N: create (or reopen) the store here, then N jobs each extract their share of the
    chunks; a task that is cancelled or fails is reported with its log, and rerunning the command redoes exactly
    the chunks it left undone."""
    job = prepare(config, None, Ranks(), log, None)
    open_for_writing(config, job, log).close()
    folder = job.path.parent / f".{job.path.name}.submitit"
    executor = config.slurm.executor(folder, "tt-extract")
    started = time.perf_counter()
    tasks = config.tasks
    jobs = executor.map_array(extract_task, [config] * tasks, list(range(tasks)), [tasks] * tasks)
    log(f"tt-extract: submitted {tasks} tasks to {executor.cluster} (logs under {folder})")
    for submitted in jobs:
        while not submitted.done():
            time.sleep(2.0)
    failures = []
    per_task = []
    for submitted in jobs:
        try:
            per_task.append(submitted.result())
        except Exception:  # job_failure says why, in one line
            failures.append(f"task {submitted.job_id} {job_failure(submitted)} (log {submitted.paths.stderr})")
    raise_unfinished(failures, tasks, "extraction tasks", "rerun the same command to compute only the chunks they "
                     "left undone", lambda line: log(f"tt-extract: {line}"))
    seconds = time.perf_counter() - started
    results = [SplitResult(name, job.counts[name], sum(task[i].computed for task in per_task), seconds)
               for i, name in enumerate(job.splits)]
    return ExtractResult(job.path, results, job.batch_size, job.chunk_size)
