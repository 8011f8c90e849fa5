"""Query-side rules against slow references written from the formulas (float64 loops)."""

import math

import pytest
import torch

from cir.scoring import (
    l2_normalize,
    mean_query,
    pdv_auto_alpha_image,
    pdv_query,
    prompt_direction,
    weimocir_query,
)


def _norm(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_weimocir_query_matches_formula():
    v, t = _rand(6, 16, seed=1), _rand(6, 16, seed=2)
    for raw in (False, True):
        got = weimocir_query(v, t, alpha=0.8, raw=raw)
        for q in range(6):
            vq, tq = v[q].double().tolist(), t[q].double().tolist()
            if not raw:
                vq, tq = _norm(vq), _norm(tq)
            want = _norm([0.2 * a + 0.8 * b for a, b in zip(vq, tq, strict=True)])
            assert got[q].double().tolist() == pytest.approx(want, abs=1e-6)


def test_weimocir_raw_differs_from_normalised_when_norms_differ():
    v, t = _rand(3, 8, seed=3) * 5.0, _rand(3, 8, seed=4)
    assert not torch.allclose(weimocir_query(v, t, raw=True), weimocir_query(v, t))


def test_mean_query_is_normalised_mean():
    e = _rand(4, 5, 8, seed=5)
    got = mean_query(e)
    for q in range(4):
        mean = [sum(e[q, i, d].item() for i in range(5)) / 5 for d in range(8)]
        assert got[q].tolist() == pytest.approx(_norm(mean), abs=1e-6)


def _pdv_reference(v, r, c, alpha_i, alpha_t, beta):
    v, r, c = _norm(v), _norm(r), _norm(c)
    delta = [a - b for a, b in zip(c, r, strict=True)]
    q_t = [a + alpha_t * d for a, d in zip(r, delta, strict=True)]
    q_i = [a + alpha_i * d for a, d in zip(v, delta, strict=True)]
    return _norm([(1 - beta) * a + beta * b for a, b in zip(q_i, q_t, strict=True)])


def test_pdv_matches_formula():
    v, r, c = _rand(5, 12, seed=6), _rand(5, 12, seed=7), _rand(5, 12, seed=8)
    got = pdv_query(v, r, c, alpha_image=1.4, alpha_text=1.2, beta=0.75)
    for q in range(5):
        want = _pdv_reference(v[q].tolist(), r[q].tolist(), c[q].tolist(), 1.4, 1.2, 0.75)
        assert got[q].tolist() == pytest.approx(want, abs=1e-6)


def test_pdv_identity_recovers_base_query():
    v, r, c = _rand(7, 32, seed=9), _rand(7, 32, seed=10), _rand(7, 32, seed=11)
    got = pdv_query(v, r, c, alpha_image=1.4, alpha_text=1.0, beta=1.0)
    torch.testing.assert_close(got, l2_normalize(c), atol=1e-6, rtol=0)
    torch.testing.assert_close(pdv_query(None, r, c, alpha_text=1.0, beta=1.0), l2_normalize(c))


def test_pdv_without_image_needs_beta_one():
    r, c = _rand(2, 4, seed=12), _rand(2, 4, seed=13)
    with pytest.raises(ValueError, match="reference image"):
        pdv_query(None, r, c, beta=0.75)


def test_prompt_direction():
    c, r = _rand(3, 6, seed=14), _rand(3, 6, seed=15)
    torch.testing.assert_close(prompt_direction(c, r), l2_normalize(c) - l2_normalize(r))


def test_pdv_auto_alpha_minimises_gap():
    v, r, c = _rand(4, 10, seed=16), _rand(4, 10, seed=17), _rand(4, 10, seed=18)
    delta = prompt_direction(c, r)
    alpha = pdv_auto_alpha_image(v, r, delta, alpha_text=1.2)
    assert alpha.shape == (4,)
    ref = l2_normalize(r)
    q_t = ref + 1.2 * delta

    def gap(q, a):
        return (l2_normalize(v[q]) + a * delta[q] - q_t[q]).norm().item()

    for q in range(4):
        best = gap(q, alpha[q].item())
        for step in (-0.05, 0.05, -0.5, 0.5):
            assert best <= gap(q, alpha[q].item() + step) + 1e-7
    # the per-query alphas plug into the fused query
    fused = pdv_query(v, r, c, alpha_image=alpha, alpha_text=1.2, beta=0.75)
    for q in range(4):
        want = _pdv_reference(
            v[q].tolist(), r[q].tolist(), c[q].tolist(), alpha[q].item(), 1.2, 0.75
        )
        assert fused[q].tolist() == pytest.approx(want, abs=1e-6)


def test_pdv_auto_alpha_zero_direction_falls_back_to_alpha_text():
    v, r = _rand(2, 6, seed=19), _rand(2, 6, seed=20)
    alpha = pdv_auto_alpha_image(v, r, torch.zeros(2, 6), alpha_text=1.3)
    assert alpha.tolist() == pytest.approx([1.3, 1.3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_query_side_keeps_shape_and_dtype(dtype):
    v, r, c = (_rand(9, 24, seed=s, dtype=dtype) for s in (21, 22, 23))
    for out in (weimocir_query(v, c), pdv_query(v, r, c), mean_query(torch.stack([r, c], 1))):
        assert out.shape == (9, 24) and out.dtype == dtype
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(9, dtype=dtype))
