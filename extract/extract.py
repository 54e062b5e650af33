"""The extraction loop: images -> frozen backbone -> feature store, once per dataset (stage 1 of README.md's pipeline).

The backbone runs on a FIXED batch grid: batch b is samples [b*B, (b+1)*B) with B a multiple of the store's chunk
size, so every chunk is always computed inside the same batch. That is what makes a resumed run (after a kill,
SIGKILL included) and a multi-process run (`torchrun`, batches dealt round-robin to ranks) byte-identical to one
uninterrupted process: the same images go through the same forward in the same batch, whoever computes it and when.
A batch whose chunks are all marked done is skipped; a partially done one is recomputed and only its missing chunks
are written (a done chunk is never rewritten, so a kill can never leave a done flag over half-written data).

Resize follows Table 1 of the paper (28/32 -> 224): bilinear, grey repeated to 3 channels. The forward runs under
`torch.inference_mode`, in bf16 autocast on CUDA and fp32 on CPU (`common.device.extraction_bf16` says why).
"""
from __future__ import annotations

import errno
import os
import queue
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from twinturbo.common.device import extraction_bf16, resolve_device
from twinturbo.common.errors import TwinTurboError
from twinturbo.common.sizes import format_size
from twinturbo.common.slurm import SlurmOptions, job_failure, raise_unfinished
from twinturbo.common.store import (FORMATS, HDF5_CLOSE_RESERVE, PATCH_DTYPES, VIEW_SPLITS, FeatureStore, SplitLayout,
                                    create_store, detect_format, num_chunks, open_store)
from twinturbo.extract.backbones import BACKBONE_SPECS, DEFAULT_BACKBONE, BackboneOptions, build_backbone
from twinturbo.extract.datasets import HF_PREFIX, HFDatasetOptions, read_dataset_split, store_name
from twinturbo.extract.views import ViewMaker, ViewPolicy, ViewSpec, parse_views

SPLIT_NAMES = ("train", "test")


def _option(default, flag: str, help: str, kind: type | None = None, shown: str | None = None, **extra):
    """An ExtractConfig field with its tt-extract flag and help text (the CLI builds its options from these)."""
    return field(default=default, metadata={"flag": flag, "help": help, "kind": kind or type(default),
                                            "shown": default if shown is None else shown, **extra})


