"""hf:NAME_OR_DIR[:CONFIG]: a Hugging Face `datasets` dataset (issue 29), its Image and ClassLabel columns: a
save_to_disk directory, a hub name or a local data directory."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from twinturbo.common.errors import TwinTurboError, import_optional, one_line
from twinturbo.common.hashing import file_digest

from .images import image_problem, image_size
from .split import DatasetSource, DatasetSplit, DecodedOnDemand, resolve_folder

HF_PREFIX = "hf:"


@dataclass(frozen=True)
class HFDatasetOptions:
    """What the command line says about an hf: dataset: its image and label columns (None: found from its features)
    and which of its splits are stored as the store's train and test splits."""

    image_column: str | None = None
    label_column: str | None = None
    train_split: str = "train"
    test_split: str = "test"


def hf_spec(dataset: str) -> tuple[str, str | None]:
    """(NAME_OR_DIR, CONFIG or None) of "hf:NAME_OR_DIR[:CONFIG]": the config follows the last ':' unless the whole
    text names an existing path."""
    text = dataset[len(HF_PREFIX):]
    if not text:
        raise TwinTurboError("dataset 'hf:' needs a name or a directory: hf:NAME_OR_DIR[:CONFIG]")
    if Path(text).expanduser().exists() or ":" not in text:
        return text, None
    source, _, config = text.rpartition(":")
    return source, config or None


def hf_store_name(dataset: str) -> str:
    source, config = hf_spec(dataset)
    name = Path(source.rstrip("/")).name
    if name in ("", ".", ".."):
        name = Path(source).expanduser().resolve().name
    return f"{name}-{config}" if config else name


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by save_to_disk: a DatasetDict (dataset_dict.json) or one Dataset (state.json)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _open_hf_dataset(dataset: str, root: Path):
    """The DatasetDict of an hf: dataset: load_from_disk for a save_to_disk directory, load_dataset otherwise (hub
    names, local data or script directories)."""
    hf = import_optional("datasets", f"--dataset {dataset}")
    source, config = hf_spec(dataset)
    local = resolve_folder(Path(source).expanduser(), root)
    try:
        if local.is_dir() and _is_saved_dataset(local):
            if config:
                raise TwinTurboError(f"{dataset}: {local} was written by save_to_disk and has no configurations; "
                                     f"drop ':{config}'")
            loaded = hf.load_from_disk(str(local))
        else:
            loaded = hf.load_dataset(str(local) if local.is_dir() else source, config)
    except TwinTurboError:
        raise
    except Exception as err:  # datasets raises many types: not found, offline, unknown config, unreadable files
        raise TwinTurboError(f"{dataset}: could not load it ({type(err).__name__}: {one_line(err)[:200]})") from None
    if not isinstance(loaded, hf.DatasetDict):
        raise TwinTurboError(f"{dataset}: one Dataset without splits; save a DatasetDict({{'train': ..., "
                             "'test': ...}) with save_to_disk")
    return loaded


def _hf_split(splits, dataset: str, split: str, options: HFDatasetOptions):
    """The dataset's split stored as `split` (train or test), or one line saying which splits exist and how to
    choose."""
    name = options.train_split if split == "train" else options.test_split
    if name in splits:
        return name, splits[name]
    other = "test" if split == "train" else "train"
    raise TwinTurboError(f"{dataset} has no split '{name}' (it has {', '.join(splits)}): choose the one stored as "
                         f"{split} with --{split}-split NAME, or extract only {other} with --splits {other}")


def _feature_column(table, wanted: str | None, kind: type, option: str, dataset: str, hint: str) -> str:
    """The column given with `option`, else the only column whose feature is a `kind`; it must be one."""
    features = table.features
    if wanted is not None:
        if wanted not in features:
            raise TwinTurboError(f"{option} {wanted}: {dataset} has no such column (columns: {', '.join(features)})")
        if not isinstance(features[wanted], kind):
            raise TwinTurboError(f"{option} {wanted}: the column of {dataset} is {type(features[wanted]).__name__}, "
                                 f"not {kind.__name__}{hint}")
        return wanted
    found = [name for name, feature in features.items() if isinstance(feature, kind)]
    if len(found) != 1:
        which = f"{len(found)} ({', '.join(found)})" if found else "none"
        raise TwinTurboError(f"{dataset}: {which} of its columns ({', '.join(features)}) are {kind.__name__} "
                             f"features; name one with {option} NAME{hint}")
    return found[0]


