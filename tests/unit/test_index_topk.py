"""RunningTopK against a single torch.topk over the whole score matrix."""

from __future__ import annotations

import pytest
import torch

from cir.index.topk import GROUP, RunningTopK


def _run(scores: torch.Tensor, k: int, step: int) -> RunningTopK:
    best = RunningTopK(k)
    for start in range(0, scores.shape[1], step):
        best.push(scores[:, start : start + step].clone(), start)
    return best


@pytest.mark.parametrize("step", [7, GROUP, GROUP * 3 + 5, 1000, 5000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_chunked_equals_one_topk(step, dtype):
    g = torch.Generator().manual_seed(step)
    scores = torch.randn(13, 5000, generator=g).to(dtype)
    best = _run(scores, 25, step)
    ref_v = torch.topk(scores.float(), 25, dim=1).values
    assert torch.equal(best.values.float(), ref_v)
    assert torch.equal(scores.float().gather(1, best.positions), ref_v)  # ties may swap ids
    assert all(len(set(row.tolist())) == 25 for row in best.positions)


def test_positions_point_at_their_scores():
    scores = torch.randn(6, 3000, generator=torch.Generator().manual_seed(1))
    best = _run(scores, 40, 256)
    assert torch.equal(scores.gather(1, best.positions), best.values)
    assert all(len(set(row.tolist())) == 40 for row in best.positions)


def test_increasing_scores_use_the_fallback_and_stay_exact():
    scores = torch.arange(20000.0).repeat(3, 1)  # every chunk beats all earlier ones
    best = _run(scores, 30, 1000)
    assert best.positions[0].tolist() == list(range(19999, 19969, -1))


def test_masked_and_nan_scores_are_never_kept():
    scores = torch.randn(4, 2000, generator=torch.Generator().manual_seed(2))
    scores[0, 100:] = float("-inf")
    scores[1, ::3] = float("nan")
    scores[2, 1500:1600] = float("nan")
    best = _run(scores, 120, 300)
    assert torch.isinf(best.values[0, 100:]).all() and torch.isfinite(best.values[0, :100]).all()
    assert not torch.isnan(best.values).any()
    clean = scores[1].nan_to_num(nan=float("-inf"))
    assert torch.equal(best.values[1], torch.topk(clean, 120).values)
    clean = scores[2].nan_to_num(nan=float("-inf"))
    assert torch.equal(best.values[2], torch.topk(clean, 120).values)


def test_k_larger_than_the_columns_keeps_everything():
    scores = torch.randn(2, 50)
    best = _run(scores, 80, 16)
    assert best.values.shape == (2, 50)
    assert torch.equal(best.values, scores.sort(dim=1, descending=True).values)
