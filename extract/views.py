"""Augmented views for consistency methods (FixMatch, FlexMatch: the paper's refs [12], [13]), extracted once.

`tt-extract --views weak:2,strong:4` stores, for every train image, besides its clean view, that many augmented views
through the same frozen backbone (common/store/: `views_cls`, `views_patches`, format 2). A policy is data: a
`ViewPolicy` of a few numbers, built into a `torchvision.transforms.v2` pipeline by `build_transform`, and recorded
with its parameters in the store's `views` attribute.

- weak (FixMatch, Sohn et al. 2020, section 2.3, "flip-and-shift"): a random translation of up to 12.5% of the side
  (reflect padding, then a random crop back to the image's size) and, where a class survives it, a horizontal flip
  with probability 1/2.
- strong: the weak view, then RandAugment as FixMatch uses it (2 operations per image at a magnitude drawn per image
  uniformly from 1..10, "RandAugment with random magnitude"), then Cutout of a square half the image's side filled
  with grey 127. Ours, where torchvision differs from FixMatch's own code: torchvision's RandAugment always applies
  both operations it picks (its list includes Identity), FixMatch's applies each with probability 1/2; and
  torchvision's RandomErasing keeps the square inside the image, FixMatch's Cutout may cut it at the border.

Flip by dataset (`FLIP_SAFE`, `--view-flip auto`): Fashion-MNIST and CIFAR-10 classes are the same object mirrored
(FixMatch flips CIFAR); digits, MNIST and SVHN are not (a mirrored 2, 3, 4, 5, 7 is no digit, and FixMatch does not
flip SVHN). A `folder:` dataset is flipped: photographs of objects, as ImageNet-style training flips them; pass
`--view-flip no` for text, digits or anything with a handedness.

Randomness: view v of image i is augmented under torch's global generator seeded with `view_seed(store seed, i, v)`
(torchvision's transforms draw from it), restored afterwards. So a view depends on (seed, image, view) only, never
on the batch it is computed in, the process or the order: a resumed, split (`--tasks`, torchrun) or repeated
extraction gives the same images, byte for byte, and the fixed batch grid of extract.py then the same tokens.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from twinturbo.common.errors import TwinTurboError

FLIP_SAFE = {"fashion-mnist": True, "cifar10": True, "mnist": False, "svhn": False, "digits": False}
FLIP_CHOICES = ("auto", "yes", "no")


@dataclass(frozen=True)
class ViewPolicy:
    """One augmentation policy as data: each field a parameter of build_transform's pipeline."""

    translate: float = 0.125  # the largest shift, as a fraction of the image's side (reflect padding + crop)
    flip: bool = False  # a horizontal flip with probability 1/2
    randaugment_ops: int = 0  # RandAugment operations per image (0: none)
    randaugment_max_magnitude: int = 10  # each image's magnitude is drawn uniformly from 1..this, out of 10
    cutout: float = 0.0  # side of the Cutout square as a fraction of the image's side (0: none)
    cutout_fill: int = 127

    def to_dict(self) -> dict:
        return asdict(self)


WEAK = ViewPolicy()
STRONG = ViewPolicy(randaugment_ops=2, cutout=0.5)
POLICIES = {"weak": WEAK, "strong": STRONG}


@dataclass(frozen=True)
class ViewSpec:
    """`--views weak:2,strong:4` read: (name, count, policy) per entry, in order; view indices run through them."""

    entries: tuple[tuple[str, int, ViewPolicy], ...]

    @property
    def count(self) -> int:
        return sum(count for _, count, _ in self.entries)

    def policy_of(self, view: int) -> ViewPolicy:
        """The policy of view index `view` (0 .. count - 1)."""
        for _, count, policy in self.entries:
            if view < count:
                return policy
            view -= count
        raise IndexError(view)

    def to_attrs(self) -> list[dict]:
        """The store's `views` attribute: each entry's name, count and policy parameters."""
        return [{"name": name, "count": count, "policy": policy.to_dict()} for name, count, policy in self.entries]