def _image_entry_source(entry: dict):
    """What PIL opens for one undecoded Image entry {"bytes", "path"}: the bytes, else the file."""
    return io.BytesIO(entry["bytes"]) if entry.get("bytes") is not None else entry.get("path")


class HFImages(DecodedOnDemand):
    """The images of one split of a Hugging Face dataset, decoded on demand as ImageFiles decodes files: RGB, resized
    bilinearly to `size` (the split's first image) when they differ."""

    def __init__(self, rows, column: str, size: tuple[int, int]):
        self.rows = rows  # the split with its image column undecoded: {"bytes", "path"} per row
        self.column = column
        self.size = size  # (width, height), PIL's order

    def __len__(self) -> int:
        return len(self.rows)

    def _sources(self, index: slice) -> list[tuple[object, str | None]]:
        start = index.indices(len(self.rows))[0]
        return [(_image_entry_source(entry), f"row {start + i}")
                for i, entry in enumerate(self.rows[index][self.column])]


def _unreadable_rows(rows, column: str, block: int = 1024) -> list[tuple[int, str]]:
    """(row index, why) of every image whose header does not decode (PIL's verify, as for image folders)."""
    bad = []
    for start in tqdm(range(0, len(rows), block), desc="checking images", unit="block", leave=False,
                      disable=len(rows) < 2000):
        for i, entry in enumerate(rows[start:start + block][column]):
            source = _image_entry_source(entry)
            why = image_problem(source)
            if why is not None:
                bad.append((start + i, why.replace(repr(source), "(its bytes)")))
    return bad


def _hf_source_files(table, name: str) -> dict[str, str]:
    """The sha256 of each arrow file the split is read from, keyed "<split>/<file>"; a split held only in memory
    records its fingerprint instead."""
    files = [Path(entry["filename"]) for entry in table.cache_files]
    if files:
        return {f"{name}/{path.name}": file_digest(path) for path in files}
    return {f"{name}/fingerprint": str(table._fingerprint)}


def load_hf(dataset: str, split: str, root: Path, options: HFDatasetOptions) -> DatasetSplit:
    """One split of an hf: dataset: the Image column decoded lazily, the ClassLabel column's labels and names (the test
    split must have the train split's names). Every image is checked before anything is written: all bad rows, with
    their split, in one message."""
    hf = import_optional("datasets", f"--dataset {dataset}")
    splits = _open_hf_dataset(dataset, root)
    name, table = _hf_split(splits, dataset, split, options)
    image_column = _feature_column(table, options.image_column, hf.Image, "--image-column", dataset, "")
    label_column = _feature_column(table, options.label_column, hf.ClassLabel, "--label-column", dataset,
                                   " (DatasetDict.class_encode_column(NAME) makes one; save_to_disk it again)")
    class_names = list(table.features[label_column].names)
    train_name = options.train_split
    if split == "test" and train_name in splits and label_column in splits[train_name].features:
        train_names = list(getattr(splits[train_name].features[label_column], "names", []))
        if train_names != class_names:
            raise TwinTurboError(f"{dataset}: split '{name}' has the classes {', '.join(class_names)}, split "
                                 f"'{train_name}' {', '.join(train_names)}: both must have the same ClassLabel")
    labels = np.asarray(table[label_column], dtype=np.int64)
    if labels.size and not -1 <= labels.min() <= labels.max() < len(class_names):
        raise TwinTurboError(f"{dataset}: split '{name}' has labels outside -1..{len(class_names) - 1}")
    rows = table.select_columns([image_column]).cast_column(image_column, hf.Image(decode=False))
    if len(rows) == 0:
        raise TwinTurboError(f"{dataset}: split '{name}' has no rows")
    bad = _unreadable_rows(rows, image_column)
    if bad:
        named = "; ".join(f"row {row} ({why})" for row, why in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise TwinTurboError(f"{dataset}: {len(bad)} of {len(rows)} images of split '{name}' (column {image_column}) "
                             f"cannot be read: {named}{more}; fix or remove them (nothing was written)")
    size = image_size(_image_entry_source(rows[0][image_column]))
    return DatasetSplit(dataset=dataset, split=split, labels=labels, class_names=class_names,
                        source_files=_hf_source_files(table, name), images=HFImages(rows, image_column, size))


DATASET = DatasetSource(
    "hf", lambda request: load_hf(request.dataset, request.split, request.root, request.options or HFDatasetOptions()),
    argument="NAME_OR_DIR[:CONFIG]", store_name=lambda argument: hf_store_name(HF_PREFIX + argument),
    check=lambda argument: hf_spec(HF_PREFIX + argument), order=70)
