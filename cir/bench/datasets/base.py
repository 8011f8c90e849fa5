"""What every benchmark reader provides: queries, galleries, protocol rules and layout checks."""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cir.errors import ConfigError, DataError
from cir.types import Query


@dataclass(frozen=True)
class Protocol:
    """How the official evaluation ranks a query.

    Attributes:
        exclude_reference: drop the query's reference image from its ranking (CIRR).
        k: how many ids the official ranking keeps (the submission length).
        subset_k: length of a second ranking restricted to ``Query.extras["group_members"]``
            (CIRR's Recall_subset), or 0 when the benchmark has none.
        restrict_key: the ``Query.extras`` entry listing the only ids a query ranks (GeneCIS's
            15 candidates), or None.
        rank_all: rankings cover the whole gallery of the query's part, not the first ``k``
            (i-CIR's average precision needs the rank of every positive).
    """

    exclude_reference: bool
    k: int = 50
    subset_k: int = 0
    restrict_key: str | None = None
    rank_all: bool = False


@dataclass
class Part:
    """One gallery with the queries ranked against it (FashionIQ has one per category).

    Queries name their reference by ``reference_id`` when it is a gallery image (stages then
    reuse the index's stored embedding and image path); i-CIR's query images are not in its
    databases and are given by path (``Query.reference``).

    Attributes:
        name: the part's name ("" for benchmarks with a single gallery, else the category).
        queries: the queries, in annotation order.
        gallery: gallery image id → image path, in split-file order.
    """

    name: str
    queries: list[Query]
    gallery: dict[str, Path] = field(default_factory=dict)