@dataclass
class ExtractConfig:
    """Everything `tt-extract` needs; extract/cli.py builds its options from these fields (README.md, `tt-extract`)."""

    dataset: str = _option(None, "--dataset", "mnist | fashion-mnist | cifar10 | svhn | digits | folder:PATH | "
                           "hf:NAME_OR_DIR[:CONFIG] (a Hugging Face dataset: a save_to_disk directory, a hub name, or "
                           "a local data dir)", kind=str, shown="required")
    out: Path = _option(None, "--out", "Directory receiving the store <out>/<dataset>[.h5].", kind=Path,
                        shown="required")
    backbone: str = _option(DEFAULT_BACKBONE, "--backbone", BACKBONE_SPECS)
    resolution: int | None = _option(None, "--resolution", "Input side in pixels.", kind=int,
                                     shown="the backbone's")
    batch_size: int = _option(256, "--batch-size", "Images per forward (a multiple of --chunk-size).")
    chunk_size: int = _option(64, "--chunk-size", "Samples per store chunk (the unit of resume).")
    format: str = _option("zarr", "--format", "zarr | hdf5")
    dtype: str = _option("float16", "--dtype", "Patch tokens on disk: float16 | int8 (+ a scale per token).")
    splits: Sequence[str] = _option(SPLIT_NAMES, "--splits", "Comma-separated splits to extract.", kind=str,
                                    shown=",".join(SPLIT_NAMES), parse=lambda text: tuple(
                                        s.strip() for s in text.split(",") if s.strip()))
    device: str = _option("auto", "--device", "auto | cpu | cuda")
    limit: int | None = _option(None, "--limit", "Only the first N samples of each split.", kind=int, shown="all")
    data_root: Path = _option(Path("data"), "--data-root", "Where the raw dataset files are.", kind=Path)
    download: bool = _option(False, "--download", "Fetch missing MNIST/Fashion-MNIST/CIFAR-10/SVHN files "
                             "(checksum-verified).")
    weights: Path | None = _option(None, "--weights", "Local weights file for timm:<model>.", kind=Path,
                                   shown="none")
    radio_checkpoint: Path | None = _option(None, "--radio-checkpoint", "Local RADIO checkpoint (.pth.tar).",
                                            kind=Path, shown="none")
    hub_dir: Path | None = _option(None, "--hub-dir", "Local copy of the torch.hub repo (NVlabs/RADIO for radio, "
                                   "OWNER/REPO for hub:OWNER/REPO:ENTRY), loaded offline.", kind=Path, shown="none")
    trust_remote_code: bool = _option(False, "--trust-remote-code", "Let hf:<model> run the code the model ships "
                                      "(config.json's auto_map, e.g. nvidia/RADIO-B); read it first.")
    image_column: str | None = _option(None, "--image-column", "hf: datasets: the column of images.", kind=str,
                                       shown="its Image feature")
    label_column: str | None = _option(None, "--label-column", "hf: datasets: the column of labels; its names are "
                                       "the class names.", kind=str, shown="its ClassLabel feature")
    train_split: str | None = _option(None, "--train-split", "hf: datasets: the dataset's split stored as train.",
                                      kind=str, shown="train")
    test_split: str | None = _option(None, "--test-split", "hf: datasets: the dataset's split stored as test (e.g. "
                                     "validation where it has no test split; or --splits train).", kind=str,
                                     shown="test")
    views: str | None = _option(None, "--views", "Augmented views of every train image stored beside its clean one, "
                                "e.g. weak:2,strong:4 (FixMatch's policies, extract/views.py); the test split gets "
                                "none.", kind=str, shown="none")
    view_flip: str = _option("auto", "--view-flip", "Horizontal flips in the views: auto (by dataset: Fashion-MNIST, "
                             "CIFAR-10 and folders yes; digits, MNIST, SVHN no), yes or no.")
    view_seed: int = _option(0, "--view-seed", "The seed each view's randomness is derived from, with its image "
                             "and view index.")
    overwrite: bool = _option(False, "--overwrite", "Replace an existing store that holds a different extraction.")
    progress: bool = _option(True, "--no-progress", "No progress bars.", negate=True)
    launcher: str = _option("local", "--launcher", "local: this process (or torchrun's); submitit: --tasks jobs "
                            "(SLURM), each writing its own chunks of one zarr store.")
    tasks: int = _option(1, "--tasks", "With --launcher submitit: how many jobs share the extraction.")
    slurm: SlurmOptions = field(default_factory=SlurmOptions)  # --launcher submitit's resources (common/slurm.py)
    command: str = field(default_factory=lambda: " ".join(sys.argv))  # recorded in the store's attrs

    def validate(self) -> None:
        """Option checks that need no file: each failure is one line naming the option."""
        if not self.dataset or self.out is None:
            raise TwinTurboError("--dataset and --out are required (or --verify PATH to check a store)")
        if self.format not in FORMATS:
            raise TwinTurboError(f"--format {self.format}: expected one of {', '.join(FORMATS)}")
        if self.dtype not in PATCH_DTYPES:
            raise TwinTurboError(f"--dtype {self.dtype}: expected one of {', '.join(PATCH_DTYPES)}")
        if not self.splits:
            raise TwinTurboError("--splits is empty: expected a comma-separated list such as train,test")
        for split in self.splits:
            if split not in SPLIT_NAMES:
                raise TwinTurboError(f"--splits: unknown split '{split}', expected some of {', '.join(SPLIT_NAMES)}")
        if len(set(self.splits)) != len(self.splits):
            raise TwinTurboError(f"--splits {','.join(self.splits)} names a split twice")
        if self.batch_size < 1:
            raise TwinTurboError(f"--batch-size {self.batch_size}: expected a positive number of images")
        if self.chunk_size < 1:
            raise TwinTurboError(f"--chunk-size {self.chunk_size}: expected a positive number of samples")
        if self.limit is not None and self.limit < 1:
            raise TwinTurboError(f"--limit {self.limit}: expected a positive number of samples per split")
        if self.launcher not in ("local", "submitit"):
            raise TwinTurboError(f"--launcher {self.launcher}: expected local or submitit")
        if self.tasks < 1 or (self.tasks > 1 and self.launcher != "submitit"):
            raise TwinTurboError(f"--tasks {self.tasks}: expected a number of jobs >= 1, with --launcher submitit "
                                 "(several local processes: torchrun)")
        if self.resolution is not None and self.resolution < 1:
            raise TwinTurboError(f"--resolution {self.resolution}: expected a positive number of pixels")
        if not self.dataset.startswith(HF_PREFIX):
            for name in ("image_column", "label_column", "train_split", "test_split"):
                if getattr(self, name) is not None:
                    flag = "--" + name.replace("_", "-")
                    raise TwinTurboError(f"{flag} applies to hf: datasets only (--dataset hf:NAME_OR_DIR)")
        self.view_spec()

    def hf_options(self) -> HFDatasetOptions:
        """The hf: dataset options, unset ones at their defaults."""
        return HFDatasetOptions(self.image_column, self.label_column, self.train_split or "train",
                                self.test_split or "test")

    def view_spec(self) -> ViewSpec | None:
        """--views read, its flips decided for the dataset (None: no views)."""
        return parse_views(self.views, self.dataset, self.view_flip)


