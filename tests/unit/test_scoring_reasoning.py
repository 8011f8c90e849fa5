"""The scoring formulas of ImageScope, CoTMR, MCoT-RE, SETR and SC4CIR against hand-computed
values, and their retrieve rules on a weight-free index against brute force."""

import pytest
import torch

from cir import Query, QueryState
from cir.errors import ConfigError, DataError
from cir.index import GalleryIndex
from cir.scoring import l2_normalize, weimocir_scores
from cir.scoring.intersection import intersection_scores, similarity_moments, standardize
from cir.scoring.objects import multi_grained_scores, object_scores
from cir.scoring.verification import (
    consistency_scores,
    promote_first,
    proposition_matches,
    reverse_query_similarity,
)
from cir.stages.base import Context
from cir.stages.retrieve import Retrieve
from cir.stages.retrieve.rules import make_rule, rule_names
from cir.types import StageRecord

D = 8
E = torch.eye(4)  # orthonormal axes make the dot products easy to read


def _unit(*shape, seed=0):
    return l2_normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))


# ---------------------------------------------------------------------------- CoTMR
def test_object_scores_by_hand():
    gallery = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0]])
    objects = E[:2]
    assert torch.allclose(object_scores(objects, gallery), torch.tensor([0.5, 0.7]))
    assert torch.allclose(object_scores(objects, gallery, "max"), torch.tensor([1.0, 0.8]))
    assert torch.equal(object_scores(torch.empty(0, 4), gallery), torch.zeros(2))
    with pytest.raises(ValueError, match="aggregate"):
        object_scores(objects, gallery, "sum")


