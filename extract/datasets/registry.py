"""The dataset registry: a --dataset spec -> the source that reads it (the package's own sources first, then those of
installed packages), and the readers' public entry points.

A source is one module of this package that defines `DATASET`, a `DatasetSource`: a named dataset (`mnist`) or a
prefix taking an argument (`folder:PATH`, `hf:NAME_OR_DIR[:CONFIG]`), and `read(request) -> DatasetSplit`. Adding a
source is adding a module (digits.py is one to copy). An installed package adds one through an entry point of the group
`twinturbo.datasets` named after it (`[project.entry-points."twinturbo.datasets"] myds = "mypackage.myds"`, a module
defining DATASET, read as `--dataset myds:ARGUMENT`, or `--dataset myds` where its DatasetSource takes no argument).

The package's sources are found when this module is imported, entry points when a spec is first looked up (a broken
installed package is one `error:` line then). A name that is already a source's is refused in one line. The machinery
is common/plugins.py's, shared with the backbone families.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Sequence

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.plugins import built_ins, with_entry_points

from .downloads import DOWNLOADS, fetch_official_files
from .split import SPLITS, DatasetSource, DatasetSplit, SplitRequest

ENTRY_POINT_GROUP = "twinturbo.datasets"
PACKAGE = __name__.rpartition(".")[0]
BUILT_IN_SOURCES: dict[str, DatasetSource] = built_ins(PACKAGE, Path(__file__).parent, "DATASET", "name")
# The named datasets of the package (mnist, fashion-mnist, cifar10, svhn, digits), no argument.
DATASET_NAMES = tuple(name for name, source in BUILT_IN_SOURCES.items() if source.argument is None)


@functools.cache
def sources() -> dict[str, DatasetSource]:
    """Every source by name: the package's, then those of the entry points of ENTRY_POINT_GROUP."""
    return with_entry_points(BUILT_IN_SOURCES, ENTRY_POINT_GROUP, "DATASET", DatasetSource, "name", "dataset")


def _expected() -> str:
    """'mnist, ..., folder:PATH or hf:NAME_OR_DIR[:CONFIG]': every spec a source accepts."""
    specs = [name if source.argument is None else f"{name}:{source.argument}" for name, source in sources().items()]
    return f"{', '.join(specs[:-1])} or {specs[-1]}" if len(specs) > 1 else specs[0]


def lookup(dataset: str) -> tuple[DatasetSource, str]:
    """(the source of the spec `dataset`, its argument: what follows "<name>:", "" for a named dataset); an unknown
    spec or a malformed argument is one line."""
    name, colon, argument = dataset.partition(":")
    source = sources().get(name)
    if source is None or (source.argument is not None) != bool(colon):
        raise TwinTurboError(f"unknown dataset '{dataset}': expected one of {_expected()}")
    if source.check is not None:
        source.check(argument)
    return source, argument


def store_name(dataset: str) -> str:
    """Directory name of the feature store of `dataset`: the dataset name, the folder's basename, or for hf: the
    directory's basename or the hub name's last part (with "-CONFIG"); a source's own rule (DatasetSource)."""
    source, argument = lookup(dataset)
    if source.store_name is not None:
        return source.store_name(argument)
    return source.name if source.argument is None else f"{source.name}-{re.sub(r'[^A-Za-z0-9._-]', '_', argument)}"


def read_dataset_split(dataset: str, split: str, data_root: Path | str = "data", download: bool = False,
                       hf_options=None) -> DatasetSplit:
    """Read one split of `dataset` ("mnist", "cifar10", "svhn", "digits", "folder:PATH" or "hf:NAME_OR_DIR[:CONFIG]")
    from `data_root`.

    With `download=True` the official files of MNIST/CIFAR-10/SVHN are first fetched into `data_root` (kept if
    already present with the right checksum). `hf_options` are the columns and splits of an hf: dataset.
    """
    source, argument = lookup(dataset)
    if split not in SPLITS:
        raise TwinTurboError(f"unknown split '{split}' of {dataset}: expected one of {', '.join(SPLITS)}")
    root = Path(data_root)
    if download and dataset in DOWNLOADS:
        download_dataset(dataset, root, splits=(split,))
    data = source.read(SplitRequest(dataset, argument, split, root, hf_options))
    if not isinstance(data, DatasetSplit):
        raise TwinTurboError(f"--dataset {dataset}: the source of {source.origin} reads a {type(data).__name__}, not a "
                             "twinturbo.extract.datasets.DatasetSplit")
    return data


def download_dataset(name: str, data_root: Path | str = "data", splits: Sequence[str] = SPLITS) -> list[Path]:
    """Fetch the official files of `name` needed for `splits` into `data_root/<name>/`; return their paths
    (downloads.py: a file already there with the right MD5 is kept, a download is kept only once its MD5 matches)."""
    if name not in DOWNLOADS:
        lookup(name)  # unknown names get the usual message
        raise TwinTurboError(f"{name} cannot be downloaded: --download supports {', '.join(DOWNLOADS)}")
    return fetch_official_files(name, Path(data_root), splits)
