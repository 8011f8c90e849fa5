"""Score prediction files with the annotation files only (no images, no models).

Example:
    >>> result = evaluate_files("cirr", "val", "/data/cirr",
    ...                         ["recall.json"], subset_predictions="recall_subset.json")
    >>> result.metrics["Recall@1"], result.metrics["Recall_subset@1"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cir.bench.datasets import get_dataset
from cir.bench.metrics import (
    circo_metrics,
    cirr_metrics,
    fashioniq_metrics,
    genecis_metrics,
    icir_metrics,
    zerosight_metrics,
)
from cir.bench.submission import (
    Problem,
    ValidationReport,
    check_submission,
    load_predictions,
    parts_present,
    split_gallery,
)
from cir.errors import ConfigError, DataError
from cir.types import Query

#: Scoring of the benchmarks with one predictions file per split (CIRR has two).
SCORERS = {
    "circo": circo_metrics,
    "fashioniq": fashioniq_metrics,
    "genecis": genecis_metrics,
    "icir": icir_metrics,
    "zerosight": zerosight_metrics,
}


@dataclass
class Evaluation:
    """Metrics (percent, official names) and what validation found in the inputs."""

    dataset: str
    split: str
    metrics: dict[str, float]
    n_queries: int
    reports: list[ValidationReport] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [w for r in self.reports for w in r.warnings]


def score(
    dataset: str,
    queries: Sequence[Query],
    predictions: Mapping[str, Sequence] | None,
    subset_predictions: Mapping[str, Sequence] | None = None,
) -> dict[str, float]:
    """Metrics of rankings held in memory, over ``queries`` (each must have a ranking)."""
    _require_ground_truth(dataset, queries)
    if dataset == "cirr":
        return cirr_metrics(queries, predictions, subset_predictions)
    if predictions is None:
        raise ConfigError(f"{dataset}: no predictions to score")
    as_text = {k: [str(i) for i in v] for k, v in predictions.items()}
    return SCORERS[dataset](as_text, queries)


def _require_ground_truth(dataset: str, queries: Sequence[Query]) -> None:
    if queries and not {"target_id", "gt_ids"} & set(queries[0].extras):
        raise ConfigError(
            f"{dataset}: this split has no public ground truth; only 'val' can be scored "
            "locally. Check a test file with `cir bench validate` and submit it to the "
            "benchmark's evaluation server."
        )


def evaluate_files(
    dataset: str,
    split: str,
    data_root: str | Path,
    predictions: Sequence[str | Path],
    subset_predictions: str | Path | None = None,
    allow_partial: bool = False,
) -> Evaluation:
    """Validate and score prediction files in the official submission formats.

    CIRR files are told apart by their ``metric`` entry; ``subset_predictions`` must be a
    ``recall_subset`` file. FashionIQ files may each hold one category or several.

    Raises:
        DataError: when a file is invalid (what is wrong, per file).
    """
    ds = get_dataset(dataset, data_root)
    queries = ds.queries(split)
    _require_ground_truth(dataset, queries)
    gallery = split_gallery(dataset, data_root, split)
    roles = [(p, None) for p in predictions]
    if subset_predictions is not None:
        roles.append((subset_predictions, "recall_subset"))
    if not roles:
        raise ConfigError("no predictions file given; pass --predictions FILE")
    merged: dict[str, dict[str, Any]] = {}
    reports = []
    for path, metric in roles:
        obj, problems = load_predictions(path)
        kind, found = check_submission(
            dataset, obj, queries, gallery, metric=metric, exact=False, require_all=False
        )
        report = ValidationReport(kind, len(queries), problems + found, str(path))
        _merge(merged.setdefault(kind, {}), obj, report)
        reports.append(report)
    _check_coverage(dataset, queries, merged, reports, allow_partial)
    bad = [r for r in reports if not r.ok]
    if bad:
        raise DataError("invalid predictions:\n" + "\n".join(r.summary() for r in bad))
    scored = _scored_queries(dataset, queries, merged)
    if not scored:
        raise DataError(
            f"none of the {len(queries)} queries of {dataset} {split} has a ranking in the "
            "predictions given; nothing to score (are these predictions for this split?)"
        )
    full = merged.get("cirr/recall") if dataset == "cirr" else merged.get(dataset)
    metrics = score(dataset, scored, full, merged.get("cirr/recall_subset"))
    return Evaluation(dataset, split, metrics, len(scored), reports)


def _merge(into: dict[str, Any], obj: Any, report: ValidationReport) -> None:
    if not isinstance(obj, dict):
        return
    for key, value in obj.items():
        if key in ("version", "metric"):
            continue
        if key in into:
            report.problems.append(Problem("error", f"query {key!r} is also in an earlier file"))
        into[key] = value


def _scored_queries(dataset: str, queries: Sequence[Query], merged: dict) -> list[Query]:
    """Queries that have every ranking the scoring needs."""
    kinds = list(merged)  # a file that ranks no query leaves nothing to score
    return [q for q in queries if all(q.id in merged[k] for k in kinds)]


def _check_coverage(dataset, queries, merged, reports, allow_partial) -> None:
    """Every query of the split (FashionIQ, GeneCIS: of the parts given) needs a ranking."""
    for kind, rankings in merged.items():
        scope = parts_present(dataset, rankings, queries)
        missing = [q.id for q in scope if q.id not in rankings]
        report = next(r for r in reversed(reports) if r.kind == kind)
        if missing:
            message = (
                f"{kind}: {len(missing)} of {len(scope)} queries have no ranking, "
                f"e.g. {missing[:3]}"
            )
            severity = "warning" if allow_partial else "error"
            if not allow_partial:
                message += " (pass --allow-partial to score only the queries present)"
            report.problems.append(Problem(severity, message))