def test_multi_grained_scores_by_hand():
    gallery = torch.tensor([[0.6, 0.8, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    caption = E[:1]  # c.g = [0.6, 0.0]
    present, absent = [E[1:2]], [E[2:3]]  # p.g = [0.8, 0.0], a.g = [0.0, 1.0]
    got = multi_grained_scores(caption, present, absent, gallery, w_present=0.5, w_absent=2.0)
    # [0.6 + 0.5 * 0.8 - 0, 0 + 0 - 2.0 * 1.0]
    assert torch.allclose(got, torch.tensor([[1.0, -2.0]]))
    no_objects = multi_grained_scores(caption, [E[:0]], [E[:0]], gallery)
    assert torch.allclose(no_objects, torch.tensor([[0.6, 0.0]]))
    with pytest.raises(ValueError, match="as many"):
        multi_grained_scores(caption, [], [], gallery)


# ---------------------------------------------------------------------------- SETR
def test_similarity_moments_match_brute_force_over_chunks():
    queries, gallery = _unit(3, D, seed=1), _unit(50, D, seed=2).half()
    mean, std = similarity_moments(queries, gallery, chunk_rows=7)
    sims = queries @ gallery.float().T
    torch.testing.assert_close(mean, sims.mean(dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, sims.std(dim=1, unbiased=False), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        similarity_moments(queries, gallery[:0])


def test_intersection_takes_the_smaller_standardised_similarity():
    gallery = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0]])
    image, text = E[:1], E[1:2]  # v.g = [1, 0, .6], t.g = [0, 1, .8]
    moments = (torch.tensor([0.5]), torch.tensor([0.5]))
    got = intersection_scores(image, text, gallery, moments, moments)
    # z_image = [1, -1, 0.2], z_text = [-1, 1, 0.6]: only the third is good at both
    assert torch.allclose(got, torch.tensor([[-1.0, -1.0, 0.2]]))
    union = intersection_scores(image, text, gallery, moments, moments, combine="sum")
    assert torch.allclose(union, torch.tensor([[0.0, 0.0, 0.8]]))
    assert torch.allclose(
        standardize(torch.ones(1, 2), torch.ones(1), torch.zeros(1)), torch.zeros(1, 2)
    )


# ---------------------------------------------------------------------------- ImageScope
def test_proposition_matches_and_promote_first():
    assert proposition_matches([True, False, True], [True, True, True]) == 2
    assert proposition_matches([None, False], [False, False]) == 1
    with pytest.raises(ValueError):
        proposition_matches([True], [True, False])
    assert promote_first([False, False, True]) == [2, 0, 1]
    assert promote_first([True, True]) == [0, 1]
    assert promote_first([False, None]) == [0, 1]


def test_imagescope_average_of_three_descriptions_is_the_weimocir_paper_form():
    """Averaging (1 - tau) t.G + tau t.C over the descriptions ranks like the rule on their mean."""
    gallery, captions = _unit(30, D, seed=3), _unit(30, 1, D, seed=4)
    descriptions = _unit(3, D, seed=5)
    tau = 0.15
    per_description = [
        (1 - tau) * (t @ gallery.T) + tau * (t @ captions[:, 0].T) for t in descriptions
    ]
    averaged = torch.stack(per_description).mean(dim=0)
    mean = descriptions.mean(dim=0)
    rule = weimocir_scores(l2_normalize(mean)[None], gallery, captions, None, beta=tau)[0]
    torch.testing.assert_close(rule * mean.norm(), averaged, atol=1e-5, rtol=1e-5)
    assert torch.equal(rule.argsort(descending=True), averaged.argsort(descending=True))


# ---------------------------------------------------------------------------- SC4CIR
def test_reverse_query_similarity_by_hand():
    candidates = torch.stack([E[0], E[1]])
    reverse, reference = E[1], E[1]
    got = reverse_query_similarity(candidates, reverse, reference, alpha=0.5)
    # q_0 = normalize(0.5 e0 + 0.5 e1) -> q.e1 = 1/sqrt(2); q_1 = e1 -> 1
    assert torch.allclose(got, torch.tensor([2**-0.5, 1.0]))
    with pytest.raises(ValueError, match="alpha"):
        reverse_query_similarity(candidates, reverse, reference, alpha=1.5)


def test_consistency_scores_add_weighted_checks():
    original = torch.tensor([0.3, 0.2])
    checks = [torch.tensor([0.1, 0.5]), torch.tensor([0.0, 0.4])]
    assert torch.allclose(consistency_scores(original, checks, (1, 1, 1)), torch.tensor([0.4, 1.1]))
    assert torch.allclose(
        consistency_scores(original, checks[:1], (2.0, 0.5)), torch.tensor([0.65, 0.65])
    )
    with pytest.raises(ValueError, match="weights"):
        consistency_scores(original, checks, (1.0,))


# ---------------------------------------------------------------------------- the rules
@pytest.fixture()
def index():
    return GalleryIndex.from_embeddings([f"g{i}" for i in range(40)], _unit(40, D, seed=7))


def _states(stage, n=3):
    states = []
    for i in range(n):
        state = QueryState(Query(f"q{i}", id=f"q{i}"))
        for j, name in enumerate(("caption", "image", "text")):
            state.embeddings[name] = _unit(D, seed=20 + 10 * i + j)
        state.embeddings["present"] = _unit(i + 1, D, seed=30 + i)
        state.embeddings["absent"] = _unit(i, D, seed=40 + i)  # the first query has none
        state.trace.append(StageRecord(stage=stage.name, name=stage.instance))
        states.append(state)
    return states


def _best(scores, k):
    return [f"g{j}" for j in scores.argsort(descending=True)[:k].tolist()]


def test_multi_grained_rule_matches_the_formula(index):
    assert {"multi_grained", "intersection"} <= set(rule_names())
    stage = Retrieve(query="caption", k=5, rule="multi_grained", rule_params={"w_absent": 1.0})
    assert [p.kind for p in stage.inputs] == ["vector", "vectors", "vectors"]
    states = stage.run(_states(stage), Context(index=index))
    gallery = index.embeddings.float()
    for s in states:
        want = multi_grained_scores(
            s.embeddings["caption"][None], [s.embeddings["present"]], [s.embeddings["absent"]],
            gallery, 0.5, 1.0,
        )[0]  # fmt: skip
        assert list(s.ranking.ids) == _best(want, 5)
        torch.testing.assert_close(
            torch.tensor(s.ranking.scores), want.sort(descending=True)[0][:5], atol=1e-3, rtol=1e-3
        )


def test_multi_grained_rule_names_the_missing_objects(index):
    stage = Retrieve(query="caption", k=5, rule="multi_grained")
    states = _states(stage, 1)
    del states[0].embeddings["absent"]
    with pytest.raises(DataError, match="encode_text"):
        stage.run(states, Context(index=index))


def test_intersection_rule_matches_brute_force(index):
    stage = Retrieve(query="text", k=6, rule="intersection", rule_params={"image": "image"})
    states = stage.run(_states(stage), Context(index=index))
    gallery = index.embeddings.float()
    for s in states:
        v, t = s.embeddings["image"] @ gallery.T, s.embeddings["text"] @ gallery.T
        zv = (v - v.mean()) / v.std(unbiased=False)
        zt = (t - t.mean()) / t.std(unbiased=False)
        assert list(s.ranking.ids) == _best(torch.minimum(zv, zt), 6)
    with pytest.raises(ConfigError, match="combine"):
        make_rule("intersection", {"combine": "max"})
