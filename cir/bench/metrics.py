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
- GeneCIS (the GeneCIS and CIReVL evaluation code): ``<task>/Recall@K`` for K = 1, 2, 3 (is the
  target among the first K of the template's candidates), and their mean over the tasks
  scored under ``average/`` (``average/Recall@1`` is the paper's headline).
- i-CIR (billpsomas/icir ``utils.py``): per query, average precision by the trapezoidal rule
  over the full ranking of the instance's database; ``mAP`` is the mean over queries (the
  authors' ``map``), ``macro_mAP`` the mean over instances of their queries' mean (``mmap``),
  ``min_mAP`` the mean over instances of their worst query (``minmap``).
- ZeroSight (sotayang/ZeroSight ``evaluate_results/evaluate.py``): ``mAP@K`` as CIRCO's (over
  min(#ground truths as listed, K)) and ``PNR_mAP@K``, the same sum with each precision weighted
  by where the hard negatives rank before it (``pnr_weights``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from cir.bench.datasets.circo import SEMANTIC_ASPECTS
from cir.types import Query

CIRCO_KS = (5, 10, 25, 50)
CIRR_KS = (1, 5, 10, 50)
CIRR_SUBSET_KS = (1, 2, 3)
FASHIONIQ_KS = (10, 50)
GENECIS_KS = (1, 2, 3)
ZEROSIGHT_KS = (5, 10, 25, 50)
#: The i-CIR code's guard against an empty positive set (kept: it shifts every AP slightly).
ICIR_EPSILON = 1e-5

Predictions = Mapping[str, Sequence[str]]


def average_precision_at(
    ranked: Sequence[str], relevant: set[str], ks: Sequence[int]
) -> list[float]:
    """AP@K for each K: mean precision at the hits among the first K, over min(|relevant|, K)."""
    precision = precision_at_hits(ranked, relevant)
    return [float(precision[:k].sum() / min(len(relevant), k)) for k in ks]


def precision_at_hits(ranked: Sequence[str], relevant: Collection[str]) -> np.ndarray:
    """Per rank, the precision of the ranking up to it where it holds a relevant id, else 0."""
    hits = np.fromiter((r in relevant for r in ranked), dtype=bool, count=len(ranked))
    return np.cumsum(hits) * hits / np.arange(1, len(ranked) + 1)


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
    return recall_by_part(predictions, queries, "category", ks)


def genecis_metrics(
    predictions: Predictions, queries: Sequence[Query], ks: Sequence[int] = GENECIS_KS
) -> dict[str, float]:
    """``<task>/Recall@K`` for each GeneCIS task present, and their mean as ``average/``."""
    return recall_by_part(predictions, queries, "task", ks)


def recall_by_part(
    predictions: Predictions, queries: Sequence[Query], key: str, ks: Sequence[int]
) -> dict[str, float]:
    """Recall@K of ``target_id`` per value of ``Query.extras[key]``, then their mean."""
    by_part: dict[str, list[list[float]]] = defaultdict(list)
    for q in queries:
        by_part[q.extras[key]].append(hit_at(predictions[q.id], q.extras["target_id"], ks))
    metrics: dict[str, float] = {}
    for part, hits in by_part.items():
        for i, k in enumerate(ks):
            metrics[f"{part}/Recall@{k}"] = _percent([h[i] for h in hits])
    for k in ks:
        values = [metrics[f"{p}/Recall@{k}"] for p in by_part]
        metrics[f"average/Recall@{k}"] = float(np.mean(values)) if values else 0.0
    return metrics


def icir_average_precision(ranked: Sequence[str], positives: Collection[str]) -> float:
    """Average precision by the trapezoidal rule of the i-CIR code.

    For the j-th positive (from 0) at rank r (from 0), the precision before it (j / r, or 1
    at r = 0) and at it ((j + 1) / (r + 1)) are averaged, and the sum is divided by
    ``#positives + 1e-5``. Positives missing from ``ranked`` add nothing (with a full ranking,
    as the protocol asks, every positive is in it).
    """
    relevant = set(positives)
    ranks = np.array([i for i, gid in enumerate(ranked) if gid in relevant], dtype=float)
    j = np.arange(len(ranks), dtype=float)
    before = np.where(ranks == 0, 1.0, j / np.maximum(ranks, 1.0))
    at = (j + 1.0) / (ranks + 1.0)
    return float(((before + at) / 2.0).sum() / (len(relevant) + ICIR_EPSILON))


def icir_metrics(predictions: Predictions, queries: Sequence[Query]) -> dict[str, float]:
    """``mAP`` over queries, ``macro_mAP`` and ``min_mAP`` over instances (see the module)."""
    by_instance: dict[str, list[float]] = defaultdict(list)
    for q in queries:
        ap = icir_average_precision(predictions[q.id], q.extras["gt_ids"])
        by_instance[q.extras["instance"]].append(ap)
    every = [ap for aps in by_instance.values() for ap in aps]
    return {
        "mAP": _percent(every),
        "macro_mAP": _percent([float(np.mean(aps)) for aps in by_instance.values()]),
        "min_mAP": _percent([min(aps) for aps in by_instance.values()]),
    }


def pnr_weights(negative: np.ndarray) -> np.ndarray:
    """The weight ZeroSight's evaluation gives each rank i (from 0) of a ranking.

    0 at rank 0 (the official loop starts at rank 1 and leaves it 0); at rank i > 0, 1 plus the
    mean of p / i over the ranks p < i holding a hard negative, or 1 when none does.
    """
    negative = np.asarray(negative, dtype=float)
    rank = np.arange(len(negative), dtype=float)
    count = np.cumsum(negative) - negative
    total = np.cumsum(rank * negative) - rank * negative
    weights = np.ones(len(negative))
    seen = count > 0
    weights[seen] = 1.0 + total[seen] / (count[seen] * rank[seen])
    weights[:1] = 0.0
    return weights


def zerosight_metrics(
    predictions: Predictions, queries: Sequence[Query], ks: Sequence[int] = ZEROSIGHT_KS
) -> dict[str, float]:
    """``mAP@K`` and ``PNR_mAP@K`` for ZeroSight (ground truths counted as listed)."""
    aps: list[list[float]] = []
    pnr: list[list[float]] = []
    for q in queries:
        ranked = predictions[q.id]
        truths, negatives = q.extras["gt_ids"], set(q.extras["negative_ids"])
        precision = precision_at_hits(ranked, set(truths))
        weighted = precision * pnr_weights(np.array([r in negatives for r in ranked]))
        aps.append([precision[:k].sum() / min(len(truths), k) for k in ks])
        pnr.append([weighted[:k].sum() / min(len(truths), k) for k in ks])
    metrics = {f"mAP@{k}": _percent([a[i] for a in aps]) for i, k in enumerate(ks)}
    metrics |= {f"PNR_mAP@{k}": _percent([a[i] for a in pnr]) for i, k in enumerate(ks)}
    return metrics


def subset_ranking(ranked: Sequence[str], query: Query, k: int = 3) -> list[str]:
    """The first ``k`` group members (reference excluded) in the order of ``ranked``.

    ``ranked`` must order every group member; this is CIRR's subset protocol: the same
    scores, restricted to the query's group.
    """
    members = set(query.extras["group_members"]) - {query.reference_id}
    return [i for i in ranked if i in members][:k]
