"""Image helpers for backends: bounded size, data URLs, digests, loading errors."""

import base64
import io

import pytest
from PIL import Image

from cir.errors import DataError
from cir.llm import ChatMessage
from cir.llm.images import bound_size, image_digest, to_data_url


def decode(url):
    header, payload = url.split(",", 1)
    return header, Image.open(io.BytesIO(base64.b64decode(payload)))


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [((2000, 1000), 512, (512, 256)), ((300, 900), 300, (100, 300)), ((64, 48), 512, (64, 48))],
)
def test_bound_size_keeps_aspect_and_never_upscales(size, max_side, expected):
    assert bound_size(Image.new("RGB", size), max_side).size == expected


def test_bound_size_none_keeps_the_image():
    image = Image.new("RGB", (5000, 10))
    assert bound_size(image, None) is image


def test_data_url_is_bounded_and_decodes():
    header, image = decode(to_data_url(Image.new("RGB", (1600, 1200), (10, 200, 30)), 256))
    assert header == "data:image/jpeg;base64"
    assert image.size == (256, 192)
    r, g, b = image.getpixel((10, 10))
    assert g > 180 and r < 40 and b < 60


def test_png_data_url_is_lossless_and_rgb():
    src = Image.new("RGBA", (7, 5), (1, 2, 3, 255))
    src.putpixel((0, 0), (0, 0, 0, 0))  # transparent: laid on white
    header, image = decode(to_data_url(src, None, fmt="png"))
    assert header == "data:image/png;base64"
    assert image.mode == "RGB" and image.getpixel((3, 3)) == (1, 2, 3)
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError, match="jpeg, png, webp"):
        to_data_url(Image.new("RGB", (4, 4)), fmt="gif")


def test_digest_follows_pixels():
    a = Image.new("RGB", (8, 8), (1, 2, 3))
    assert image_digest(a) == image_digest(a.copy())
    assert image_digest(a) != image_digest(Image.new("RGB", (8, 8), (1, 2, 4)))
    assert image_digest(a) != image_digest(Image.new("RGB", (4, 16), (1, 2, 3)))


def test_message_image_paths_are_loaded_or_refused_clearly(tmp_path):
    good = tmp_path / "g.png"
    Image.new("L", (3, 3)).save(good)
    assert ChatMessage("user", "x", (good,)).images[0].mode == "RGB"
    with pytest.raises(DataError, match=r"missing\.jpg: no such file"):
        ChatMessage("user", "x", (tmp_path / "missing.jpg",))
