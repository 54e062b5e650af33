"""Files written whole or not at all: every writer goes through a temporary file of its own in the target's
directory, fsyncs it and renames it over the target (`os.replace`, atomic on one filesystem).

The temporary name is unique to its writer (`.<name>.<pid>.<random>.tmp`, created with O_EXCL), so two processes
writing the same file at the same instant (two tt-sweep commands started together on one new --out) each rename their
own complete file and the last one wins; a shared `<name>.tmp` made the second rename find the first writer's file
gone. A writer that fails or is interrupted removes its temporary file; one killed outright leaves a hidden `.tmp`
that no reader opens.
"""
from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def temporary_name(path: Path) -> Path:
    """A hidden sibling of `path` that no other writer uses: the pid and 8 random hex digits."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new, empty temporary path beside `path` to write to (by name: torch.save, savefig); on a clean exit
    fsync it and rename it over `path`, on an exception remove it. Permissions follow the umask, as `open` gives."""
    path = Path(path)
    tmp = temporary_name(path)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """`open(path, mode)` for writing, through `atomic_path`: readers see the old file or the whole new one."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`Path.write_text`, whole or not at all."""
    with atomic_open(path) as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """`data` as indented JSON with sorted keys and a final newline, whole or not at all."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_figure(figure, path: str | os.PathLike, dpi: int) -> None:
    """A matplotlib figure saved whole or not at all, in the format its suffix names (.png, .pdf, .svg)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
