"""Features that carry nothing: how many of a split's CLS vectors and patch tokens are constant.

A backbone fed images far below the size it was trained for can return the same vector for every input: through
EfficientNet-Lite0 at 32 px, 1052 of scikit-learn's 1257 train digits get an all-zero CLS vector (at 64 px, none),
and a head trained on them scores chance with no word why. So tt-extract counts, per split and per array (`cls`,
`patches`, and with views `views_cls`, `views_patches`), the vectors whose elements are all equal (all zero is the
common case), records the counts in the store's attributes (`liveness`) and warns in one line per split where more
than DEAD_SHARE of the vectors of an array are constant; `tt-extract --verify` recounts them from the chunks it
reads, and tt-train / tt-sweep repeat the recorded warning.

The threshold is ours: 1% of constant vectors cannot come from a healthy backbone on natural images (a constant
vector means the image's content did not reach the output at all), yet a dataset may hold a few blank images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEAD_SHARE = 0.01  # warn when more than this share of an array's vectors are constant (ours, see above)
ATTR = "liveness"  # the store attribute: {split: {array: [constant vectors, vectors]}}
ARRAYS = {"cls": "CLS vectors", "patches": "patch tokens", "views_cls": "CLS vectors of the views",
          "views_patches": "patch tokens of the views"}


def constant_vectors(values: np.ndarray) -> int:
    """How many vectors along the last axis of `values` have all their elements equal (any stored dtype)."""
    flat = values.reshape(-1, values.shape[-1])
    return int(np.count_nonzero((flat == flat[:, :1]).all(axis=1)))


@dataclass
class Liveness:
    """Per array of one split: (constant vectors, vectors) counted so far."""

    split: str
    counts: dict[str, list[int]] = field(default_factory=dict)

    def add(self, array: str, values: np.ndarray) -> None:
        """Count the vectors of some rows of `array` (as stored: float16, or int8 patch tokens, whose per-token scale
        does not change whether a token is constant)."""
        constant, total = self.counts.setdefault(array, [0, 0])
        self.counts[array] = [constant + constant_vectors(values), total + values.size // values.shape[-1]]

    def warnings(self, backbone: str, resolution: int) -> list[str]:
        """One `warning:` line per array above DEAD_SHARE: the split, the count and the likely cause."""
        lines = []
        for array, (constant, total) in self.counts.items():
            if total and constant > DEAD_SHARE * total:
                lines.append(f"warning: {self.split}: {constant} of {total} {ARRAYS.get(array, array)} "
                             f"({100 * constant / total:.1f}%) are constant (all elements equal): the backbone gave "
                             f"them no signal; the likely cause is --resolution {resolution}, too small for "
                             f"{backbone}: extract at a larger --resolution")
        return lines

    def line(self) -> str:
        """The counts as tt-extract --verify lists them."""
        return "    constant vectors: " + ", ".join(f"{ARRAYS.get(array, array)} {constant} of {total}"
                                                   for array, (constant, total) in self.counts.items())


def measure_split(reader, progress: bool = False) -> Liveness:
    """Count the constant vectors of every token array of one split (a common.store.SplitReader), chunk by chunk."""
    from tqdm.auto import tqdm

    found = Liveness(reader.name)
    arrays = ("cls", "patches") + (("views_cls", "views_patches") if reader.num_views else ())
    with tqdm(total=reader.n, unit="sample", desc=f"check {reader.name}", disable=not progress, leave=False) as bar:
        for start, stop in reader.iter_chunks(chunks_per_read=8):
            for array in arrays:
                found.add(array, reader.read_checked(array, start, stop))
            bar.update(stop - start)
    return found


def recorded(attrs: dict) -> list[Liveness]:
    """The counts a store's attributes hold (none for a store written before tt-extract counted them)."""
    return [Liveness(split, {array: list(pair) for array, pair in counts.items()})
            for split, counts in (attrs.get(ATTR) or {}).items()]


def record(store, progress: bool = False) -> list[Liveness]:
    """Count every split of a complete, writable store and record the counts in its attributes (kept when already
    there: a store is counted once, when its extraction completes)."""
    found = recorded(store.attrs)
    if {entry.split for entry in found} != set(store.splits):
        found = [measure_split(store.split(name), progress) for name in store.splits]
        store.set_attrs({ATTR: {entry.split: entry.counts for entry in found}})
    return found


def recorded_warnings(attrs: dict) -> list[str]:
    """The warnings of the counts a store records (what tt-train and tt-sweep repeat before training on it)."""
    return [line for entry in recorded(attrs)
            for line in entry.warnings(str(attrs.get("backbone")), int(attrs.get("resolution") or 0))]
