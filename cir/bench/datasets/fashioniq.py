"""FashionIQ (Wu et al., "Fashion IQ: A New Dataset Towards Retrieving Images by Natural Language
Feedback", CVPR 2021).

Three categories (dress, shirt, toptee), each with ``captions/cap.<category>.<split>.json`` and
``image_splits/split.<category>.<split>.json``; images are ``images/<name>.<ext>``. Each query has
two relative captions; its ``candidate`` is the reference image. The official protocol ranks
the category's gallery (the split file) without removing the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from cir.bench.datasets.base import (
    BenchDataset,
    Part,
    Protocol,
    check_entry,
    images_by_stem,
    tree,
)
from cir.errors import ConfigError, DataError
from cir.types import Query

CATEGORIES = ("dress", "shirt", "toptee")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
_STRIP = ".?, "


def join_captions(captions: Sequence[str], capitalize: bool = False) -> str:
    """Strip ".?, " from both ends of each caption and join them with " and "."""
    parts = [c.strip(_STRIP) for c in captions]
    if capitalize and parts:
        parts[0] = parts[0].capitalize()
    return " and ".join(parts)


class FashionIQ(BenchDataset):
    """Reader of the official FashionIQ layout.

    Query ids are ``<category>/<index in cap.<category>.<split>.json>``; gallery ids are the
    image names (ASINs). ``extras`` hold ``category``, ``captions`` and, for ``val``,
    ``target_id``.

    Args:
        categories: the categories to read (default: all three).

    Example:
        >>> ds = FashionIQ("/data/fashioniq", categories=["dress"])
        >>> ds.queries("val")[0].text
        'is shiny and silver with shorter sleeves and fit and flare'
    """

    name: ClassVar[str] = "fashioniq"
    text_rules: ClassVar[dict[str, str]] = {
        "join": "both captions, stripped of '.?, ' at their ends, joined with ' and '",
        "join_capitalized": "as 'join', first caption capitalised (as CLIP4Cir and SEARLE do)",
        "first": "only the first caption, stripped of '.?, '",
        "concat": "both captions as written, concatenated with nothing between them (SEIZE)",
    }
    default_text_rule: ClassVar[str] = "join"
    protocol: ClassVar[Protocol] = Protocol(exclude_reference=False, k=50)

    def __init__(
        self,
        data_root: str | Path,
        image_root: str | Path | None = None,
        text_rule: str | None = None,
        categories: Sequence[str] | None = None,
    ) -> None:
        super().__init__(data_root, image_root, text_rule)
        self.categories = tuple(categories or CATEGORIES)
        unknown = [c for c in self.categories if c not in CATEGORIES]
        if unknown:
            raise ConfigError(
                f"fashioniq: unknown categories {unknown}; valid: {', '.join(CATEGORIES)}"
            )

    def captions_file(self, category: str, split: str) -> Path:
        return self.data_root / "captions" / f"cap.{category}.{self.check_split(split)}.json"

    def split_file(self, category: str, split: str) -> Path:
        return self.data_root / "image_splits" / f"split.{category}.{self.check_split(split)}.json"

    def annotation_files(self, split: str) -> list[Path]:
        return [f(c, split) for c in self.categories for f in (self.captions_file, self.split_file)]

    def queries(self, split: str) -> list[Query]:
        return [q for c in self.categories for q in self.category_queries(c, split)]

    def category_queries(self, category: str, split: str) -> list[Query]:
        path = self.captions_file(category, split)
        records = self.records(path, {"candidate": str, "captions": list})
        for n, r in enumerate(records):
            if not r["captions"] or not all(isinstance(c, str) for c in r["captions"]):
                raise DataError(
                    f"fashioniq: {path}, entry {n}: 'captions' must be a non-empty list of text"
                )
            if "target" in r:
                check_entry(self.name, path, n, r, {"target": str})
        return [self._query(category, i, r) for i, r in enumerate(records)]

    def _query(self, category: str, index: int, r: dict) -> Query:
        extras = {"category": category, "captions": list(r["captions"])}
        if "target" in r:
            extras["target_id"] = r["target"]
        return Query(
            text=self._text(r["captions"]),
            reference_id=r["candidate"],
            id=f"{category}/{index}",
            extras=extras,
        )

    def _text(self, captions: Sequence[str]) -> str:
        if self.text_rule == "first":
            return captions[0].strip(_STRIP)
        if self.text_rule == "concat":
            return "".join(captions)
        return join_captions(captions, capitalize=self.text_rule == "join_capitalized")

    def gallery_names(self, category: str, split: str) -> list[str]:
        """The category's gallery image names for the split."""
        path = self.split_file(category, split)
        names = self.read_json(path)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"fashioniq: {path} must be a list of image names (text)")
        return names

    def parts(self, split: str) -> list[Part]:
        found = images_by_stem(self.image_root / "images", IMAGE_EXTENSIONS)
        parts = []
        for category in self.categories:
            names = self.gallery_names(category, split)
            gallery = {n: found.get(n, self.image_root / "images" / f"{n}.png") for n in names}
            parts.append(Part(category, self.category_queries(category, split), gallery))
        return parts

    def expected_tree(self) -> str:
        lines = [(0, "<data-root>/"), (1, "captions/")]
        lines += [(2, f"cap.{c}.{s}.json") for c in CATEGORIES for s in self.splits]
        lines += [(1, "image_splits/")]
        lines += [(2, f"split.{c}.{s}.json") for c in CATEGORIES for s in self.splits]
        lines += [
            (0, "<image-root>/  (defaults to <data-root>)"),
            (1, "images/"),
            (2, f"<name>.<{'|'.join(IMAGE_EXTENSIONS)}>  (B0084Y8XIU.png ...)"),
        ]
        return tree(lines)
