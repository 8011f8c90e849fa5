"""Pictures in the content cache: stored as PNG bytes, exported as base64, checked on import."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cir.cache import CacheEntry, ContentCache, make_key
from cir.errors import DataError


def picture(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def test_an_image_round_trips_pixel_for_pixel_as_png(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path)
    key = cache.put(CacheEntry({"stage": "imagine", "prompt": "a cat"}, picture(), kind="image"))
    again = ContentCache(tmp_path).get(key)
    assert isinstance(again, Image.Image) and again.mode == "RGB" and again.size == (40, 24)
    assert np.array_equal(np.asarray(again), np.asarray(picture()))
    stored = cache._connection().execute("SELECT encoding, value FROM entries").fetchone()
    assert stored[0] == "png" and bytes(stored[1]).startswith(b"\x89PNG")


def test_images_export_as_base64_png_and_import_back(tmp_path: Path) -> None:
    source = ContentCache(tmp_path / "a")
    key = source.put(CacheEntry({"stage": "imagine", "seed": 1}, picture(1), kind="image"))
    out = tmp_path / "images.jsonl"
    assert source.export(out, kind="image") == 1
    line = json.loads(out.read_text().splitlines()[1])
    assert line["encoding"] == "png" and base64.b64decode(line["value"]).startswith(b"\x89PNG")
    target = ContentCache(tmp_path / "b")
    assert target.import_file(out) == 1
    assert np.array_equal(np.asarray(target.get(key)), np.asarray(picture(1)))


def _export_with(tmp_path: Path, value: bytes) -> Path:
    parts = {"stage": "imagine", "n": 1}
    header = {"format": "cir-cache", "version": 1, "entries": 1}
    entry = {
        "key": make_key(parts), "kind": "image", "stage": "imagine", "model": "", "parts": parts,
        "encoding": "png", "value": base64.b64encode(value).decode(), "created": 0.0,
    }  # fmt: skip
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(header) + "\n" + json.dumps(entry) + "\n")
    return path


@pytest.mark.parametrize("kind", ["not a png", "truncated png", "jpeg bytes"])
def test_import_refuses_a_damaged_image_before_writing(tmp_path: Path, kind: str) -> None:
    buffer = io.BytesIO()
    picture().save(buffer, format="JPEG" if kind == "jpeg bytes" else "PNG")
    data = {"not a png": b"hello", "truncated png": buffer.getvalue()[:60]}.get(
        kind, buffer.getvalue()
    )
    cache = ContentCache(tmp_path / "c")
    with pytest.raises(DataError, match="png value does not load"):
        cache.import_file(_export_with(tmp_path, data))
    assert len(cache) == 0