class BenchDataset:
    """Base class of the benchmark readers.

    Subclasses read the official annotation files under ``data_root`` (images may live under
    a separate ``image_root``) and turn them into ``Query`` objects and galleries.

    Args:
        data_root: the folder holding the official annotation layout.
        image_root: where image paths are resolved; defaults to ``data_root``.
        text_rule: how a query's text is made from the annotation (see ``text_rules``).

    Example:
        >>> ds = get_dataset("cirr", "/data/cirr")
        >>> queries = ds.queries("val")          # annotations only, no images needed
        >>> parts = ds.parts("val")              # queries + gallery paths for a run
    """

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("val", "test")
    text_rules: ClassVar[dict[str, str]] = {}
    default_text_rule: ClassVar[str] = ""
    protocol: ClassVar[Protocol] = Protocol(exclude_reference=False)

    def __init__(
        self,
        data_root: str | Path,
        image_root: str | Path | None = None,
        text_rule: str | None = None,
    ) -> None:
        self.data_root = Path(data_root)
        self.image_root = Path(image_root) if image_root is not None else self.data_root
        self.text_rule = text_rule or self.default_text_rule
        if self.text_rule not in self.text_rules:
            raise ConfigError(
                f"{self.name}: unknown query-text rule {self.text_rule!r}; valid rules: "
                + "; ".join(f"{k} ({v})" for k, v in self.text_rules.items())
            )

    # ----------------------------------------------------------------- to implement
    def annotation_files(self, split: str) -> list[Path]:
        """The annotation files a split needs (evaluation reads only these)."""
        raise NotImplementedError

    def queries(self, split: str) -> list[Query]:
        """The split's queries, read from the annotation files only."""
        raise NotImplementedError

    def parts(self, split: str) -> list[Part]:
        """The split's galleries with their queries (needs the gallery listing files)."""
        raise NotImplementedError

    def expected_tree(self) -> str:
        """The folder layout the reader expects, as an indented tree."""
        raise NotImplementedError

    def use_cache(self, root: Path) -> None:
        """Where files the reader derives from the data go (GeneCIS's crops); most derive none."""

    def preset_scopes(self, available: Collection[str]) -> list[str]:
        """The names under which a run looks up a pipeline's presets (``available``): the
        benchmark's name (GeneCIS adds ``genecis/<task>`` when one task is run)."""
        return [self.name]

    # ----------------------------------------------------------------- shared helpers
    def check_split(self, split: str) -> str:
        if split not in self.splits:
            raise ConfigError(
                f"{self.name} has no split {split!r}; valid splits: {', '.join(self.splits)}"
            )
        return split

    def image_files(self, split: str) -> Iterator[Path]:
        """Every gallery image of the split (references are gallery images too)."""
        seen: set[Path] = set()
        for part in self.parts(split):
            for path in part.gallery.values():
                if path not in seen:
                    seen.add(path)
                    yield path

    def first_missing(self, split: str) -> tuple[Path | None, int]:
        """The first required file that does not exist, and how many files were checked.

        Annotation files come first (without them the image list is unknown), then images.
        """
        checked = 0
        for path in self.annotation_files(split):
            checked += 1
            if not path.is_file():
                return path, checked
        for path in self.image_files(split):
            checked += 1
            if not path.is_file():
                return path, checked
        return None, checked

    def require_file(self, path: Path) -> None:
        """Raise a DataError saying what is missing and where to look when ``path`` is not a
        file (annotation files)."""
        if not path.is_file():
            raise DataError(
                f"{self.name}: annotation file not found: {path}\n"
                f"expected layout under --data-root:\n{self.expected_tree()}\n"
                f"run `cir data check {self.name} --data-root {self.data_root}` for details"
            )

    def read_json(self, path: Path) -> Any:
        """Load an annotation file, saying what is missing and where to look."""
        self.require_file(path)
        try:
            with path.open(encoding="utf-8") as f:
                return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.name}: {path} is not valid JSON ({exc})") from None
        except RecursionError:
            raise DataError(f"{self.name}: {path} is not valid JSON (nested too deeply)") from None

    def records(self, path: Path, fields: dict[str, type | tuple[type, ...]]) -> list[dict]:
        """The annotation file at ``path``: a list of objects, each with ``fields`` of these
        types; a malformed entry is a DataError naming the file, the entry and the field."""
        data = self.read_json(path)
        if not isinstance(data, list):
            raise DataError(
                f"{self.name}: {path} must hold a list of entries, not {type(data).__name__}"
            )
        for n, entry in enumerate(data):
            check_entry(self.name, path, n, entry, fields)
        return data

    def mapping(self, path: Path, values: type | tuple[type, ...]) -> dict[str, Any]:
        """The JSON object at ``path`` (e.g. a split file), its values of type ``values``."""
        data = self.read_json(path)
        bad = not isinstance(data, dict) or any(not isinstance(v, values) for v in data.values())
        if bad:
            raise DataError(
                f"{self.name}: {path} must be an object of names to "
                f"{_type_names(values)}; this file is not (is it the right file?)"
            )
        return data


def check_entry(name: str, path: Path, n: int, entry: Any, fields: dict[str, Any]) -> None:
    """Refuse annotation entry ``n`` unless it is an object with ``fields`` of their types."""
    if not isinstance(entry, dict):
        raise DataError(f"{name}: {path}, entry {n} is {type(entry).__name__}, not an object")
    for field_name, types in fields.items():
        value = entry.get(field_name)
        if not isinstance(value, types) or isinstance(value, bool):
            shown = (
                "missing" if field_name not in entry else f"{type(value).__name__} {value!r:.40}"
            )
            raise DataError(
                f"{name}: {path}, entry {n}: field {field_name!r} is {shown}; "
                f"expected {_type_names(types)} (is the file damaged or from another release?)"
            )


def _type_names(types: type | tuple[type, ...]) -> str:
    names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
    return " or ".join(
        {"str": "text", "int": "an integer", "list": "a list"}.get(n, n) for n in names
    )


def images_by_stem(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """Map file stem → path for the images directly inside ``folder`` (one directory scan)."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, dot, ext = entry.name.rpartition(".")
            if dot and ext.lower() in extensions and stem not in found:
                found[stem] = Path(entry.path)
    return found


def tree(lines: list[tuple[int, str]]) -> str:
    """Render (depth, name) pairs as an indented tree."""
    return "\n".join("    " * depth + name for depth, name in lines)
