"""Broken and hostile image files: each is skipped and reported by a build, never a crash, and a
huge image is decoded only as large as the model needs."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from cir.errors import DataError
from cir.images import load_image
from cir.index import GalleryIndex

from .conftest import photo, photos


def _png_bytes(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "blue").save(buf, "JPEG")
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` with almost no data."""
    head = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (  # noqa: E731
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    )
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(b"")) + \
        chunk(b"IEND", b"")  # fmt: skip


BAD_FILES = {
    "empty": (b"", "empty file"),
    "text named .jpg": (b"hello, not an image", "not an image"),
    "truncated jpeg": (_jpeg_bytes()[:200], "truncated"),
    "truncated png": (_png_bytes()[:60], "truncated"),
    "png header only": (_png_bytes()[:33], "truncated"),
    "decompression bomb": (_bomb_png(50_000, 50_000), "oversized"),
    "zero-size image": (_bomb_png(0, 10), "image"),
    "random bytes": (bytes(range(256)) * 8, "not an image"),
}


@pytest.mark.parametrize(("data", "reason"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_image_is_a_clear_error(tmp_path, data, reason):
    (tmp_path / "bad.png").write_bytes(data)
    with pytest.raises(DataError):
        load_image(tmp_path / "bad.png")


def test_a_build_skips_and_reports_every_bad_image(tmp_path, encoder):
    gallery = photos(tmp_path / "g", n=3)
    for n, (data, _) in enumerate(BAD_FILES.values()):
        (gallery / f"bad{n}.png").write_bytes(data)
    idx = GalleryIndex.build(gallery, encoder, out=tmp_path / "i", num_workers=0, progress=False)
    assert len(idx) == 3 and len(idx.skipped) == len(BAD_FILES)
    assert all(entry["reason"] for entry in idx.skipped)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_large_image_is_decoded_only_as_large_as_needed(tmp_path, fmt):
    path = photo(tmp_path / f"big.{fmt.lower()}", size=(4000, 3000), fmt=fmt)
    small = load_image(path, min_side=448)
    assert min(small.size) >= 448 and max(small.size) <= 2000  # not 4000 x 3000
    assert abs(small.size[0] / small.size[1] - 4 / 3) < 0.01  # the aspect ratio is kept
    assert load_image(path).size == (4000, 3000)
