"""Defensive image loading: every unreadable file becomes a DataError that says why.

Example:
    >>> from cir.images import load_image
    >>> load_image("photos/dress.jpg").mode
    'RGB'
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from cir.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 178_956_970
"""Largest image accepted (width x height), Pillow's own decompression-bomb error threshold."""


def load_image(
    image: str | Path | Image.Image, max_pixels: int | None = None, min_side: int | None = None
) -> Image.Image:
    """Open an image file (or take a PIL image) and return it decoded as RGB.

    EXIF rotation is applied, the first frame of animations is used, and transparent pixels are
    laid on white.

    Args:
        image: a file path, a path to an image inside a webdataset or parquet shard
            (``<shard>/<member>``, see :mod:`cir.index.shards`), or a PIL image.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard);
            default :data:`DEFAULT_MAX_PIXELS`.
        min_side: the caller needs only this many pixels on the shorter side (an encoder's
            input size): JPEGs are decoded at a reduced scale and other formats are shrunk by
            an integer factor right after decoding, so a huge photo costs a fraction of the
            memory. The result keeps at least ``min_side`` pixels on its shorter side.

    Raises:
        DataError: the file is missing, empty, not an image, truncated or corrupt, or too large.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(image, Image.Image):
        _check_size(image, limit, "image")
        return _to_rgb(image)
    path = Path(image)
    source = _member(path)
    if source is None:
        _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source or path) as opened:
                _check_size(opened, limit, str(path))
                if min_side:
                    _draft(opened, min_side)
                opened.load()
                return _to_rgb(_reduced(opened, min_side) if min_side else opened)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (no known image format in its contents)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: oversized image ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None


def _member(path: Path) -> io.BytesIO | None:
    """The bytes of an image inside a shard (``part-0.tar/000123.jpg``), or None for a file."""
    if path.exists():
        return None
    from cir.index.shards import read_member_path

    try:
        data = read_member_path(path)
    except OSError as exc:
        raise DataError(f"{path}: shard cannot be read ({exc})") from None
    return None if data is None else io.BytesIO(data)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")


def _check_size(image: Image.Image, limit: int, where: str) -> None:
    width, height = image.size
    if width * height > limit:
        raise DataError(
            f"{where}: oversized image ({width}x{height} = {width * height} pixels, "
            f"limit {limit}; raise max_pixels if the file is trusted)"
        )
    if width == 0 or height == 0:
        raise DataError(f"{where}: image has no pixels ({width}x{height})")


def _draft(image: Image.Image, min_side: int) -> None:
    """Ask the JPEG decoder for the smallest DCT scale keeping ``min_side`` pixels."""
    if image.format == "JPEG":
        width, height = image.size
        scale = max(min_side / min(width, height), 1e-9)
        image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))


_REDUCIBLE = ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F")


def _reduced(image: Image.Image, min_side: int) -> Image.Image:
    """``image`` shrunk by the largest integer factor that keeps ``min_side`` pixels."""
    factor = min(image.size) // min_side
    if factor < 2 or image.mode not in _REDUCIBLE:
        return image
    return image.reduce(factor)


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image) or image
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "F"):
        gray = image.convert("F")
        high = gray.getextrema()[1]
        scale = 255.0 / high if high > 255 else 1.0
        image = gray.point(lambda v: v * scale).convert("L")
    return image.convert("RGB")