def flip_for(dataset: str, choice: str) -> bool:
    """Whether the views of `dataset` may be flipped horizontally (`--view-flip`, module docstring)."""
    if choice not in FLIP_CHOICES:
        raise TwinTurboError(f"--view-flip {choice}: expected one of {', '.join(FLIP_CHOICES)}")
    if choice != "auto":
        return choice == "yes"
    return FLIP_SAFE.get(dataset, True)


def parse_views(text: str | None, dataset: str, flip_choice: str = "auto") -> ViewSpec | None:
    """'weak:2,strong:4' -> a ViewSpec with the flip decided for `dataset`; None or '' -> no views."""
    if not text:
        return None
    flip = flip_for(dataset, flip_choice)
    entries, seen = [], set()
    for part in text.split(","):
        name, _, count = part.strip().partition(":")
        if name not in POLICIES:
            raise TwinTurboError(f"--views {text}: unknown policy '{name}', expected {' or '.join(POLICIES)} "
                                 "(e.g. --views weak:2,strong:4)")
        if name in seen:
            raise TwinTurboError(f"--views {text}: '{name}' is named twice")
        try:
            number = int(count)
        except ValueError:
            number = 0
        if number < 1:
            raise TwinTurboError(f"--views {text}: '{part.strip()}' needs a count of views >= 1, e.g. {name}:2")
        seen.add(name)
        entries.append((name, number, replace(POLICIES[name], flip=flip)))
    return ViewSpec(tuple(entries))


def build_transform(policy: ViewPolicy, height: int, width: int):
    """The torchvision.transforms.v2 pipeline of `policy` for images of this size (uint8 [C, H, W] tensors)."""
    from torchvision.transforms import v2

    steps = []
    padding = round(policy.translate * min(height, width))
    if padding:
        steps.append(v2.RandomCrop((height, width), padding=padding, padding_mode="reflect"))
    if policy.flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if policy.randaugment_ops:
        steps.append(RandomMagnitudeRandAugment(policy.randaugment_ops, policy.randaugment_max_magnitude))
    if policy.cutout:
        area = policy.cutout ** 2
        steps.append(v2.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=policy.cutout_fill))
    return v2.Compose(steps)


class RandomMagnitudeRandAugment(torch.nn.Module):
    """torchvision's RandAugment with FixMatch's per-image magnitude: uniform in 1..`max_magnitude` on a 0..10 scale,
    drawn from torch's generator like every other parameter."""

    def __init__(self, num_ops: int, max_magnitude: int):
        super().__init__()
        from torchvision.transforms import v2

        self.by_magnitude = [v2.RandAugment(num_ops=num_ops, magnitude=m, num_magnitude_bins=11)
                             for m in range(max_magnitude + 1)]
        self.max_magnitude = max_magnitude

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        magnitude = int(torch.randint(1, self.max_magnitude + 1, ()))
        return self.by_magnitude[magnitude](image)


def view_seed(store_seed: int, image: int, view: int) -> int:
    """The seed of view `view` of image `image` (its index in the split): a hash, so neighbouring images and views
    get unrelated draws."""
    digest = hashlib.sha256(f"twinturbo-view:{store_seed}:{image}:{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ViewMaker:
    """Augments a batch of uint8 images [B, H, W, C] (as DatasetSplit.read returns them) into its views
    [V, B, H, W, C], each view a function of (store seed, image index, view index) alone."""

    def __init__(self, spec: ViewSpec, store_seed: int):
        self.spec, self.store_seed = spec, store_seed
        self._transforms: dict[tuple, object] = {}

    def _transform(self, policy: ViewPolicy, height: int, width: int):
        key = (policy, height, width)
        if key not in self._transforms:
            self._transforms[key] = build_transform(policy, height, width)
        return self._transforms[key]

    def __call__(self, images: np.ndarray, first_index: int) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # [B, C, H, W]
        height, width = batch.shape[-2:]
        out = np.empty((self.spec.count,) + images.shape, dtype=np.uint8)
        state = torch.get_rng_state()
        try:
            for view in range(self.spec.count):
                transform = self._transform(self.spec.policy_of(view), height, width)
                for row in range(len(batch)):
                    torch.manual_seed(view_seed(self.store_seed, first_index + row, view))
                    out[view, row] = transform(batch[row]).permute(1, 2, 0).numpy()
        finally:
            torch.set_rng_state(state)
        return out
