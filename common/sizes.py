"""Sizes in bytes as users write them (--memory-limit, and the messages that name a size)."""
from __future__ import annotations

import re

from .errors import TwinTurboError

SIZE_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
              "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}


def format_size(nbytes: float) -> str:
    """Bytes as the user would write them back to --memory-limit: 512 -> '512B', 3 * 2**20 -> '3.0MiB'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f}{unit}"
    return f"{int(nbytes)}B"


def parse_size(text: str, option: str = "--memory-limit") -> int:
    """'8G', '512MiB', '1.5 GB', '1000000' -> bytes (binary units: K/M/G/T are powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise TwinTurboError(f"{option} {text}: expected a positive size such as 8G, 512M or 1.5GiB")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


