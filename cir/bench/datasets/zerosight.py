"""ZeroSight (Yang et al., "Never Seen Before: Benchmarking Genuine Zero-Shot Composed Image
Retrieval with Consistent Video-Sourced Datasets", 2026; sotayang/ZeroSight).

Frames of videos published after CLIP's training data. Each query has a reference frame, a
relative caption, several positive targets (``groundtruths``) and hard negatives
(``negativeInstances``); its metrics are mAP@K and PNR-mAP@K (``cir.bench.metrics``).

The dataset is announced, not released: the layout below is the one cir reads, built from what
the authors' code shows (the queries file is a JSON list whose entries hold ``id``,
``groundtruths`` and ``negativeInstances``; the reference and caption field names are taken from
their construction scripts, with the CIRCO-style names also accepted). ``docs/datasets.md`` says
how to point it at the release.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from cir.bench.datasets.base import BenchDataset, Part, Protocol, tree
from cir.bench.datasets.relpaths import relative_path
from cir.errors import DataError
from cir.images import IMAGE_EXTENSIONS
from cir.types import Query

#: Field names accepted for the reference image and the relative caption, in order.
REFERENCE_FIELDS = ("referenceImg", "reference_img", "reference_img_id", "reference_image",
                    "reference")  # fmt: skip
CAPTION_FIELDS = ("relativeCap", "relativeCaption", "relative_caption", "caption")


def image_id(value: Any) -> str:
    """An image named in the queries file as a gallery id: its path below ``images/`` without
    the extension (``"9761.jpg"`` → ``"9761"``; integers as they are).

    Raises:
        ValueError: not an integer or a relative path.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    path = relative_path(value)
    if path.parts and path.parts[0] == "images":
        path = PurePosixPath(*path.parts[1:])
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        path = path.with_suffix("")
    if not path.parts:
        raise ValueError(f"{value!r} names no image")
    return str(path)


class ZeroSight(BenchDataset):
    """Reader of a ZeroSight folder: a queries file and an ``images/`` folder.

    Query ids are the entries' ``id`` as text; gallery ids are image paths below ``images/``
    without their extension. ``extras`` hold ``gt_ids`` and ``negative_ids``. The gallery is every
    image under ``images/`` (any depth); the reference is not removed from the ranking (the
    authors' evaluation scores the ranking as given).

    Args:
        queries_file: the queries file's name under ``data_root`` (the test-set file for the
            supervised setting; default ``queries.json``, all queries).

    Example:
        >>> ds = ZeroSight("/data/zerosight")
        >>> q = ds.queries("val")[0]
        >>> q.extras["gt_ids"][:2], len(q.extras["negative_ids"])
        (['0012/frame_0031', '0012/frame_0032'], 4)
    """

    name: ClassVar[str] = "zerosight"
    splits: ClassVar[tuple[str, ...]] = ("val",)
    text_rules: ClassVar[dict[str, str]] = {"caption": "the relative caption as written"}
    default_text_rule: ClassVar[str] = "caption"
    protocol: ClassVar[Protocol] = Protocol(exclude_reference=False, k=50)

    def __init__(
        self,
        data_root: str | Path,
        image_root: str | Path | None = None,
        text_rule: str | None = None,
        queries_file: str = "queries.json",
    ) -> None:
        super().__init__(data_root, image_root, text_rule)
        self.queries_file = self.data_root / queries_file

    def annotation_files(self, split: str) -> list[Path]:
        self.check_split(split)
        return [self.queries_file]

    def queries(self, split: str) -> list[Query]:
        self.check_split(split)
        records = self.read_json(self.queries_file)
        if not isinstance(records, list):
            raise DataError(f"zerosight: {self.queries_file} must hold a list of queries")
        queries = [self._query(i, r) for i, r in enumerate(records)]
        ids = [q.id for q in queries]
        if len(set(ids)) != len(ids):
            twice = next(i for n, i in enumerate(ids) if i in ids[:n])
            raise DataError(f"zerosight: {self.queries_file}: query id {twice!r} appears twice")
        return queries

    def _query(self, index: int, record: Any) -> Query:
        try:
            qid = record["id"]
            if isinstance(qid, bool) or not isinstance(qid, int | str):
                raise ValueError(f"id must be an integer or text, got {qid!r}")
            truths = _ids(record, "groundtruths")
            if not truths:
                raise ValueError("groundtruths is empty")
            extras = {"gt_ids": truths, "negative_ids": _ids(record, "negativeInstances")}
            return Query(
                text=_field(record, CAPTION_FIELDS).strip(),
                reference_id=image_id(_field(record, REFERENCE_FIELDS)),
                id=str(qid),
                extras=extras,
            )
        except (KeyError, TypeError, ValueError) as exc:
            reason = f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) else str(exc)
            raise DataError(
                f"zerosight: {self.queries_file}: query {index} is malformed ({reason}); every "
                "query needs id, a reference image (" + " or ".join(REFERENCE_FIELDS) + "), a "
                "caption (" + " or ".join(CAPTION_FIELDS) + "), and groundtruths and "
                "negativeInstances as lists of image names below images/"
            ) from None

    def gallery(self, queries: list[Query] | None = None) -> dict[str, Path]:
        """Every image under ``images/`` by id; images the queries name that are absent get
        their expected path (``images/<id>.jpg``), so checks report them."""
        folder = self.image_root / "images"
        found: dict[str, Path] = {}
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                    rel = path.relative_to(folder).with_suffix("").as_posix()
                    found.setdefault(rel, path)
        for q in queries or []:
            for gid in [q.reference_id, *q.extras["gt_ids"], *q.extras["negative_ids"]]:
                found.setdefault(gid, folder / f"{gid}.jpg")
        return found

    def parts(self, split: str) -> list[Part]:
        queries = self.queries(split)
        return [Part("", queries, self.gallery(queries))]

    def expected_tree(self) -> str:
        return tree(
            [
                (0, "<data-root>/"),
                (1, "queries.json  (a list of {id, referenceImg, relativeCap, groundtruths, "
                    "negativeInstances})"),
                (0, "<image-root>/  (defaults to <data-root>)"),
                (1, "images/  (every gallery image, any depth; ids are paths without extension)"),
            ]
        )  # fmt: skip


def _field(record: dict, names: tuple[str, ...]) -> Any:
    for name in names:
        if name in record:
            return record[name]
    raise KeyError(names[0])


def _ids(record: dict, field: str) -> list[str]:
    """The image ids of a list field, as listed (the official AP counts ground truths as
    listed)."""
    values = record[field]
    if not isinstance(values, list):
        raise ValueError(f"{field} must be a list, got {values!r}")
    return [image_id(v) for v in values]
