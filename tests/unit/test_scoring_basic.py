"""BASIC's projection, expansion, contextualisation and Harris fusion against slow references."""

import math

import numpy as np
import pytest
import torch

from cir.scoring import (
    basic_scores,
    chunked_scores,
    contextualize,
    contrastive_projection,
    expand_query,
    l2_normalize,
    similarity_minima,
)


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return l2_normalize(torch.randn(*shape, generator=g, dtype=torch.float64)).float()


def _numpy_projection(a_feats, b_feats, a, components):
    A, B = a_feats.double().numpy(), b_feats.double().numpy()
    C = (1 - a) * A.T @ A / (len(A) - 1) - a * B.T @ B / (len(B) - 1) + 1e-5
    values, vectors = np.linalg.eigh(C)
    order = np.argsort(values)[::-1]
    keep = min(components, int((values > 0).sum()))
    V = vectors[:, order[:keep]]
    return V @ V.T, keep


@pytest.mark.parametrize("components", [3, 250])
def test_contrastive_projection_matches_numpy(components):
    objects, styles = _unit(40, 12, seed=1), _unit(30, 12, seed=2)
    mean = objects.mean(0)
    got = contrastive_projection(objects - mean, styles - mean, a=0.2, components=components)
    want, keep = _numpy_projection(objects - mean, styles - mean, 0.2, components)
    np.testing.assert_allclose(got.double().numpy(), want, atol=1e-5)
    assert round(torch.trace(got).item()) == keep
    torch.testing.assert_close(got @ got, got, atol=1e-5, rtol=0)


def test_projection_needs_two_phrases():
    with pytest.raises(ValueError, match="two object"):
        contrastive_projection(_unit(1, 4), _unit(5, 4))


def test_contextualize_is_mean_of_normalised():
    pairs = torch.randn(3, 6, 8, generator=torch.Generator().manual_seed(3)) * 4
    got = contextualize(pairs)
    for q in range(3):
        rows = [r / r.norm() for r in pairs[q]]
        mean = sum(rows) / 6
        torch.testing.assert_close(got[q], mean / mean.norm(), atol=1e-6, rtol=0)


def test_expand_query_matches_loop():
    q, nb, sims = _unit(2, 8, seed=4), _unit(2, 25, 8, seed=5), torch.rand(2, 25) * 2 - 1
    proj = contrastive_projection(_unit(20, 8, seed=6), _unit(20, 8, seed=7), components=5)
    got = expand_query(q, nb, sims, proj, temperature=0.1)
    for i in range(2):
        feats = [*nb[i], q[i]]
        w = [math.exp(0.1 * s) for s in [*sims[i].tolist(), 1.0]]
        mean = sum(wj / sum(w) * f.double() for wj, f in zip(w, feats, strict=True))
        torch.testing.assert_close(got[i].double(), mean @ proj.double(), atol=1e-6, rtol=0)


def _harris_reference(vq, tq, g, mean, img_min, txt_min, lam):
    out = torch.zeros(vq.shape[0], g.shape[0], dtype=torch.float64)
    for i in range(vq.shape[0]):
        for j in range(g.shape[0]):
            c = (g[j] - mean).double()
            sv, st = float(vq[i].double() @ c), float(tq[i].double() @ c)
            if img_min is not None:
                sv, st = (sv - img_min) / abs(img_min), (st - txt_min) / abs(img_min)
            sv, st = max(sv, 0.0), max(st, 0.0)
            out[i, j] = sv * st - lam * (sv + st) ** 2
    return out


@pytest.mark.parametrize("minima", [None, (-0.3, -0.2)])
def test_basic_scores_match_formula(minima):
    g = _unit(45, 10, seed=8)
    mean = g.mean(0)
    vq, tq = _unit(4, 10, seed=9) * 0.5, _unit(4, 10, seed=10) * 0.5
    img_min, txt_min = minima or (None, None)
    got = basic_scores(vq, tq, g, mean, img_min, txt_min, harris_lambda=0.1)
    want = _harris_reference(vq, tq, g, mean, img_min, txt_min, 0.1)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)
    chunked = chunked_scores(lambda s, e, c: basic_scores(vq, tq, c, mean, img_min, txt_min), g, 7)
    torch.testing.assert_close(chunked, got, atol=1e-6, rtol=0)
    assert got.shape == (4, 45) and got.dtype == torch.float32


def test_similarity_minima():
    imgs, txts = _unit(6, 5, seed=11), _unit(4, 5, seed=12)
    img_min, txt_min = similarity_minima(imgs, txts)
    assert img_min == pytest.approx(min(float(a @ b) for a in imgs for b in imgs), abs=1e-6)
    assert txt_min == pytest.approx(min(float(a @ b) for a in txts for b in imgs), abs=1e-6)
