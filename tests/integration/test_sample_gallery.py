"""The sample gallery: real photos copied from installed packages."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image

from cir import sample_gallery
from cir.errors import DataError
from cir.sample_gallery import SAMPLE_QUERIES, SamplePhoto, gather_sample_photos


def test_gathers_at_least_eight_distinct_colour_photos(tmp_path):
    photos = gather_sample_photos(tmp_path / "gallery")
    assert len(photos) >= 8
    assert len({p.name for p in photos}) == len(photos)
    sizes = set()
    for path in photos:
        assert path.parent == tmp_path / "gallery" and path.suffix in (".jpg", ".png")
        with Image.open(path) as image:
            image.load()
            assert image.mode in ("RGB", "RGBA") and min(image.size) >= 128
            sizes.add((image.size, image.getpixel((image.width // 2, image.height // 2))))
    assert len(sizes) == len(photos)  # really different pictures, not copies of one


def test_photos_are_copied_byte_for_byte(tmp_path):
    photos = gather_sample_photos(tmp_path, limit=3)
    assert len(photos) == 3
    first = sample_gallery.SAMPLE_PHOTOS[0]
    source = sample_gallery._package_dir(first.package) / first.relative_path
    if source.is_file():
        assert photos[0].read_bytes() == source.read_bytes()


def test_sample_queries_name_gathered_photos(tmp_path):
    names = {p.name for p in gather_sample_photos(tmp_path)}
    assert len(SAMPLE_QUERIES) >= 3
    for reference, text in SAMPLE_QUERIES:
        assert reference in names and len(text.split()) >= 4


def test_unavailable_photos_are_skipped_with_a_note(tmp_path, monkeypatch, caplog):
    fake = (
        SamplePhoto("ghost", "skimage", "data/no_such_photo.png"),
        SamplePhoto("absent", "no_such_package_for_cir", "x.jpg"),
        *sample_gallery.SAMPLE_PHOTOS[:2],
    )
    monkeypatch.setattr(sample_gallery, "SAMPLE_PHOTOS", fake)
    monkeypatch.setitem(sample_gallery.PACKAGES, "no_such_package_for_cir", "no-such-package")
    with caplog.at_level(logging.INFO, logger="cir.sample_gallery"):
        photos = gather_sample_photos(tmp_path)
    assert [p.stem for p in photos] == [fake[2].name, fake[3].name]
    notes = caplog.text
    assert "ghost" in notes and "absent" in notes and "no-such-package is not installed" in notes


def test_photos_missing_from_the_package_are_asked_of_scikit_image(tmp_path, caplog):
    fetched = SamplePhoto("cat_again", "skimage", "data/not_shipped.png", "chelsea")
    path = sample_gallery._copy_photo(fetched, tmp_path)
    assert path == tmp_path / "cat_again.png"
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (451, 300)
    # lily is not in the wheel and needs a download: offline it is skipped with a note
    remote = SamplePhoto("lily", "skimage", "data/lily.tif", "lily")
    with caplog.at_level(logging.WARNING, logger="cir.sample_gallery"):
        result = sample_gallery._copy_photo(remote, tmp_path)
    if result is None:
        assert "could not provide it" in caplog.text
    else:  # a machine with network access or a warm scikit-image cache
        assert result.is_file()


def test_no_photo_at_all_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(
        sample_gallery, "SAMPLE_PHOTOS", (SamplePhoto("ghost", "skimage", "data/none.png"),)
    )
    with pytest.raises(DataError, match="scikit-image") as err:
        gather_sample_photos(tmp_path)
    assert "scikit-learn" in str(err.value) and "gradio" in str(err.value)
    with pytest.raises(DataError, match="positive"):
        gather_sample_photos(Path(tmp_path), limit=0)
