"""WeiMoCIR's released MLLM captions of the gallery images.

whats2000/WeiMoCIR releases ``cirr_dataset/cirr_labeled_images_cir_cleaned.json`` (CIRR val
and test1 galleries, 4,609 images) and ``fashionIQ_dataset/labeled_images_cir_cleaned.json``
(FashionIQ, 74,357 images): a JSON list of ``{"candidate": image id, "captions": [...]}``.
Most images have 3 captions, some more (up to 213 on CIRR); the reference code uses the first
3 (``captions[k - 1]`` for k = 1..3) and an empty string for a gallery image without an entry
(3 CIRR images: dev-220-2-img1, dev-725-0-img0, test1-360-1-img0).

Example:
    >>> records = read_gallery_captions("cirr_labeled_images_cir_cleaned.json")
    >>> rows, missing = caption_rows(records, gallery_ids, k=3)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cir.errors import DataError
from cir.gallery_captions import read_captions_file
from cir.replay.records import GalleryRecord


def read_gallery_captions(path: str | Path) -> dict[str, GalleryRecord]:
    """Image id → all its captions, from a WeiMoCIR captions file."""
    return {
        image_id: GalleryRecord(image_id, tuple(captions))
        for image_id, captions in read_captions_file(path).items()
    }


def caption_rows(
    records: dict[str, GalleryRecord], gallery_ids: Sequence[str], k: int = 3
) -> tuple[list[list[str]], list[str]]:
    """The first ``k`` captions of each gallery image, in gallery order (the reference way).

    Returns:
        ``(rows, missing)``: one list of ``k`` captions per gallery id (``k`` empty strings for
        an image the file does not cover, as the reference code encodes), and the ids without
        an entry.

    Raises:
        DataError: an image has fewer than ``k`` captions.
    """
    if k < 1:
        raise DataError(f"k must be >= 1, got {k}")
    rows, missing = [], []
    for image_id in gallery_ids:
        record = records.get(image_id)
        if record is None:
            missing.append(image_id)
            rows.append([""] * k)
        elif len(record.captions) < k:
            raise DataError(f"image {image_id!r} has {len(record.captions)} captions; need {k}")
        else:
            rows.append(list(record.captions[:k]))
    return rows, missing
