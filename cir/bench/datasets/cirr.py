"""CIRR (Liu et al., "Image Retrieval on Real-life Images with Pre-trained Vision-and-Language
Models", ICCV 2021), release rc2.

Queries come from ``captions/cap.rc2.<split>.json``; the gallery is every image of
``image_splits/split.rc2.<split>.json``, whose values are image paths relative to the image
root. The official protocol removes the reference from the ranking, and Recall_subset ranks
the same scores restricted to the query's group of six members (minus the reference).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from cir.bench.datasets.base import BenchDataset, Part, Protocol, check_entry, tree
from cir.types import Query

#: The user-facing split names and the rc2 file names behind them.
SPLIT_FILES = {"val": "val", "test": "test1"}
VERSION = "rc2"
_QUERY_FIELDS = {"pairid": (int, str), "reference": str, "caption": str, "img_set": dict}


class CIRR(BenchDataset):
    """Reader of the official CIRR layout.

    Query ids are the ``pairid`` as a string; gallery ids are image names
    (``dev-244-0-img0``). ``extras`` hold ``group_members`` (the six images of the query's
    set, reference included), ``img_set_id``, and for ``val`` ``target_id``
    (``target_hard``) and ``target_soft``.

    Example:
        >>> ds = CIRR("/data/cirr")
        >>> q = ds.queries("val")[0]
        >>> q.id, q.reference_id, q.extras["target_id"]
        ('12060', 'dev-244-0-img0', 'dev-1028-1-img1')
    """

    name: ClassVar[str] = "cirr"
    text_rules: ClassVar[dict[str, str]] = {"caption": "the modification caption as written"}
    default_text_rule: ClassVar[str] = "caption"
    protocol: ClassVar[Protocol] = Protocol(exclude_reference=True, k=50, subset_k=3)

    def captions_file(self, split: str) -> Path:
        return self.data_root / "captions" / f"cap.{VERSION}.{self._file_split(split)}.json"

    def split_file(self, split: str) -> Path:
        return self.data_root / "image_splits" / f"split.{VERSION}.{self._file_split(split)}.json"

    def _file_split(self, split: str) -> str:
        return SPLIT_FILES[self.check_split(split)]

    def annotation_files(self, split: str) -> list[Path]:
        return [self.captions_file(split), self.split_file(split)]

    def queries(self, split: str) -> list[Query]:
        path = self.captions_file(split)
        records = self.records(path, _QUERY_FIELDS)
        for n, r in enumerate(records):
            check_entry(self.name, path, n, r["img_set"], {"id": (int, str), "members": list})
            if "target_hard" in r:
                check_entry(self.name, path, n, r, {"target_hard": str})
        return [self._query(r) for r in records]

    def _query(self, r: dict) -> Query:
        extras = {
            "group_members": list(r["img_set"]["members"]),
            "img_set_id": r["img_set"]["id"],
        }
        if "target_hard" in r:
            extras["target_id"] = r["target_hard"]
            extras["target_soft"] = dict(r.get("target_soft", {}))
        return Query(
            text=r["caption"].strip(),
            reference_id=r["reference"],
            id=str(r["pairid"]),
            extras=extras,
        )

    def gallery_names(self, split: str) -> list[str]:
        """The split's image names (evaluation checks predictions against these)."""
        return list(self.mapping(self.split_file(split), str))

    def gallery(self, split: str) -> dict[str, Path]:
        """Image name → path, resolved under the image root as the split file gives it."""
        mapping = self.mapping(self.split_file(split), str)
        return {name: self.image_root / rel for name, rel in mapping.items()}

    def parts(self, split: str) -> list[Part]:
        return [Part("", self.queries(split), self.gallery(split))]

    def expected_tree(self) -> str:
        return tree(
            [
                (0, "<data-root>/"),
                (1, "captions/"),
                (2, "cap.rc2.val.json"),
                (2, "cap.rc2.test1.json"),
                (1, "image_splits/"),
                (2, "split.rc2.val.json"),
                (2, "split.rc2.test1.json"),
                (0, "<image-root>/  (defaults to <data-root>; paths as the split files give them)"),
                (1, "dev/dev-244-0-img0.png ..."),
                (1, "test1/test1-147-1-img1.png ..."),
            ]
        )
