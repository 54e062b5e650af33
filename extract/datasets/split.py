"""What every dataset reader returns: a `DatasetSplit`, labels and class names in memory and images read by contiguous
range (an array, or files decoded on demand), with the sha256 of every raw file it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from twinturbo.common.plugins import BUILT_IN

from .images import decode_image

SPLITS = ("train", "test")
DIGIT_CLASSES = [str(d) for d in range(10)]


class DecodedOnDemand:
    """Images decoded only when a slice of them is read, RGB uint8 of one `size` (width, height: PIL's order), so a
    large split never has to fit in memory. A subclass says where its images are (`_sources`) and how many."""

    size: tuple[int, int]

    def __len__(self) -> int:
        raise NotImplementedError

    def _sources(self, index: slice) -> list[tuple[object, str | None]]:
        """(what PIL opens, how an error names it or None for the source itself) of each image of `index`."""
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.size[1], self.size[0], 3)

    def __getitem__(self, index: slice) -> np.ndarray:
        sources = self._sources(index)
        out = np.empty((len(sources), self.size[1], self.size[0], 3), dtype=np.uint8)
        for i, (source, where) in enumerate(sources):
            out[i] = decode_image(source, self.size, where=where)
        return out


class ImageFiles(DecodedOnDemand):
    """Image files decoded on demand, so a large `folder:` dataset never has to fit in memory.

    Every image is converted to RGB and, when its size differs from `size` (the first image of the split),
    resized bilinearly to it: the backbone resizes again anyway, and a batch must be one array.
    """

    def __init__(self, paths: Sequence[Path], size: tuple[int, int]):
        self.paths = list(paths)
        self.size = size  # (width, height), PIL's order

    def __len__(self) -> int:
        return len(self.paths)

    def _sources(self, index: slice) -> list[tuple[object, str | None]]:
        return [(path, None) for path in self.paths[index]]


@dataclass
class DatasetSplit:
    """One split of one dataset: labels and class names in memory, images read by contiguous range.

    `source_files` maps each raw file read to the sha256 of its bytes, so a feature store records exactly which
    files it was made from.
    """

    dataset: str
    split: str
    labels: np.ndarray  # int64 [N]
    class_names: list[str]
    source_files: dict[str, str]
    images: np.ndarray | ImageFiles = field(repr=False)  # uint8 [N, H, W, C] or lazily decoded files

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image `read` returns."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Images start..stop-1 as a fresh, writable uint8 array [B, H, W, C] with C in {1, 3}."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"read({start}, {stop}) outside 0..{len(self)} of {self.dataset}/{self.split}")
        return np.array(self.images[start:stop], dtype=np.uint8, copy=True)


def resolve_folder(folder: Path, root: Path) -> Path:
    """PATH as given (relative to the working directory), else under the data root."""
    if folder.is_dir() or folder.is_absolute() or not (root / folder).is_dir():
        return folder
    return root / folder


@dataclass(frozen=True)
class SplitRequest:
    """What a dataset source is asked to read: one split of the dataset `dataset` (the whole spec, as errors name it,
    e.g. "folder:photos"), where `argument` is what follows "<name>:" ("" for a named dataset), from under `root`
    (--data-root). `options`: what the command line says to this source (hf: its HFDatasetOptions; else None)."""

    dataset: str
    argument: str
    split: str
    root: Path
    options: Any = None


@dataclass(frozen=True)
class DatasetSource:
    """One kind of --dataset spec: a named dataset (`mnist`: `argument` None) or a prefix taking an argument (`folder`
    for folder:PATH: `argument` "PATH" says what follows, in the help and the errors).

    `read(request) -> DatasetSplit` reads one split; `store_name(argument)` names the store's directory (default: the
    name, or "<name>-<argument>" with path separators and other odd characters as "_"); `check(argument)` refuses a
    malformed argument in one line before anything is read; `order` places a built-in source in the errors; `origin`
    is where it came from (this package, or 'entry point mypackage.myds')."""

    name: str
    read: Callable[[SplitRequest], DatasetSplit]
    argument: str | None = None
    store_name: Callable[[str], str] | None = None
    check: Callable[[str], object] | None = None
    order: int = 100
    origin: str = BUILT_IN
