"""Image files and bytes read through PIL, as every reader of images needs them: a file's size, its decoded RGB pixels
resized to one size, and whether its header decodes at all (checked for every image before anything is written)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from twinturbo.common.errors import TwinTurboError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def unreadable_images(paths: list[Path]) -> list[tuple[Path, str]]:
    """(path, why) of every file whose image header does not decode (PIL's `verify`: no pixels decoded)."""
    bad = []
    for path in tqdm(paths, desc="checking images", unit="file", leave=False, disable=len(paths) < 2000):
        why = image_problem(path)
        if why is not None:
            bad.append((path, why))
    return bad


def image_problem(source) -> str | None:
    """Why the image header at `source` (a path or a file object) does not decode, or None when it does."""
    from PIL import Image

    try:
        with Image.open(source) as image:
            image.verify()
    except Exception as err:  # PIL raises several types for an empty, truncated or foreign file
        return one_line(err)
    return None


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as err:
        raise TwinTurboError(f"cannot read image {path} ({one_line(err)})") from None


def decode_image(path, size: tuple[int, int], where: str | None = None) -> np.ndarray:
    """The image at `path` (a path or a file object; `where` names it in errors) as RGB uint8 of `size`."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if rgb.size != size:
                rgb = rgb.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(rgb)
    except (OSError, SyntaxError, ValueError) as err:
        why = one_line(err).replace(repr(path), "(its bytes)")  # PIL names a file object by its repr
        raise TwinTurboError(f"cannot read image {where or path} ({why})") from None
