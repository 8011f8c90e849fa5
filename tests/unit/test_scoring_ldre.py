"""LDRE adaptive ensemble against a slow reference written from the formula."""

import math

import pytest
import torch

from cir.scoring import (
    iter_chunks,
    l2_normalize,
    ldre_divergence_topk,
    ldre_ensemble,
    ldre_weights,
    merge_topk_values,
)


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return l2_normalize(torch.randn(*shape, generator=g, dtype=torch.float64)).float()


def _dot(a, b):
    return sum(x * y for x, y in zip(a.tolist(), b.tolist(), strict=True))


def _reference(edits, caps, gallery, k, temperature, per_query):
    Q, N, _ = edits.shape
    r = [[0.0] * N for _ in range(Q)]
    for q in range(Q):
        for i in range(N):
            d = [max(0.0, _dot(caps[q, i], g) - _dot(edits[q, i], g)) for g in gallery]
            r[q][i] = sum(sorted(d, reverse=True)[:k])

    def softmax(rel):
        peak = max(rel)
        e = [math.exp(x / peak / temperature) for x in rel]
        return [x / sum(e) for x in e]

    if per_query:
        weights = [softmax(r[q]) for q in range(Q)]
    else:
        shared = softmax([sum(r[q][i] for q in range(Q)) for i in range(N)])
        weights = [shared] * Q
    out = []
    for q in range(Q):
        out.append(
            [
                sum(weights[q][i] * edits[q, i, d].item() for i in range(N))
                for d in range(edits.shape[2])
            ]
        )
    return weights, out


def _run(edits, caps, gallery, k, chunk, temperature=0.04, per_query=False):
    top = None
    for _, _, g in iter_chunks(gallery, chunk):
        top = merge_topk_values(top, ldre_divergence_topk(edits, caps, g, k), k)
    weights, fallback = ldre_weights(top, temperature, per_query)
    return weights, fallback, ldre_ensemble(edits, weights)


@pytest.mark.parametrize("per_query", [False, True])
def test_ldre_matches_formula(per_query):
    edits, caps, gallery = _unit(3, 4, 8, seed=1), _unit(3, 4, 8, seed=2), _unit(37, 8, seed=3)
    weights, fallback, query = _run(edits, caps, gallery, k=5, chunk=10, per_query=per_query)
    want_w, want_q = _reference(edits, caps, gallery, 5, 0.04, per_query)
    assert not fallback.any()
    assert weights.shape == ((3, 4) if per_query else (4,))
    rows = weights.tolist() if per_query else [weights.tolist()] * 3
    for q in range(3):
        assert rows[q] == pytest.approx(want_w[q], rel=1e-5, abs=1e-7)
        assert query[q].tolist() == pytest.approx(want_q[q], rel=1e-5, abs=1e-6)


def test_chunked_topk_of_divergence_equals_unchunked():
    edits, caps, gallery = _unit(5, 3, 16, seed=4), _unit(5, 3, 16, seed=5), _unit(200, 16, seed=6)
    full = ldre_divergence_topk(edits, caps, gallery, k=5)
    for chunk in (1, 3, 64, 199):
        top = None
        for _, _, g in iter_chunks(gallery, chunk):
            top = merge_topk_values(top, ldre_divergence_topk(edits, caps, g, 5), 5)
        torch.testing.assert_close(top, full)


def test_identical_edits_and_captions_fall_back_to_uniform():
    edits = _unit(2, 4, 8, seed=7)
    top = ldre_divergence_topk(edits, edits.clone(), _unit(10, 8, seed=8), k=5)
    weights, fallback = ldre_weights(top)
    assert bool(fallback) and weights.tolist() == pytest.approx([0.25] * 4)
    weights, fallback = ldre_weights(top, per_query=True)
    assert fallback.tolist() == [True, True]
    torch.testing.assert_close(ldre_ensemble(edits, weights), edits.mean(dim=1))


def test_temperature_sharpens_weights():
    edits, caps, gallery = _unit(4, 5, 8, seed=9), _unit(4, 5, 8, seed=10), _unit(50, 8, seed=11)
    top = ldre_divergence_topk(edits, caps, gallery, k=5)
    sharp, _ = ldre_weights(top, temperature=0.04)
    soft, _ = ldre_weights(top, temperature=10.0)
    assert sharp.max() > soft.max()
    assert sharp.sum().item() == pytest.approx(1.0)
