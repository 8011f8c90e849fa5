"""Images for language backends: bound the resolution, encode as base64 data URLs, digest."""

from __future__ import annotations

import base64
import hashlib
import io

from PIL import Image

from cir.images import load_image

FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def bound_size(image: Image.Image, max_side: int | None) -> Image.Image:
    """The image scaled down (aspect kept) so its longer side is at most ``max_side``.

    Smaller images and ``max_side=None`` return the image unchanged; never upscales.

    Example:
        >>> bound_size(Image.new("RGB", (2000, 1000)), 512).size
        (512, 256)
    """
    if max_side is None or max(image.size) <= max_side:
        return image
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def encode_image(image: Image.Image, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """The image's bytes in ``fmt`` (``jpeg``, ``png`` or ``webp``), as RGB."""
    if fmt not in FORMATS:
        raise ValueError(f"image format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    buffer = io.BytesIO()
    rgb = image if image.mode == "RGB" else load_image(image)  # alpha laid on white
    rgb.save(buffer, format=FORMATS[fmt], quality=quality)
    return buffer.getvalue()


def to_data_url(
    image: Image.Image, max_side: int | None = 1024, fmt: str = "jpeg", quality: int = 90
) -> str:
    """A ``data:image/...;base64,...`` URL of the image, bounded to ``max_side`` pixels.

    Example:
        >>> to_data_url(Image.new("RGB", (8, 8))).startswith("data:image/jpeg;base64,")
        True
    """
    payload = base64.b64encode(encode_image(bound_size(image, max_side), fmt, quality))
    return f"data:image/{fmt};base64,{payload.decode('ascii')}"


def image_digest(image: Image.Image) -> str:
    """sha256 of the decoded pixels, size and mode: the same picture gives the same digest."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
