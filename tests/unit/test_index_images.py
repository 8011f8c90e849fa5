"""cir.images.load_image: every kind of unreadable file is a DataError with its reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cir.errors import DataError
from cir.images import load_image


def _jpeg_bytes(size: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_good_jpeg_decodes_to_rgb(tmp_path):
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg_bytes())
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (64, 64)
    assert load_image(str(path)).tobytes() == im.tobytes()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("truncated.jpg", lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated"),
        ("broken.jpg", lambda: _jpeg_bytes()[:20] + b"\0" * 300, "not an image"),
        ("zero.jpg", lambda: b"", "empty file"),
        ("text.png", lambda: b"this is not a picture\n", "not an image"),
    ],
)
def test_bad_files_raise_data_error_with_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(DataError, match=reason) as err:
        load_image(path)
    assert name in str(err.value)


def test_decompression_bomb_limit_is_a_parameter(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200), "red").save(path)
    with pytest.raises(DataError, match=r"oversized image \(300x200 = 60000 pixels, limit 50000"):
        load_image(path, max_pixels=50_000)
    assert load_image(path, max_pixels=60_000).size == (300, 200)
    with pytest.raises(DataError, match="oversized"):
        load_image(Image.new("RGB", (300, 200)), max_pixels=100)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_image(tmp_path / "absent.jpg")
    with pytest.raises(DataError, match="not a file"):
        load_image(tmp_path)


def test_modes_become_rgb_with_transparency_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    gray = Image.new("L", (4, 4), 77)
    assert load_image(gray).getpixel((1, 1)) == (77, 77, 77)
    deep = Image.fromarray((np.arange(16).reshape(4, 4) * 4000).astype(np.uint16))
    out = load_image(deep)
    assert out.mode == "RGB" and out.getextrema()[0] == (0, 255)


def test_exif_rotation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "green")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert load_image(path).getpixel((0, 0))[0] > 200
