"""Paracosm's query formula and twin rule, WISER's fusion, tie-breaking and refinement decisions,
checked against values computed by hand (no model weights)."""

from __future__ import annotations

import math

import pytest
import torch

from cir import Query, QueryState
from cir.errors import DataError
from cir.index import GalleryIndex
from cir.llm import load_backend
from cir.pipeline import load_pipeline
from cir.prompts import ParseError
from cir.rerank.confidence import (
    best_candidate,
    fuse_confidences,
    needs_refinement,
    read_suggestion,
    refined_instruction,
)
from cir.resources import Resources
from cir.scoring import twin_scores
from cir.stages.base import Context
from cir.stages.fuse_confidence import FuseConfidence
from cir.stages.refine import Refine
from cir.stages.retrieve import Retrieve
from cir.types import StageRecord


def state_for(*stages, text="make it red", ref=None, **data) -> QueryState:
    state = QueryState(Query(text, reference_id=ref, id="q"), data=dict(data))
    state.trace += [StageRecord(stage=s.name, name=s.instance) for s in stages]
    return state


# ---------------------------------------------------------------------------- Paracosm
def test_paracosm_query_formula_by_hand():
    """q = 0.3 normalize(V + T) + 0.7 t, normalised, with raw V, T and a normalised t."""
    pipe = load_pipeline("paracosm")
    mental, query = pipe.stage("fuse_mental"), pipe.stage("fuse_query")
    state = state_for(mental, query)
    embeddings = {"mental_image": (3.0, 0.0), "description": (0.0, 4.0), "modification": (1.0, 0.0)}
    for name, values in embeddings.items():
        state.embeddings[name] = torch.tensor(values)
        state.encoders[name] = "clip"
    state = query.run(mental.run([state], Context()), Context())[0]
    # normalize((3, 4)) = (0.6, 0.8); 0.7 (1, 0) + 0.3 (0.6, 0.8) = (0.88, 0.24); |.| = sqrt(0.832)
    norm = math.sqrt(0.88**2 + 0.24**2)
    torch.testing.assert_close(state.embeddings["mental"], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(state.embeddings["query"], torch.tensor([0.88, 0.24]) / norm)


def test_twin_scores_by_hand():
    query = torch.tensor([[0.6, 0.8]])
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    twins = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # image 1: normalize((1, 1)) = (0.7071, 0.7071) -> 0.6 * 0.7071 + 0.8 * 0.7071 = 0.98995
    # image 2: normalize((0, 2)) = (0, 1) -> 0.8
    want = torch.tensor([[1.4 / math.sqrt(2), 0.8]])
    torch.testing.assert_close(twin_scores(query, gallery, twins), want)


def test_retrieve_with_the_twins_rule_ranks_by_the_joined_embedding():
    ids = ["photo_a", "photo_b", "photo_c"]
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    index = GalleryIndex.from_embeddings(ids, gallery, dtype="fp32")
    index.set_sidecar("twins", torch.tensor([[0.0, 1.0], [0.0, 1.0], [-0.6, -0.8]]))
    stage = Retrieve(query="query", k=3, rule="twins")
    state = state_for(stage)
    state.embeddings["query"] = torch.tensor([0.6, 0.8])
    ranking = stage.run([state], Context(index=index))[0].ranking
    # photo_c's twin cancels it exactly: normalize((0, 0)) = (0, 0), score 0
    assert ranking.ids == ("photo_a", "photo_b", "photo_c")
    assert ranking.scores == pytest.approx((1.4 / math.sqrt(2), 0.8, 0.0), abs=1e-6)
    assert stage.record(state).notes["rule"] == "twins"


def test_the_twins_rule_names_what_is_missing():
    index = GalleryIndex.from_embeddings(["a", "b"], torch.eye(2), dtype="fp32")
    stage = Retrieve(query="query", rule="twins")
    state = state_for(stage)
    state.embeddings["query"] = torch.tensor([1.0, 0.0])
    with pytest.raises(DataError, match="no sidecar 'twins'"):
        stage.run([state], Context(index=index))
    index.set_sidecar("twins", torch.ones(2, 3))
    with pytest.raises(DataError, match="cir index imagine"):
        stage.run([state], Context(index=index))


# ---------------------------------------------------------------------------- WISER fusion
def test_fusion_sums_confidences_and_breaks_ties_in_order():
    text = {"a": 0.9, "b": 0.4, "c": 0.2, "d": 0.5}
    image = {"b": 0.5, "e": 0.9, "d": 0.5, "f": 0.7}
    fused = fuse_confidences([text, image])
    # sums: a .9, b .9, e .9, d 1.0, f .7, c .2; d first; among the .9s max decides a/e (.9)
    # over b (.5); between a and e the text branch's confidence decides: a (.9) over e (0)
    assert [gid for gid, _ in fused] == ["d", "a", "e", "b", "f", "c"]
    assert [s for _, s in fused] == pytest.approx([1.0, 0.9, 0.9, 0.9, 0.7, 0.2])


def test_fusion_tie_breakers_can_be_reordered_or_dropped():
    text, image = {"b": 0.3, "a": 0.3}, {"c": 0.3}
    assert [g for g, _ in fuse_confidences([text, image], ties=["id"])] == ["a", "b", "c"]
    assert [g for g, _ in fuse_confidences([text, image], ties=["first", "id"])] == ["a", "b", "c"]
    assert [g for g, _ in fuse_confidences([text, image], ties=[])] == ["b", "a", "c"]
    # a candidate without a score counts as missing; missing may be set
    fused = dict(fuse_confidences([{"x": None, "y": 0.1}, {"x": 0.2}], missing=0.05))
    assert fused == pytest.approx({"x": 0.25, "y": 0.15})
    with pytest.raises(ValueError, match="unknown tie-breaker"):
        fuse_confidences([text, image], ties=["rank"])


def test_best_candidate_and_the_tau_decision():
    scores = {"a": 0.4, "b": 0.7, "c": 0.7, "d": None}
    assert best_candidate(scores, ["a", "c", "b", "d"]) == ("c", 0.7)  # equal: better-ranked
    assert best_candidate({"d": None}, ["d"]) == (None, 0.0)
    assert needs_refinement(0.7, 0.7) is True  # the reference code stops only above tau
    assert needs_refinement(0.7001, 0.7) is False
    assert needs_refinement(0.0, 0.7) is True


def test_refined_instruction_and_suggestion_reading():
    assert refined_instruction("make it red.", '"Add a hat."') == "make it red and Add a hat."
    assert read_suggestion("Step 2: missing.\nSuggestion: add two dogs\non the left") == (
        "add two dogs on the left"
    )
    assert read_suggestion("**Suggestion:** put the cat on a chair.") == "put the cat on a chair."
    assert read_suggestion("make the sky darker") == "make the sky darker"
    assert read_suggestion("No change needed.") is None
    assert read_suggestion("Good retrieval, no more loops needed.") is None
    with pytest.raises(ParseError):
        read_suggestion("Suggestion:   ")


def test_fuse_confidence_stage_writes_the_fused_ranking():
    stage = FuseConfidence(branches=["verify_text", "verify_image"])
    state = state_for(
        stage,
        verify_text={"p_yes": {"a": 0.9, "b": 0.4}, "order": ["a", "b"]},
        verify_image={"p_yes": {"b": 0.5, "c": 0.95}, "order": ["c", "b"]},
    )
    state = stage.run([state], Context())[0]
    assert state.ranking.ids == ("c", "a", "b")  # .95, then .9 (max .9) before .9 (max .5)
    assert state.ranking.scores == pytest.approx((0.95, 0.9, 0.9))
    assert state.data["fuse_confidence"]["branches"]["verify_image"]["c"] == 0.95
    with pytest.raises(DataError, match="mode: verify"):
        stage.run([state_for(stage, verify_text={"order": []})], Context())
    lone = state_for(stage, verify_image={"p_yes": {"c": 0.3}, "order": ["c"]})
    assert stage.run([lone], Context())[0].ranking.ids == ("c",)  # verify_text skipped it


# ---------------------------------------------------------------------------- WISER refine
@pytest.fixture()
def captioned_index():
    ids = ["g1", "g2", "g3"]
    index = GalleryIndex.from_embeddings(ids, torch.eye(3), dtype="fp32")
    rows = {"captions": [["a red car"], ["a blue car"], ["a bus"]]}
    index.set_sidecar("captions", torch.zeros(3, 1, 3), {"k": 1}, rows)
    return index


def test_refine_asks_only_below_tau_and_writes_the_next_instruction(captioned_index):
    refiner = {"backend": "scripted", "name": "refiner", "default": "Suggestion: add a hat."}
    stage = Refine("refine_text", verified="verify_text", tau=0.7, llm=refiner)
    resources = Resources()
    ctx = Context(index=captioned_index, resources=resources)
    unsure = {"p_yes": {"g1": 0.2, "g2": 0.7, "g3": 0.1}, "order": ["g1", "g2", "g3"]}
    sure = {"p_yes": {"g1": 0.71, "g2": 0.3}, "order": ["g1", "g2"]}
    states = [state_for(stage, verify_text=unsure), state_for(stage, verify_text=sure)]
    for state in states:
        state.captions = ["a car on a road"]
    stage.setup(ctx)
    states = stage.run(states, ctx)
    calls = load_backend(refiner, resources).calls
    assert len(calls) == 1  # only the unsure query asks the refiner
    assert "a blue car" in calls[0].prompt_text  # the best candidate (g2, 0.7) by its caption
    assert "a car on a road" in calls[0].prompt_text
    assert states[0].data["refine_text"] == "make it red and add a hat."
    assert states[1].data["refine_text"] == "make it red"
    notes = [s.record("refine_text").notes["refine"] for s in states]
    assert notes[0] | {"answer": None} == {
        "best": "g2", "confidence": 0.7, "tau": 0.7, "triggered": True,
        "answer": None, "suggestion": "add a hat.",
    }  # fmt: skip
    assert notes[1] == {"best": "g1", "confidence": 0.71, "tau": 0.7, "triggered": False}


def test_refine_keeps_the_modification_when_no_change_is_needed(captioned_index):
    refiner = {"backend": "scripted", "name": "content", "default": "No change needed."}
    stage = Refine("refine_image", verified="verify_image", prompt="image", llm=refiner)
    ctx = Context(index=captioned_index, resources=Resources())
    state = state_for(stage, verify_image={"p_yes": {"g3": 0.1}, "order": ["g3"]})
    stage.setup(ctx)
    state = stage.run([state], ctx)[0]
    assert state.data["refine_image"] == "make it red"
    assert state.record("refine_image").notes["refine"]["suggestion"] is None


def test_refine_says_how_to_make_the_gallery_captions():
    index = GalleryIndex.from_embeddings(["g1"], torch.eye(1), dtype="fp32")
    stage = Refine(verified="v", llm={"backend": "scripted", "default": "Suggestion: x"})
    ctx = Context(index=index, resources=Resources())
    stage.setup(ctx)
    with pytest.raises(DataError, match="cir index caption"):
        stage.run([state_for(stage, v={"p_yes": {"g1": 0.1}, "order": ["g1"]})], ctx)
    with pytest.raises(DataError, match="mode: verify"):
        stage.run([state_for(stage, v={"order": ["g1"]})], ctx)  # a listwise re-ranker's data
    skipped = stage.run([state_for(stage)], ctx)[0]  # the verifier skipped a lone candidate
    assert skipped.data["refine"] == "make it red"
    assert skipped.record("refine").notes["refine"]["triggered"] is False
