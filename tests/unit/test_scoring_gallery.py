"""Gallery-side rules (WeiMoCIR, SEIZE) and the chunked driver against slow references."""

import pytest
import torch

from cir.scoring import (
    chunked_scores,
    chunked_topk,
    dot_scores,
    l2_normalize,
    seize_scores,
    set_positions,
    weimocir_scores,
)


def _unit(*shape, seed=0, dtype=torch.float32):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return l2_normalize(x).to(dtype)


def _dot(a, b):
    return sum(x * y for x, y in zip(a.tolist(), b.tolist(), strict=True))


def _weimocir_reference(q, qk, g, caps, beta):
    Q, N, K = q.shape[0], g.shape[0], caps.shape[1]
    out = torch.zeros(Q, N, dtype=torch.float64)
    for i in range(Q):
        for j in range(N):
            cap = sum(_dot(qk[i][k] if qk is not None else q[i], caps[j, k]) for k in range(K)) / K
            out[i, j] = (1 - beta) * _dot(q[i], g[j]) + beta * cap
    return out


@pytest.mark.parametrize("reference_form", [True, False])
def test_weimocir_scores_match_formula(reference_form):
    q, g, caps = _unit(4, 8, seed=1), _unit(11, 8, seed=2), _unit(11, 3, 8, seed=3)
    qk = _unit(4, 3, 8, seed=4) if reference_form else None
    got = weimocir_scores(q, g, caps, qk, beta=0.1)
    want = _weimocir_reference(q, qk, g, caps, 0.1)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


def test_weimocir_beta_zero_is_fused_query_retrieval():
    q, g = _unit(5, 16, seed=5), _unit(40, 16, seed=6)
    torch.testing.assert_close(weimocir_scores(q, g, None, beta=0.0), q @ g.T)
    caps = _unit(40, 3, 16, seed=7)
    torch.testing.assert_close(weimocir_scores(q, g, caps, _unit(5, 3, 16, seed=8), 0.0), q @ g.T)


def test_weimocir_needs_captions_and_matching_k():
    q, g = _unit(2, 8, seed=9), _unit(5, 8, seed=10)
    with pytest.raises(ValueError, match="caption embeddings"):
        weimocir_scores(q, g, None, beta=0.1)
    with pytest.raises(ValueError, match="3 per image"):
        weimocir_scores(q, g, _unit(5, 3, 8, seed=11), _unit(2, 2, 8, seed=12), beta=0.1)


def _seize_reference(t, c, g, lneg, lpos):
    out = torch.zeros(t.shape[0], g.shape[0], dtype=torch.float64)
    for i in range(t.shape[0]):
        for j in range(g.shape[0]):
            after, before = _dot(t[i], g[j]), _dot(c[i], g[j])
            d = after - before
            out[i, j] = after + lneg * min(0.0, d) + lpos * max(0.0, d)
    return out


def test_seize_scores_match_formula():
    t, c, g = _unit(6, 10, seed=13), _unit(6, 10, seed=14), _unit(30, 10, seed=15)
    got = seize_scores(t, c, g, lambda_neg=2.1, lambda_pos=0.13)
    torch.testing.assert_close(
        got.double(), _seize_reference(t, c, g, 2.1, 0.13), atol=1e-6, rtol=0
    )


def test_seize_lambda_zero_is_plain_edit_retrieval():
    t, c, g = _unit(6, 10, seed=16), _unit(6, 10, seed=17), _unit(30, 10, seed=18)
    torch.testing.assert_close(seize_scores(t, c, g, 0.0, 0.0), t @ g.T)


def test_set_positions_only_touches_rows_in_chunk():
    scores = torch.zeros(3, 5)
    set_positions(scores, torch.tensor([7, -1, 11]), start=5, value=-1.0)
    expected = torch.zeros(3, 5)
    expected[0, 2] = -1.0
    assert torch.equal(scores, expected)


def test_chunked_equals_unchunked_and_topk_matches_full_sort():
    q, g, caps = _unit(7, 12, seed=19), _unit(503, 12, seed=20), _unit(503, 3, 12, seed=21)
    qk = _unit(7, 3, 12, seed=22)

    def score(start, stop, chunk):
        return weimocir_scores(q, chunk, caps[start:stop], qk, beta=0.1)

    full = score(0, 503, g)
    for chunk in (1, 17, 128, 503, 1000):
        torch.testing.assert_close(chunked_scores(score, g, chunk), full, atol=1e-6, rtol=0)
        values, rows = chunked_topk(score, g, k=25, chunk_size=chunk)
        want = full.topk(25, dim=1)
        torch.testing.assert_close(values, want.values, atol=1e-6, rtol=0)
        assert torch.equal(rows, want.indices)


def test_chunked_topk_excludes_reference_rows():
    q, g = _unit(4, 8, seed=23), _unit(60, 8, seed=24)
    best = (q @ g.T).argmax(dim=1)
    exclude = best.clone()
    exclude[2] = -1
    values, rows = chunked_topk(
        lambda s, e, c: dot_scores(q, c), g, k=60, chunk_size=7, exclude=exclude
    )
    assert rows[2, 0].item() == best[2].item()
    assert sorted(rows[2].tolist()) == list(range(60))
    for i in (0, 1, 3):
        assert best[i].item() not in rows[i].tolist()  # never returned, even with k = N
        assert rows[i, -1].item() == -1 and values[i, -1].item() == float("-inf")
        assert sorted(rows[i, :-1].tolist()) == sorted(set(range(60)) - {best[i].item()})


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fp16_gallery_is_scored_in_float32(dtype):
    q, g = _unit(3, 16, seed=25), _unit(100, 16, seed=26, dtype=dtype)
    caps = _unit(100, 2, 16, seed=27, dtype=dtype)
    values, rows = chunked_topk(
        lambda s, e, c: weimocir_scores(q, c, caps[s:e], beta=0.1), g, k=10, chunk_size=33
    )
    assert values.dtype == torch.float32 and rows.dtype == torch.int64
    assert values.shape == rows.shape == (3, 10)
    out = seize_scores(q, q.flip(0), g.float())
    assert out.shape == (3, 100) and out.dtype == torch.float32


def test_chunked_topk_never_returns_nan_or_dropped_rows():
    g = _unit(40, 8, seed=28)
    q = _unit(2, 8, seed=29)

    def score(start, stop, chunk):
        s = q @ chunk.T
        s[0, :] = float("nan")  # query 0: every score NaN
        s[1, torch.arange(start, stop) % 2 == 0] = float("-inf")  # query 1: even rows dropped
        return s

    values, rows = chunked_topk(score, g, k=30, chunk_size=9)
    assert rows[0].tolist() == [-1] * 30 and torch.isneginf(values[0]).all()
    assert sorted(rows[1, :20].tolist()) == list(range(1, 40, 2))
    assert rows[1, 20:].tolist() == [-1] * 10
