"""Image regions as gallery items: GeneCIS's attribute tasks rank object crops, not photos.

A region is a Visual Genome image and an instance box ``[x, y, width, height]``. It is cut out the
way the GeneCIS and CIReVL code does (Vaze et al., CVPR 2023; Karthik et al., ICLR 2024): the
image is read as RGB, the left and top edges move out by ``dilation`` times the box width and
height (clamped at 0), the crop is ``1 + dilation`` box widths wide and box heights tall (clamped
at the image size, so the right and bottom edges stay where the box had them unless the left or
top edge hit the border), and the crop is padded with black to a square, centred. Pillow rounds
the float crop box to whole pixels, as in the authors' code.

Crops are written once as PNG files (lossless, so the pixels are the ones the authors' code
feeds to the encoder) into a folder cir owns, named after the region.

Example:
    >>> region = Region("2373096", (91.0, 7.0, 258.0, 252.0))
    >>> region.id
    '2373096_91_7_258_252'
    >>> crop_region(Image.open("VG_100K/2373096.jpg"), region.box).size
    (428, 428)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cir.errors import DataError
from cir.images import DEFAULT_MAX_PIXELS

#: How far GeneCIS dilates an instance box (a fraction of its width and height).
DILATION = 0.7


@dataclass(frozen=True)
class Region:
    """An instance box of an image, by image id; ``box`` is ``(x, y, width, height)``."""

    image_id: str
    box: tuple[float, float, float, float]

    @property
    def id(self) -> str:
        """``<image id>_<x>_<y>_<width>_<height>``: unique per image and box; a safe file name."""
        return "_".join([self.image_id, *(_number(v) for v in self.box)])


def _number(value: float) -> str:
    return f"{value:.10g}"


def parse_box(value: object) -> tuple[float, float, float, float]:
    """A box ``[x, y, width, height]`` of finite numbers with a positive size, else ValueError."""
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise ValueError(f"a box is [x, y, width, height], got {value!r}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ValueError(f"box values must be numbers, got {value!r}")
    box = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"a box needs finite values and a positive width and height: {value!r}")
    return box  # type: ignore[return-value]


def dilated_box(
    box: Sequence[float], size: tuple[int, int], dilation: float = DILATION
) -> tuple[float, float, float, float]:
    """The crop box ``(left, top, right, bottom)`` of the authors' dilation rule."""
    x, y, w, h = box
    width, height = size
    left, top = max(0.0, x - dilation * w), max(0.0, y - dilation * h)
    right = min(float(width), left + (1 + dilation) * w)
    bottom = min(float(height), top + (1 + dilation) * h)
    return left, top, right, bottom


def pad_to_square(image: Image.Image) -> Image.Image:
    """``image`` centred on a black square whose side is its longer side."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), (0, 0, 0))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def crop_region(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """The dilated, square-padded crop of ``box`` from an RGB ``image``.

    Raises:
        DataError: the dilated box holds no pixel of the image (the box lies outside it).
    """
    left, top, right, bottom = dilated_box(box, image.size)
    if round(right) <= round(left) or round(bottom) <= round(top):
        raise DataError(
            f"box {list(box)} lies outside the {image.size[0]}x{image.size[1]} image "
            "(nothing left to crop)"
        )
    return pad_to_square(image.crop((left, top, right, bottom)))


def open_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as RGB, read as the authors read it (no EXIF rotation)."""
    try:
        with Image.open(path) as opened:
            if opened.size[0] * opened.size[1] > DEFAULT_MAX_PIXELS:
                raise DataError(f"{path}: oversized image {opened.size}")
            return opened.convert("RGB")
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def write_crops(jobs: Iterable[tuple[Region, Path, Path]], progress: bool = True) -> int:
    """Write each missing crop ``(region, source image, crop path)``; returns how many.

    Crops that exist are kept (they are written atomically, so a crop on disk is whole);
    regions whose source image is absent are left without a crop, for the caller's
    missing-image check to report.
    """
    from tqdm.auto import tqdm

    todo = [job for job in jobs if not job[2].is_file() and job[1].is_file()]
    by_source: dict[Path, list[tuple[Region, Path]]] = {}
    for region, source, dest in todo:
        by_source.setdefault(source, []).append((region, dest))
    with tqdm(total=len(todo), unit="crop", desc="crops", disable=not progress or None) as bar:
        for source, wanted in by_source.items():
            image = open_rgb(source)
            for region, dest in wanted:
                _save(_crop_of(image, region, source), dest)
                bar.update(1)
    return len(todo)


def _crop_of(image: Image.Image, region: Region, source: Path) -> Image.Image:
    try:
        return crop_region(image, region.box)
    except DataError as exc:
        raise DataError(f"{source}: region {region.id}: {exc}") from None


def _save(image: Image.Image, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    image.save(tmp, format="PNG")
    os.replace(tmp, dest)
