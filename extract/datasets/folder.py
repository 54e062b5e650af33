"""folder:PATH: an image folder, PATH/train/<class>/*.png and PATH/test/<class>/*.png (as torchvision's ImageFolder)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.hashing import file_digest

from .images import IMAGE_SUFFIXES, image_size, unreadable_images
from .split import DatasetSource, DatasetSplit, ImageFiles, resolve_folder

FOLDER_PREFIX = "folder:"


def _image_files(directory: Path) -> list[Path]:
    """Every image file under `directory`, sub-folders included (as torchvision's ImageFolder takes them), sorted."""
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def _class_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))



def load_folder(dataset: str, folder: Path, split: str) -> DatasetSplit:
    """One sub-folder per class (images in its own sub-folders count for it); class names sorted; the test split uses
    the train split's classes. Every image is checked before anything is written: all bad files in one message."""
    train_dir, split_dir = folder / "train", folder / split
    for directory in dict.fromkeys((train_dir, split_dir)):
        if not directory.is_dir():
            raise TwinTurboError(
                f"{dataset}: expected {directory}/<class>/*.png (one sub-folder per class, {', '.join(IMAGE_SUFFIXES)})"
            )
    class_names = _class_dirs(train_dir)
    if len(class_names) < 2:
        found = f"only {class_names[0]!r}" if class_names else "none"
        raise TwinTurboError(f"{dataset}: {train_dir} holds {found} as class sub-folders: a classifier needs at least "
                             "two classes")
    unknown = sorted(set(_class_dirs(split_dir)) - set(class_names))
    if unknown:
        raise TwinTurboError(
            f"{dataset}: class folder {split_dir / unknown[0]} has no counterpart in {train_dir} "
            f"(classes: {', '.join(class_names)})"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        class_dir = split_dir / name
        files = _image_files(class_dir) if class_dir.is_dir() else []
        if not files and split_dir == train_dir:
            raise TwinTurboError(
                f"{dataset}: class folder {class_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}): every class needs "
                "train images; add some or remove the folder (nothing was written)")
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise TwinTurboError(f"{dataset}: no images ({', '.join(IMAGE_SUFFIXES)}) in {split_dir}/<class>/")
    bad = unreadable_images(paths)
    if bad:
        named = "; ".join(f"{path} ({why})" for path, why in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise TwinTurboError(f"{dataset}: {len(bad)} of {len(paths)} image files in {split_dir} cannot be read: "
                             f"{named}{more}; fix or remove them (nothing was written)")
    size = image_size(paths[0])
    return DatasetSplit(
        dataset=dataset, split=split, labels=np.asarray(labels, dtype=np.int64), class_names=class_names,
        source_files={f"{split}/": manifest_sha256(paths, split_dir)}, images=ImageFiles(paths, size),
    )


def manifest_sha256(paths: list[Path], base: Path) -> str:
    """One sha256 for a whole folder split: over "relative path NUL sha256 of the file" lines, in read order."""
    manifest = hashlib.sha256()
    for path in tqdm(paths, desc=f"hashing {base}", unit="file", leave=False, disable=len(paths) < 1000):
        manifest.update(f"{path.relative_to(base).as_posix()}\0{file_digest(path)}\n".encode())
    return manifest.hexdigest()


def _folder(argument: str) -> Path:
    """The folder of "folder:PATH" (PATH as given); an empty PATH is a user error."""
    if not argument:
        raise TwinTurboError("dataset 'folder:' needs a path: folder:PATH with PATH/train/<class>/*.png")
    return Path(argument).expanduser()


def _store_name(argument: str) -> str:
    """The folder's basename (that of its absolute path for '.' and '..')."""
    folder = _folder(argument)
    name = folder.name
    return name if name not in ("", ".", "..") else folder.resolve().name


DATASET = DatasetSource(
    "folder", lambda request: load_folder(request.dataset, resolve_folder(_folder(request.argument), request.root),
                                          request.split),
    argument="PATH", store_name=_store_name, check=_folder, order=60)
