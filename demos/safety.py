"""The demo's guards: uploads decoded defensively, gallery files only from the index's folder,
secrets kept out of the page and the logs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from PIL import Image

from cir.errors import DataError
from cir.images import load_image

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
MAX_REFERENCE_SIDE = 1024
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "auth"}
_MIN_SECRET_LEN = 8


def decode_upload(
    path: str | Path,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_UPLOAD_PIXELS,
    max_side: int = MAX_REFERENCE_SIDE,
) -> Image.Image:
    """Decode an uploaded reference image, refusing anything that is not a plain, sane image.

    The file size is checked before reading, the format and pixel count from the header before
    decoding (so a decompression bomb is never expanded), and the decoded image is shrunk so
    its longer side is at most ``max_side`` (models never need more).

    Raises:
        DataError: too large, not an image, an unsupported format, or corrupt.
    """
    path = Path(path)
    size = path.stat().st_size if path.is_file() else 0
    if size > max_bytes:
        raise DataError(
            f"the uploaded file is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB"
        )
    kind = _format_of(path)
    if kind not in UPLOAD_FORMATS:
        raise DataError(
            f"the upload is {'not an image' if kind is None else f'a {kind} file'}; "
            f"upload one of: {', '.join(UPLOAD_FORMATS)}"
        )
    try:
        image = load_image(path, max_pixels=max_pixels)
    except DataError as exc:
        raise DataError(
            f"the uploaded image cannot be used: {_strip_path(str(exc), path)}"
        ) from None
    image.thumbnail((max_side, max_side))
    return image


def _format_of(path: Path) -> str | None:
    try:
        with Image.open(path) as opened:
            return opened.format
    except Exception:  # any decoder complaint means "not an image we accept"
        return None


def _strip_path(message: str, path: Path) -> str:
    """Server-side temporary paths mean nothing to the person who uploaded the file."""
    return message.replace(f"{path}: ", "").replace(str(path), "the upload")


def gallery_image(index: Any, image_id: str) -> Path | None:
    """The file of gallery image ``image_id`` if it lies inside the index's own folder.

    Ids come from rankings, never straight from the browser, but the check holds either way:
    the path is resolved (symlinks and ``..`` included) and must stay under ``index.root``.
    """
    root = index.root
    if root is None or not index.has(image_id):
        return None
    path = index.path(image_id)
    if path is None:
        return None
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_file() or not resolved.is_relative_to(root.resolve()):
        return None
    return resolved


def secret_values() -> list[str]:
    """Values of environment variables whose names look like they hold secrets."""
    return [
        value
        for name, value in os.environ.items()
        if _looks_secret(name) and len(value) >= _MIN_SECRET_LEN
    ]


def redact_secrets(text: str) -> str:
    """``text`` with every secret environment value replaced by ``***``."""
    for value in sorted(secret_values(), key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def redact_config(value: Any) -> Any:
    """A copy of a pipeline dict with secret-looking parameters masked.

    Parameters naming an environment variable (``api_key_env``) are kept: they hold a name,
    not the secret itself.
    """
    if isinstance(value, dict):
        return {k: "***" if _is_secret_param(k, v) else redact_config(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_config(v) for v in value]
    if isinstance(value, str):
        return redact_secrets(value)
    return value


def _is_secret_param(name: Any, value: Any) -> bool:
    if not isinstance(name, str) or not _looks_secret(name) or value in (None, ""):
        return False
    return not name.lower().endswith("_env")


def _looks_secret(name: str) -> bool:
    """``OPENAI_API_KEY``, ``api_key``, ``HF_TOKEN`` yes; ``max_tokens``, ``key_env`` no."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return bool(words) and words[-1] != "env" and any(w in _SECRET_WORDS for w in words)
