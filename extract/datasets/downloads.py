"""The official files of MNIST, Fashion-MNIST, CIFAR-10 and SVHN: where to fetch them and their MD5 (torchvision's
values; for Fashion-MNIST those of its publisher's README), each streamed into a temporary file of its own and kept
only once its MD5 matches."""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from twinturbo.common.atomic import temporary_name
from twinturbo.common.errors import TwinTurboError, one_line
from twinturbo.common.hashing import file_digest

from .cifar10 import CIFAR10_ARCHIVE


@dataclass(frozen=True)
class Download:
    """One official file: where it goes under `data_root/<dataset>/`, the URLs to try in order, its MD5."""

    filename: str
    urls: tuple[str, ...]
    md5: str
    splits: tuple[str, ...]


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
# MD5 values as published with torchvision's MNIST, CIFAR10 and SVHN datasets.
DOWNLOADS: dict[str, tuple[Download, ...]] = {
    "mnist": tuple(
        Download(name, tuple(m + name for m in _MNIST_MIRRORS), md5, (split,))
        for name, md5, split in (
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "train"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "train"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "test"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "test"),
        )
    ),
    # URLs and MD5s of the .gz files as given in zalandoresearch/fashion-mnist's README.
    "fashion-mnist": tuple(
        Download(name, ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" + name,), md5, (split,))
        for name, md5, split in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "train"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "train"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "test"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "test"),
        )
    ),
    "cifar10": (
        Download(CIFAR10_ARCHIVE, ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                 "c58f30108f718f92721af3b95e74349a", ("train", "test")),
    ),
    "svhn": (
        Download("train_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
                 "e26dedcc434d2e4c54c9b2d4a06d8373", ("train",)),
        Download("test_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
                 "eb5a983be6a315427106f1b164d9cef3", ("test",)),
    ),
}
DOWNLOAD_TIMEOUT_S = 30.0


def fetch_official_files(name: str, data_root: Path, splits: Sequence[str]) -> list[Path]:
    """Fetch the official files of `name` (a key of DOWNLOADS) needed for `splits` into `data_root/<name>/`; return
    their paths (registry.download_dataset, which says what cannot be downloaded).

    A file already there with the right MD5 is kept. Each download streams into a hidden temporary file of its own
    (common/atomic.py) and is renamed only once its MD5 matches, so an interrupted or corrupted download never looks
    like a finished file.
    """
    directory = Path(data_root) / name
    paths = []
    for item in DOWNLOADS[name]:
        if not set(item.splits) & set(splits):
            continue
        path = directory / item.filename
        if not (path.is_file() and file_digest(path, "md5") == item.md5):
            directory.mkdir(parents=True, exist_ok=True)
            _fetch(name, item, path)
        paths.append(path)
    return paths


def _fetch(name: str, item: Download, path: Path) -> None:
    """Try each URL of `item` in turn; keep the first download whose MD5 matches."""
    part = temporary_name(path)  # unique to this writer: two downloads of one file never share it
    failures = []
    for url in item.urls:
        try:
            md5 = _stream_to(url, part, item.filename)
        except OSError as err:  # URLError, HTTPError, timeouts and refused connections are all OSErrors
            part.unlink(missing_ok=True)
            if isinstance(err, urllib.error.HTTPError):
                err.close()  # it holds the response's socket
                reason: object = err
            else:
                reason = getattr(err, "reason", err)
            failures.append(f"{url}: {one_line(reason)}")
            continue
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        if md5 == item.md5:
            os.replace(part, path)
            return
        part.unlink()
        failures.append(f"{url}: checksum mismatch (md5 {md5}, expected {item.md5})")
    raise TwinTurboError(
        f"{name}: could not download {item.filename} ({'; '.join(failures)}); without network, place the file at {path}"
    )


def _stream_to(url: str, part: Path, name: str) -> str:
    """Stream `url` into `part` with a progress bar named `name`; return the MD5 of what was written."""
    md5 = hashlib.md5(usedforsecurity=False)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out:
        total = response.headers.get("Content-Length")
        with tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=name) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
                bar.update(len(chunk))
    return md5.hexdigest()
