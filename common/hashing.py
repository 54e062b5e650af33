"""The project's JSON and hashes: a canonical JSON text (what fingerprints and run ids hash) and a file's digest.
(Files written whole or not at all: common/atomic.py.)"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text, whatever the dict order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in 4 MiB blocks."""
    digest = hashlib.new(algorithm, usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
