"""Hubness corrections against slow references, and their effect on a hub-heavy gallery."""

import math

import pytest
import torch

from cir.scoring import chunked_scores, correct_hubs, csls, inverted_softmax, l2_normalize


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return l2_normalize(torch.randn(*shape, generator=g, dtype=torch.float64)).float()


def test_inverted_softmax_matches_formula():
    q, bank, g = _unit(3, 8, seed=1), _unit(20, 8, seed=2), _unit(15, 8, seed=3)
    got = correct_hubs(q @ g.T, bank, g, "inverted_softmax", temperature=0.05)
    for i in range(3):
        for j in range(15):
            s = float(q[i] @ g[j])
            norm = sum(math.exp(float(b @ g[j]) / 0.05) for b in bank)
            assert got[i, j].item() == pytest.approx(math.log(math.exp(s / 0.05) / norm), abs=1e-4)


def test_csls_matches_formula():
    q, bank, g = _unit(3, 8, seed=4), _unit(20, 8, seed=5), _unit(15, 8, seed=6)
    got = correct_hubs(q @ g.T, bank, g, "csls", k=4)
    for i in range(3):
        for j in range(15):
            r = sum(sorted((float(b @ g[j]) for b in bank), reverse=True)[:4]) / 4
            assert got[i, j].item() == pytest.approx(2 * float(q[i] @ g[j]) - r, abs=1e-6)


def test_none_and_unknown_method():
    s = torch.rand(2, 3)
    assert correct_hubs(s, _unit(4, 5), _unit(3, 5), "none") is s
    with pytest.raises(ValueError, match="inverted_softmax"):
        correct_hubs(s, _unit(4, 5), _unit(3, 5), "bogus")


def test_chunked_correction_equals_unchunked():
    q, bank, g = _unit(5, 16, seed=7), _unit(30, 16, seed=8), _unit(300, 16, seed=9)
    for method in ("inverted_softmax", "csls"):
        full = correct_hubs(q @ g.T, bank, g, method)
        chunked = chunked_scores(lambda s, e, c, m=method: correct_hubs(q @ c.T, bank, c, m), g, 41)
        torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)
    assert inverted_softmax(q @ g.T, bank @ g.T).shape == csls(q @ g.T, bank @ g.T).shape


def test_corrections_reduce_hub_occurrence_on_hub_heavy_gallery():
    # Queries and bank share a common direction; a few gallery items sit on it (hubs).
    dim, common = 32, _unit(1, 32, seed=10)
    queries = l2_normalize(_unit(200, dim, seed=11) + 1.2 * common)
    bank = l2_normalize(_unit(500, dim, seed=12) + 1.2 * common)
    gallery = torch.cat(
        [l2_normalize(_unit(5, dim, seed=13) + 3.0 * common), _unit(995, dim, seed=14)]
    )

    def hub_share(scores):
        top = scores.topk(10, dim=1).indices
        return (top < 5).float().mean().item()  # share of top-10 slots taken by the 5 hubs

    plain = queries @ gallery.T
    assert hub_share(plain) > 0.3
    # inverted softmax removes most hub slots; CSLS (2s - r_g) only a few in this setting
    assert hub_share(correct_hubs(plain, bank, gallery, "inverted_softmax")) < 0.05
    assert hub_share(correct_hubs(plain, bank, gallery, "csls")) < hub_share(plain)
