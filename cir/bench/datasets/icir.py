"""i-CIR (Psomas et al., "Instance-Level Composed Image Retrieval", NeurIPS 2025), v1.0.0.

Two CSV files list ``image path,text,instance`` per row: ``query_files.csv`` (one composed query
per row: an image of the instance and a text) and ``database_files.csv`` (the images of each
instance's database: composed positives under ``database/<instance>/<text>/``, hard negatives
under ``database/<instance>/hn/``). As in the authors' code (billpsomas/icir), a query ranks only
its own instance's database, and a database image is a positive when its instance and its text
are the query's. The query images are not database images: queries give them by path.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

from cir.bench.datasets.base import BenchDataset, Part, Protocol, tree
from cir.bench.datasets.relpaths import from_folder, relative_path
from cir.errors import DataError
from cir.images import IMAGE_EXTENSIONS
from cir.types import Query


@dataclass(frozen=True)
class Row:
    """One CSV row: the image's path under the data root, its text and its instance."""

    path: PurePosixPath
    text: str
    instance: str

    @property
    def database_id(self) -> str:
        """The gallery id of a database image: its path below ``database/``."""
        return str(PurePosixPath(*self.path.parts[1:]))


class ICIR(BenchDataset):
    """Reader of the i-CIR tarball layout (``icir/`` with its two CSV files).

    Query ids are the row numbers of ``query_files.csv`` (``"0"``, data rows counted from 0);
    gallery ids are database paths below ``database/`` (``"tintin/hn/tintin_hn4159.jpg"``).
    ``extras`` hold ``instance`` and ``gt_ids`` (the query's positives, in file order). Each
    instance is a part: its database is its gallery.

    The CSV paths are read from their ``query/`` or ``database/`` component on (the authors'
    files start them with the dataset folder's name, joined to the folder that holds it), so
    ``--data-root`` is the ``icir`` folder itself.

    Example:
        >>> ds = ICIR("/data/icir")
        >>> q = ds.queries("val")[0]
        >>> q.extras["instance"], len(q.extras["gt_ids"])
        ('tintin', 11)
    """

    name: ClassVar[str] = "icir"
    splits: ClassVar[tuple[str, ...]] = ("val",)
    text_rules: ClassVar[dict[str, str]] = {"text": "the query's text as written"}
    default_text_rule: ClassVar[str] = "text"
    protocol: ClassVar[Protocol] = Protocol(exclude_reference=False, k=50, rank_all=True)

    @property
    def query_file(self) -> Path:
        return self.data_root / "query_files.csv"

    @property
    def database_file(self) -> Path:
        return self.data_root / "database_files.csv"

    def annotation_files(self, split: str) -> list[Path]:
        self.check_split(split)
        return [self.query_file, self.database_file]

    # ----------------------------------------------------------------- rows
    def read_rows(self, path: Path, folder: str) -> list[Row]:
        """The data rows of a CSV file (a first row that names no image is a header)."""
        self.require_file(path)
        with path.open(encoding="utf-8-sig", newline="") as f:
            lines = [(n, r) for n, r in enumerate(csv.reader(f), start=1) if r]
        if lines and not _is_image(lines[0][1][0]):
            lines = lines[1:]
        return [self._row(path, n, fields, folder) for n, fields in lines]

    def _row(self, path: Path, line: int, fields: list[str], folder: str) -> Row:
        try:
            if len(fields) != 3:
                raise ValueError(f"{len(fields)} fields")
            image = from_folder(relative_path(fields[0]), (folder,))
            if image is None or len(image.parts) < 3 or not _is_image(image.name):
                raise ValueError(f"{fields[0]!r} is not an image path through {folder}/")
            if not fields[2].strip():
                raise ValueError("empty instance")
        except ValueError as exc:
            raise DataError(
                f"icir: {path}, line {line}: {exc}; every row must be 'image path,text,instance' "
                f"with the image under {folder}/<instance>/"
            ) from None
        return Row(image, fields[1], fields[2])

    def query_rows(self) -> list[Row]:
        return self.read_rows(self.query_file, "query")

    def database_rows(self) -> list[Row]:
        return self.read_rows(self.database_file, "database")

    # ----------------------------------------------------------------- queries
    def queries(self, split: str) -> list[Query]:
        self.check_split(split)
        positives: dict[tuple[str, str], list[str]] = {}
        for row in self.database_rows():
            found = positives.setdefault((row.instance, row.text), [])
            if row.database_id not in found:
                found.append(row.database_id)
        return [
            Query(
                text=row.text.strip(),
                reference=self.image_root / row.path,
                id=str(n),
                extras={
                    "instance": row.instance,
                    "gt_ids": positives.get((row.instance, row.text), []),
                },
            )
            for n, row in enumerate(self.query_rows())
        ]

    def databases(self) -> dict[str, dict[str, Path]]:
        """Instance → its database (gallery id → image path), in file order."""
        out: dict[str, dict[str, Path]] = {}
        for row in self.database_rows():
            out.setdefault(row.instance, {})[row.database_id] = self.image_root / row.path
        return out

    def parts(self, split: str) -> list[Part]:
        queries = self.queries(split)
        databases = self.databases()
        by_instance: dict[str, list[Query]] = {}
        for q in queries:
            by_instance.setdefault(q.extras["instance"], []).append(q)
        empty = [name for name in by_instance if not databases.get(name)]
        if empty:
            raise DataError(
                f"icir: {self.database_file} lists no image for instance(s) {empty[:5]}, "
                f"which {self.query_file} uses; check that both files are from one release"
            )
        return [Part(name, qs, databases[name]) for name, qs in by_instance.items()]

    def image_files(self, split: str) -> Iterator[Path]:
        """The query images, then every database image the queries rank."""
        parts = self.parts(split)
        seen: set[Path] = set()
        for path in [q.reference for p in parts for q in p.queries] + [
            path for p in parts for path in p.gallery.values()
        ]:
            if path not in seen:
                seen.add(path)
                yield path

    def expected_tree(self) -> str:
        return tree(
            [
                (0, "<data-root>/  (the icir/ folder of icir_v1.0.0.tar.gz)"),
                (1, "query_files.csv  (rows: icir/query/<instance>/<file>,<text>,<instance>)"),
                (1, "database_files.csv  (rows: icir/database/<instance>/...,<text>,<instance>)"),
                (1, "query/<instance>/<instance>_image_query1.jpg ..."),
                (1, "database/<instance>/<text>/... and database/<instance>/hn/..."),
            ]
        )


def _is_image(name: str) -> bool:
    return PurePosixPath(name.strip()).suffix.lower() in IMAGE_EXTENSIONS