def store_path(config: ExtractConfig) -> Path:
    """DIR/<store_name(dataset)>/ for zarr, DIR/<store_name(dataset)>.h5 for HDF5."""
    name = store_name(config.dataset)
    return Path(config.out) / (name + ".h5" if config.format == "hdf5" else name)


def batch_grid(batch_size: int, chunk_size: int) -> tuple[int, int, str | None]:
    """(batch size, chunk size, note): the batch is a whole number of chunks so no chunk straddles two batches.

    A batch smaller than a chunk makes the chunk the batch; a larger one is rounded down to a multiple of the chunk.
    """
    if batch_size < chunk_size:
        return batch_size, batch_size, (
            f"--chunk-size {chunk_size} is larger than --batch-size {batch_size}: using chunks of {batch_size}")
    rounded = batch_size - batch_size % chunk_size
    if rounded != batch_size:
        return rounded, chunk_size, (
            f"--batch-size {batch_size} rounded down to {rounded}, a multiple of --chunk-size {chunk_size}")
    return batch_size, chunk_size, None


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
# Ranks: one process, or `torchrun --nproc-per-node N tt-extract ...`
# ---------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ranks:
    """This process's place among the extraction processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        return values

    def from_rank0(self, value):
        """Rank 0's `value` on every rank (a picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def detect_ranks() -> Ranks:
    """WORLD_SIZE/RANK/LOCAL_RANK as torchrun sets them; a single process when absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_ranks(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (gloo on CPU, nccl on CUDA); each CUDA rank takes its own GPU."""
    if not ranks.distributed:
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


# ---------------------------------------------------------------------------------------------------------------------
# Writing in the background: the next batch computes while this one is written
# ---------------------------------------------------------------------------------------------------------------------

