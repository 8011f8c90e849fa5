"""Runs on incomplete image folders (``cir bench run --allow-missing``).

Mirrors of the benchmark images are often incomplete (FashionIQ's image URLs are partly dead,
so most users hold about 74,000 of its 77,684 images). Instead of refusing to run, a benchmark
can be run on the images present: gallery images that are absent are left out of the index,
queries whose reference or target image is absent are dropped, and how many of each is written
into the metrics, the manifest and the report, so that such numbers are never mistaken for
numbers on the full benchmark.

Example:
    >>> parts, missing = drop_missing_images(ds.parts("val"))
    >>> missing.to_dict()["queries_dropped"]
    12
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cir.bench.datasets import Part
from cir.errors import DataError
from cir.types import Query

#: How many missing image paths the manifest lists (the counts are always exact).
EXAMPLES = 20


@dataclass
class MissingImages:
    """What was absent, in counts over the whole split (each gallery image counted once).

    Attributes:
        gallery_images: gallery images listed by the split but absent on disk.
        gallery_total: gallery images the split lists.
        queries_dropped: queries left out because their reference or target is absent.
        queries_total: queries of the split (after ``--limit``).
        ground_truths_missing: absent extra ground truths of kept queries (CIRCO's ``gt_ids``
            beyond the target); those queries are kept and the images cannot be retrieved.
        by_part: the same counts per part (FashionIQ category).
        examples: the first absent image paths.
    """

    gallery_images: int = 0
    gallery_total: int = 0
    queries_dropped: int = 0
    queries_total: int = 0
    ground_truths_missing: int = 0
    by_part: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when nothing was missing (the run is a run on the whole benchmark)."""
        return self.gallery_images == 0 and self.queries_dropped == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "gallery_images": self.gallery_images,
            "gallery_total": self.gallery_total,
            "queries_dropped": self.queries_dropped,
            "queries_total": self.queries_total,
            "ground_truths_missing": self.ground_truths_missing,
            "by_part": self.by_part,
            "examples": self.examples,
        }


def missing_metric_entries(missing: dict[str, Any] | None) -> dict[str, int]:
    """The ``missing/...`` counts stored beside the metrics of an ``--allow-missing`` run
    (``missing`` is ``MissingImages.to_dict()``, or None for a normal run: no entries)."""
    if missing is None:
        return {}
    return {
        "missing/queries_dropped": missing["queries_dropped"],
        "missing/queries_total": missing["queries_total"],
        "missing/gallery_images": missing["gallery_images"],
        "missing/gallery_total": missing["gallery_total"],
    }


def drop_missing_images(parts: list[Part]) -> tuple[list[Part], MissingImages]:
    """The parts restricted to the images present, and what was missing.

    A query is dropped when its reference or its target (``extras["target_id"]``, val splits)
    is absent; test splits have no public target, so only the reference counts there. A query
    ranked among its own candidates (``extras["candidates"]``, GeneCIS) needs every one of
    them, and a reference given by path (i-CIR) must exist. Parts left without queries are
    left out.

    Raises:
        DataError: when no query is left to run.
    """
    report = MissingImages()
    seen: set[Path] = set()
    kept_parts = []
    for part in parts:
        present = {gid: path for gid, path in part.gallery.items() if path.is_file()}
        absent = [path for gid, path in part.gallery.items() if gid not in present]
        new = [p for p in absent if p not in seen]
        seen.update(part.gallery.values())
        queries = [q for q in part.queries if _answerable(q, present)]
        report.gallery_images += len(new)
        report.examples += [str(p) for p in new[: EXAMPLES - len(report.examples)]]
        report.queries_dropped += len(part.queries) - len(queries)
        report.queries_total += len(part.queries)
        report.ground_truths_missing += sum(_absent_truths(q, present) for q in queries)
        report.by_part[part.name or "all"] = {
            "gallery_images": len(absent),
            "gallery_total": len(part.gallery),
            "queries_dropped": len(part.queries) - len(queries),
            "queries_total": len(part.queries),
        }
        if queries:
            kept_parts.append(Part(part.name, queries, present))
    report.gallery_total = len(seen)
    if not kept_parts:
        raise DataError(
            f"no query can be run: all {report.queries_total} need an absent image "
            f"({report.gallery_images} of {report.gallery_total} gallery images are missing, "
            f"e.g. {report.examples[:1]}); check --image-root with `cir data check`"
        )
    return kept_parts, report


def _answerable(query: Query, present: dict[str, Path]) -> bool:
    target = query.extras.get("target_id")
    if query.reference_id is not None:
        reference = query.reference_id in present
    else:
        reference = isinstance(query.reference, str | Path) and Path(query.reference).is_file()
    candidates = all(c in present for c in query.extras.get("candidates", ()))
    return reference and candidates and (target is None or target in present)


def _absent_truths(query: Query, present: dict[str, Path]) -> int:
    return sum(1 for gid in query.extras.get("gt_ids", []) if gid not in present)
