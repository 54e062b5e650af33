"""What `tt-extract` is asked to do: ExtractConfig, whose fields carry each option's flag, default and help text
(extract/cli.py builds the options from them), their checks, and where the store goes."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.slurm import SlurmOptions
from twinturbo.common.store import FORMATS, PATCH_DTYPES
from twinturbo.extract.backbones import BACKBONE_SPECS, DEFAULT_BACKBONE
from twinturbo.extract.datasets import HF_PREFIX, HFDatasetOptions, store_name
from twinturbo.extract.views import ViewSpec, parse_views

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
                           "a local data dir) | NAME[:ARGUMENT] of an installed package (entry point group "
                           "twinturbo.datasets)", kind=str, shown="required")
    out: Path = _option(None, "--out", "Directory receiving the store <out>/<dataset>[.h5].", kind=Path,
                        shown="required")
    backbone: str = _option(DEFAULT_BACKBONE, "--backbone", BACKBONE_SPECS + ", PREFIX:... of an installed package "
                            "(entry point group twinturbo.backbones)")
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