class ChunkWriter:
    """A thread that writes finished batches chunk by chunk (data, then the done flag, see `write_chunk`).

    On CUDA the device->host copy runs on a side stream into pinned memory and the thread waits for it, so the
    copy overlaps the next batch's forward. Errors in the thread are raised in the caller at the next `put`/`close`.
    """

    def __init__(self, store: FeatureStore, max_pending: int = 2):
        self.store = store
        self.chunk_size = int(store.attrs["chunk_size"])
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tt-extract-writer", daemon=True)
        self._thread.start()
        self._copy_stream: torch.cuda.Stream | None = None

    def put(self, split: str, start: int, tokens: tuple[torch.Tensor, ...], labels: np.ndarray,
            chunks: list[int]) -> None:
        """Queue samples [start, start + len(cls)) for writing; only the chunks listed are written. `tokens` is
        (cls, patches), and with views (views_cls [B, V, Dc], views_patches [B, V, T, Dp]) after them."""
        self._raise_if_failed()
        ready = None
        if tokens[0].device.type == "cuda":
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(device=tokens[0].device)
            self._copy_stream.wait_stream(torch.cuda.current_stream(tokens[0].device))
            with torch.cuda.stream(self._copy_stream):
                host = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tokens)
                for target, source in zip(host, tokens):
                    target.copy_(source, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(self._copy_stream)
            # The device tensors must outlive the copy queued on the side stream.
            for source in tokens:
                source.record_stream(self._copy_stream)
            tokens = host
        self._queue.put((split, start, tokens, labels, chunks, ready))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain after a failure so `put` never blocks forever
            split, start, tokens, labels, chunks, ready = item
            try:
                if ready is not None:
                    ready.synchronize()
                arrays = [t.numpy() for t in tokens]
                for k in chunks:
                    lo = k * self.chunk_size - start
                    hi = min(lo + self.chunk_size, len(arrays[0]))
                    self.store.write_chunk(split, k, *(a[lo:hi] for a in arrays[:2]), labels[lo:hi],
                                           *(a[lo:hi] for a in arrays[2:]))
            except BaseException as err:  # re-raised in the main thread
                self._error = err

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait for every queued write, then raise any error the thread met."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()


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


def close_after_full_disk(store: FeatureStore) -> None:
    """Close a store whose last write met a full disk. HDF5 may not manage to flush its metadata then; h5py's object
    ids must still be released now, while the interpreter is whole: left to its shutdown, their deallocation met
    the same error and crashed the process (exit 139)."""
    try:
        store.close()
    except Exception:  # the file's tail is lost with the disk space; every chunk marked done is intact
        pass
    if store.format == "hdf5":
        import h5py

        try:
            h5py._objects.nonlocal_close()
        except Exception:
            pass


def progress_of(path: Path, split: str) -> str:
    """' (k of N chunks done)' for a split of the store at `path`, or '' when the store cannot be read now."""
    try:
        with open_store(path) as store:
            done = store.done_mask(split)
        return f" ({int(done.sum())} of {len(done)} chunks done)"
    except Exception:
        return ""


def store_nbytes(layouts: dict[str, SplitLayout], chunk_size: int, patch_dtype: str, num_views: int = 0) -> int:
    """About how many bytes a store's arrays take on disk, with one filesystem block of slack per chunk file; with
    `num_views`, the views of VIEW_SPLITS too."""
    need = 0
    int8 = patch_dtype == "int8"
    for name, layout in layouts.items():
        views = num_views if name in VIEW_SPLITS else 0
        patch_bytes = layout.num_patches * (layout.patch_dim * (1 if int8 else 2) + (2 if int8 else 0))
        files = num_chunks(layout.n, chunk_size) * ((5 if int8 else 4) + ((3 if int8 else 2) if views else 0))
        need += layout.n * ((1 + views) * (2 * layout.cls_dim + patch_bytes) + 8) + files * 4096
    return need


def check_free_space(path: Path, layouts: dict[str, SplitLayout], chunk_size: int, patch_dtype: str,
                     num_views: int = 0) -> None:
    """Refuse, before writing, an extraction whose store would not fit on its filesystem: the bytes its arrays need
    (store_nbytes), for HDF5 plus the room it keeps free to close the file (HDF5_CLOSE_RESERVE, which its writer
    enforces), less what an existing store already holds."""
    need = store_nbytes(layouts, chunk_size, patch_dtype, num_views)
    reserve = HDF5_CLOSE_RESERVE if detect_format(path) == "hdf5" else 0
    held = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else \
        (path.stat().st_size if path.exists() else 0)
    parent = next(p for p in (path, *path.parents) if p.exists())
    free = shutil.disk_usage(parent).free
    if need + reserve - held > free:
        kept = f", of which {format_size(reserve)} HDF5 keeps free to close the file" if reserve else ""
        raise TwinTurboError(f"--out {path.parent}: the store needs about {format_size(need + reserve - held)} more"
                             f"{kept}, and the filesystem has {format_size(free)} free; free some space or choose "
                             "another --out")


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
