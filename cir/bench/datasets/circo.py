"""CIRCO (Baldrati et al., "Zero-Shot Composed Image Retrieval with Textual Inversion", ICCV 2023).

Queries come from ``annotations/{val,test}.json``; the gallery is the whole COCO 2017 unlabeled
set listed in ``COCO2017_unlabeled/annotations/image_info_unlabeled2017.json``. Several ground
truths per query (``gt_img_ids``); the reference is not removed from the ranking.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from cir.bench.datasets.base import BenchDataset, Part, Protocol, check_entry, tree
from cir.errors import DataError
from cir.types import Query

SEMANTIC_ASPECTS = (
    "cardinality",
    "addition",
    "negation",
    "direct_addressing",
    "compare_change",
    "comparative_statement",
    "statement_with_conjunction",
    "spatial_relations_background",
    "viewpoint",
)


_ID = (int, str)
_QUERY_FIELDS = {"id": _ID, "reference_img_id": _ID, "relative_caption": str, "shared_concept": str}
_VAL_FIELDS = {"target_img_id": _ID, "gt_img_ids": list}


class CIRCO(BenchDataset):
    """Reader of the official CIRCO layout.

    Query ids are the annotation ``id`` as a string; gallery ids are COCO image ids as strings.
    ``extras`` hold ``relative_caption``, ``shared_concept``, and for ``val`` also ``target_id``
    (the image the caption was written for), ``gt_ids`` and ``semantic_aspects``.

    Example:
        >>> ds = CIRCO("/data/CIRCO", text_rule="concept_caption")
        >>> ds.queries("val")[0].text
        'a girl with a traditional Chinese umbrella that shows two people and ...'
    """

    name: ClassVar[str] = "circo"
    text_rules: ClassVar[dict[str, str]] = {
        "caption": "the relative caption as written (the official protocol)",
        "concept_caption": "'<shared concept> that <relative caption>'",
    }
    default_text_rule: ClassVar[str] = "caption"
    protocol: ClassVar[Protocol] = Protocol(exclude_reference=False, k=50)

    @property
    def image_info_file(self) -> Path:
        return (
            self.data_root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
        )

    def annotation_file(self, split: str) -> Path:
        return self.data_root / "annotations" / f"{self.check_split(split)}.json"

    def annotation_files(self, split: str) -> list[Path]:
        return [self.annotation_file(split), self.image_info_file]

    def queries(self, split: str) -> list[Query]:
        path = self.annotation_file(split)
        records = self.records(path, _QUERY_FIELDS)
        for n, r in enumerate(records):
            if "gt_img_ids" in r:
                check_entry(self.name, path, n, r, _VAL_FIELDS)
        return [self._query(r) for r in records]

    def _query(self, r: dict) -> Query:
        extras = {"relative_caption": r["relative_caption"], "shared_concept": r["shared_concept"]}
        if "gt_img_ids" in r:
            extras["target_id"] = str(r["target_img_id"])
            extras["gt_ids"] = [str(i) for i in r["gt_img_ids"]]
            extras["semantic_aspects"] = list(r.get("semantic_aspects", []))
        return Query(
            text=self._text(r),
            reference_id=str(r["reference_img_id"]),
            id=str(r["id"]),
            extras=extras,
        )

    def _text(self, r: dict) -> str:
        caption = r["relative_caption"].strip()
        if self.text_rule == "concept_caption":
            return f"{r['shared_concept'].strip()} that {caption}"
        return caption

    def gallery(self) -> dict[str, Path]:
        """COCO image id → path for every image of the unlabeled set (val and test share it)."""
        info = self.read_json(self.image_info_file)
        images = info.get("images") if isinstance(info, dict) else None
        if not isinstance(images, list):
            raise DataError(f"circo: {self.image_info_file} has no 'images' list")
        for n, im in enumerate(images):
            check_entry(self.name, self.image_info_file, n, im, {"id": _ID, "file_name": str})
        folder = self.image_root / "COCO2017_unlabeled" / "unlabeled2017"
        return {str(im["id"]): folder / im["file_name"] for im in images}

    def parts(self, split: str) -> list[Part]:
        return [Part("", self.queries(split), self.gallery())]

    def expected_tree(self) -> str:
        return tree(
            [
                (0, "<data-root>/"),
                (1, "annotations/"),
                (2, "val.json"),
                (2, "test.json"),
                (1, "COCO2017_unlabeled/"),
                (2, "annotations/"),
                (3, "image_info_unlabeled2017.json"),
                (2, "unlabeled2017/"),
                (3, "000000000008.jpg  (one file per entry of image_info_unlabeled2017.json)"),
            ]
        )
