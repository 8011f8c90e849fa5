"""Metrics against slow brute-force implementations written here from the definitions, on the
committed fixtures and, where present, the official files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from cir.bench.datasets import CIRCO, CIRR, FashionIQ
from cir.bench.metrics import (
    average_precision_at,
    circo_metrics,
    cirr_metrics,
    fashioniq_metrics,
    subset_ranking,
)


# ----------------------------------------------------------------------------- brute force
def brute_ap(ranked: list[str], relevant: set[str], k: int) -> float:
    """AP@K: for every rank i <= K holding a relevant id, precision of the first i; summed,
    divided by min(#relevant, K)."""
    total = 0.0
    for i in range(1, min(k, len(ranked)) + 1):
        if ranked[i - 1] in relevant:
            total += sum(1 for r in ranked[:i] if r in relevant) / i
    return total / min(len(relevant), k)


def brute_recall(ranked: list[str], target: str, k: int) -> float:
    return 1.0 if target in ranked[:k] else 0.0


def mean_percent(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values)


@pytest.fixture(scope="module")
def circo_val(annotations: Path):
    return CIRCO(annotations / "circo").queries("val")


@pytest.fixture(scope="module")
def cirr_val(annotations: Path):
    ds = CIRR(annotations / "cirr")
    return ds.queries("val"), ds.gallery_names("val")


def noisy_circo_rankings(queries, rng: random.Random) -> dict[str, list[str]]:
    """Rankings with ground truths scattered among distractors at random ranks."""
    out = {}
    for q in queries:
        gts = q.extras["gt_ids"]
        pool = [f"d{i}" for i in range(60)] + rng.sample(gts, rng.randint(0, len(gts)))
        rng.shuffle(pool)
        out[q.id] = pool[:50]
    return out


# ----------------------------------------------------------------------------- CIRCO
def test_average_precision_by_hand() -> None:
    # ground truths a, b: hits at ranks 1 and 3 → (1/1 + 2/3) / min(2, K)
    assert average_precision_at(["a", "x", "b"], {"a", "b"}, [1, 3]) == pytest.approx(
        [1.0, (1 + 2 / 3) / 2]
    )
    # four ground truths, K = 2: the divisor is min(4, 2) = 2, not 4
    assert average_precision_at(["a", "b"], {"a", "b", "c", "d"}, [2]) == [1.0]


def test_circo_matches_brute_force(circo_val) -> None:
    rankings = noisy_circo_rankings(circo_val, random.Random(0))
    got = circo_metrics(rankings, circo_val)
    for k in (5, 10, 25, 50):
        want_ap = mean_percent(
            [brute_ap(rankings[q.id], set(q.extras["gt_ids"]), k) for q in circo_val]
        )
        want_r = mean_percent(
            [brute_recall(rankings[q.id], q.extras["target_id"], k) for q in circo_val]
        )
        assert got[f"mAP@{k}"] == pytest.approx(want_ap, abs=1e-9)
        assert got[f"Recall@{k}"] == pytest.approx(want_r, abs=1e-9)
    tagged = [q for q in circo_val if "negation" in q.extras["semantic_aspects"]]
    want = mean_percent([brute_ap(rankings[q.id], set(q.extras["gt_ids"]), 10) for q in tagged])
    assert got["semantic_mAP@10/negation"] == pytest.approx(want, abs=1e-9)
    assert 0 < got["mAP@50"] < 100


def test_circo_recall_counts_only_the_target(circo_val) -> None:
    # every other ground truth first, the target never: mAP > 0 but Recall = 0
    rankings = {q.id: q.extras["gt_ids"][1:] + [f"d{i}" for i in range(40)] for q in circo_val}
    got = circo_metrics(rankings, circo_val)
    assert got["Recall@50"] == 0.0 and got["mAP@50"] > 50


def test_circo_oracle_and_hidden_target(circo_val) -> None:
    oracle = {q.id: q.extras["gt_ids"] + [f"d{i}" for i in range(30)] for q in circo_val}
    assert set(circo_metrics(oracle, circo_val).values()) == {100.0}
    hidden = {q.id: [f"d{i}" for i in range(50)] for q in circo_val}
    assert set(circo_metrics(hidden, circo_val).values()) == {0.0}


# ----------------------------------------------------------------------------- CIRR
def test_cirr_protocol_and_metrics_match_brute_force(cirr_val) -> None:
    """Random scores over the whole gallery; the brute force ranks all images, drops the
    reference, and for the subset sorts the group members (minus the reference) by score."""
    queries, names = cirr_val
    queries = queries[:600]
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((len(queries), len(names)))
    order = np.argsort(-scores, axis=1)
    full, subset, want_r, want_s = {}, {}, {1: [], 5: [], 10: [], 50: []}, {1: [], 2: [], 3: []}
    for row, q in enumerate(queries):
        ranked = [names[j] for j in order[row] if names[j] != q.reference_id]
        full[q.id] = ranked[:50]
        subset[q.id] = subset_ranking(ranked, q)
        by_score = dict(zip(names, scores[row], strict=True))
        members = [m for m in q.extras["group_members"] if m != q.reference_id]
        members.sort(key=lambda m: -by_score[m])
        assert subset[q.id] == members[:3]
        for k in want_r:
            want_r[k].append(brute_recall(ranked, q.extras["target_id"], k))
        for k in want_s:
            want_s[k].append(brute_recall(members, q.extras["target_id"], k))
    got = cirr_metrics(queries, full, subset)
    for k, values in want_r.items():
        assert got[f"Recall@{k}"] == pytest.approx(mean_percent(values), abs=1e-9)
    for k, values in want_s.items():
        assert got[f"Recall_subset@{k}"] == pytest.approx(mean_percent(values), abs=1e-9)


def test_cirr_oracle_hidden_and_subset_chance(cirr_val) -> None:
    queries, _ = cirr_val
    oracle = {q.id: [q.extras["target_id"]] for q in queries}
    assert set(cirr_metrics(queries, oracle, oracle).values()) == {100.0}
    hidden = {
        q.id: [m for m in q.extras["group_members"] if m != q.extras["target_id"]] for q in queries
    }
    assert set(cirr_metrics(queries, hidden, hidden).values()) == {0.0}
    rng = random.Random(1)
    shuffled = {}
    for q in queries:
        members = [m for m in q.extras["group_members"] if m != q.reference_id]
        rng.shuffle(members)
        shuffled[q.id] = members[:3]
    chance = cirr_metrics(queries, subset_predictions=shuffled)
    assert set(chance) == {"Recall_subset@1", "Recall_subset@2", "Recall_subset@3"}
    # five candidates: chance is 20%, 40%, 60%, within four standard deviations
    for k, expected in ((1, 20), (2, 40), (3, 60)):
        p = expected / 100
        assert (
            abs(chance[f"Recall_subset@{k}"] - expected) < 400 * (p * (1 - p) / len(queries)) ** 0.5
        )


# ----------------------------------------------------------------------------- FashionIQ
def test_fashioniq_per_category_and_average(annotations: Path) -> None:
    ds = FashionIQ(annotations / "fashioniq")
    queries = ds.queries("val")
    rng = random.Random(2)
    rankings = {}
    for q in queries:
        ranked = [f"d{i}" for i in range(60)]
        ranked.insert(rng.randrange(70), q.extras["target_id"])
        rankings[q.id] = ranked[:50]
    got = fashioniq_metrics(rankings, queries)
    for cat in ("dress", "shirt", "toptee"):
        mine = [q for q in queries if q.extras["category"] == cat]
        for k in (10, 50):
            want = mean_percent(
                [brute_recall(rankings[q.id], q.extras["target_id"], k) for q in mine]
            )
            assert got[f"{cat}/Recall@{k}"] == pytest.approx(want, abs=1e-9)
    for k in (10, 50):
        avg = np.mean([got[f"{c}/Recall@{k}"] for c in ("dress", "shirt", "toptee")])
        assert got[f"average/Recall@{k}"] == pytest.approx(avg)
    oracle = {q.id: [q.extras["target_id"]] for q in queries}
    assert set(fashioniq_metrics(oracle, queries).values()) == {100.0}
    hidden = {q.id: [q.reference_id] for q in queries}
    assert set(fashioniq_metrics(hidden, queries).values()) == {0.0}
