"""Validation metrics computed the way the official evaluation code computes them.

All functions take ``predictions``: query id → gallery ids best first (strings), and the
queries of the split (from ``cir.bench.datasets``); they return percentages under the official
metric names. Each query must have a prediction (callers pass the queries they want scored).

- CIRCO (miccunifi/CIRCO ``evaluation.py``): AP@K sums precision at the ranks of ground
  truths among the first K and divides by ``min(#ground truths, K)``; Recall@K counts only
  the target image (the one the caption was written for); ``semantic_mAP@10/<aspect>`` is
  mAP@10 over the queries tagged with the aspect.
- CIRR (the reference validation code): Recall@K is whether ``target_hard`` is among the
  first K of the ranking the reference was removed from; Recall_subset@K uses the ranking
  restricted to the query's group members.
- FashionIQ: Recall@K per category, and the mean over categories under ``average/``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from cir.bench.datasets.circo import SEMANTIC_ASPECTS
from cir.types import Query

CIRCO_KS = (5, 10, 25, 50)
CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
FASHIONIQ_KS = (10, 50)

Predictions = Mapping[str, Sequence[str]]


def average_precision_at(
    ranked: Sequence[str], relevant: set[str], ks: Sequence[int]
) -> list[float]:
    """AP@K for each K: mean precision at the hits among the first K, over min(|relevant|, K)."""
    hits = np.fromiter((r in relevant for r in ranked), dtype=bool, count=len(ranked))
    precision_at_hits = np.cumsum(hits) * hits / np.arange(1, len(ranked) + 1)
    return [float(precision_at_hits[:k].sum() / min(len(relevant), k)) for k in ks]


def hit_at(ranked: Sequence[str], target: str, ks: Sequence[int]) -> list[float]:
    """1.0 where ``target`` is among the first K of ``ranked``, else 0.0, for each K."""
    try:
        position = list(ranked).index(target)
    except ValueError:
        return [0.0] * len(ks)
    return [float(position < k) for k in ks]


def _percent(values: Sequence[float]) -> float:
    return float(np.mean(values) * 100.0)


def circo_metrics(
    predictions: Predictions, queries: Sequence[Query], ks: Sequence[int] = CIRCO_KS
) -> dict[str, float]:
    """``mAP@K``, ``Recall@K`` and ``semantic_mAP@10/<aspect>`` for CIRCO val.

    Aspects without any scored query are left out (the official code would print NaN).
    """
    aps: list[list[float]] = []
    recalls: list[list[float]] = []
    per_aspect: dict[str, list[float]] = defaultdict(list)
    for q in queries:
        ranked = predictions[q.id]
        ap = average_precision_at(ranked, set(q.extras["gt_ids"]), (*ks, 10))
        aps.append(ap[:-1])
        recalls.append(hit_at(ranked, q.extras["target_id"], ks))
        for aspect in q.extras.get("semantic_aspects", []):
            per_aspect[aspect].append(ap[-1])
    metrics = {f"mAP@{k}": _percent([a[i] for a in aps]) for i, k in enumerate(ks)}
    metrics |= {f"Recall@{k}": _percent([r[i] for r in recalls]) for i, k in enumerate(ks)}
    for aspect in SEMANTIC_ASPECTS:
        if per_aspect.get(aspect):
            metrics[f"semantic_mAP@10/{aspect}"] = _percent(per_aspect[aspect])
    return metrics


def cirr_metrics(
    queries: Sequence[Query],
    predictions: Predictions | None = None,
    subset_predictions: Predictions | None = None,
    ks: Sequence[int] = CIRR_KS,
    subset_ks: Sequence[int] = CIRR_SUBSET_KS,
) -> dict[str, float]:
    """``Recall@K`` from the top-50 file and ``Recall_subset@K`` from the top-3 file."""
    metrics: dict[str, float] = {}
    if predictions is not None:
        hits = [hit_at(predictions[q.id], q.extras["target_id"], ks) for q in queries]
        metrics |= {f"Recall@{k}": _percent([h[i] for h in hits]) for i, k in enumerate(ks)}
    if subset_predictions is not None:
        hits = [hit_at(subset_predictions[q.id], q.extras["target_id"], subset_ks) for q in queries]
        metrics |= {
            f"Recall_subset@{k}": _percent([h[i] for h in hits]) for i, k in enumerate(subset_ks)
        }
    return metrics


def fashioniq_metrics(
    predictions: Predictions, queries: Sequence[Query], ks: Sequence[int] = FASHIONIQ_KS
) -> dict[str, float]:
    """``<category>/Recall@K`` for each category present, and their mean as ``average/``."""
    by_category: dict[str, list[list[float]]] = defaultdict(list)
    for q in queries:
        by_category[q.extras["category"]].append(
            hit_at(predictions[q.id], q.extras["target_id"], ks)
        )
    metrics: dict[str, float] = {}
    for category, hits in by_category.items():
        for i, k in enumerate(ks):
            metrics[f"{category}/Recall@{k}"] = _percent([h[i] for h in hits])
    for k in ks:
        values = [metrics[f"{c}/Recall@{k}"] for c in by_category]
        metrics[f"average/Recall@{k}"] = float(np.mean(values)) if values else 0.0
    return metrics


def subset_ranking(ranked: Sequence[str], query: Query, k: int = 3) -> list[str]:
    """The first ``k`` group members (reference excluded) in the order of ``ranked``.

    ``ranked`` must order every group member; this is CIRR's subset protocol: the same
    scores, restricted to the query's group.
    """
    members = set(query.extras["group_members"]) - {query.reference_id}
    return [i for i in ranked if i in members][:k]
