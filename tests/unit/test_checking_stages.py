"""The stages that check candidates one by one (ImageScope's verifier and evaluator) and the
``rescore`` stage, with the scripted backend on a gallery of solid colours: the scripted model
tells candidates apart by the pixels it is sent."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cir.cache import ContentCache
from cir.errors import ConfigError, DataError
from cir.index import GalleryIndex
from cir.llm import ScriptedLLM, spec_key
from cir.prompts import load_prompt
from cir.rerank.pair import side_by_side
from cir.resources import Resources
from cir.stages.base import Context, stage_class
from cir.stages.verify_propositions import read_propositions
from cir.types import Query, QueryState, Ranking, StageRecord

COLOURS = {
    "red": (220, 20, 20),
    "green": (20, 220, 20),
    "blue": (20, 20, 220),
    "yellow": (220, 220, 20),
    "grey": (120, 120, 120),
}
IDS = list(COLOURS)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    folder = tmp_path_factory.mktemp("solid")
    paths = []
    for name, colour in COLOURS.items():
        paths.append(folder / f"{name}.png")
        Image.new("RGB", (60, 40), colour).save(paths[-1])
    reference = folder / "reference.png"
    Image.new("RGB", (50, 50), (0, 0, 0)).save(reference)
    emb = torch.eye(len(IDS), 8)  # candidate i is the i-th axis
    return GalleryIndex.from_embeddings(IDS, emb, paths=paths, device="cpu"), reference


def colour(image: Image.Image, xy=None) -> str:
    pixel = image.getpixel(xy or (image.width // 2, image.height // 2))
    return next(name for name, value in COLOURS.items() if value == pixel)


def states_for(reference, n=1, **data) -> list[QueryState]:
    out = []
    for i in range(n):
        state = QueryState(Query("make it brighter", reference=reference, id=f"q{i}"))
        state.ranking = Ranking(tuple(IDS), tuple(float(5 - k) for k in range(5)))
        state.data.update(data)
        out.append(state)
    return out


def run(name, llm, states, index, cache=None, **params):
    spec = {"backend": "scripted", "name": f"{name}{id(llm)}", "default": "unused"}
    resources = Resources()
    resources.get(spec_key(spec), lambda: llm)
    stage = stage_class(name)(llm=spec, **params)
    ctx = Context(index=index, resources=resources, cache=cache)
    stage.setup(ctx)
    for state in states:
        state.trace.append(StageRecord(stage=name, name=stage.instance))
    return stage.run(states, ctx)


# ---------------------------------------------------------------------------- propositions
QUESTIONS = [["Is it yellow?", "yes"], ["Is it red?", "no"]]


def vqa(req) -> str:
    """A perfect colour oracle: answers the question about the one image it sees."""
    seen = colour(req.images[0])
    asked = req.prompt_text.rsplit("Is it ", 1)[1].rstrip("?")
    return "yes" if asked == seen else "no"


def test_read_propositions_accepts_pairs_objects_and_booleans():
    got, dropped = read_propositions(
        [["Q1?", "Yes."], {"question": "Q2?", "answer": "False"}, ["Q3?", True], ["Q4?"], [1, 2]]
    )
    assert got == [("Q1?", True), ("Q2?", False), ("Q3?", True)] and dropped == 2
    assert read_propositions(None) == ([], 0) and read_propositions("nope") == ([], 1)


def test_verify_propositions_sorts_by_matches_stably(gallery):
    index, reference = gallery
    llm = ScriptedLLM(fn=vqa)
    state = run("verify_propositions", llm, states_for(reference, questions=QUESTIONS), index)[0]
    # matches: red 0, green 1, blue 1, yellow 2, grey 1 -> yellow, then the 1s in retrieval order
    assert state.ranking.ids == ("yellow", "green", "blue", "grey", "red")
    assert state.ranking.scores == (5.0, 4.0, 3.0, 2.0, 1.0)
    data = state.data["verify_propositions"]
    assert data["matches"] == {"red": 0, "green": 1, "blue": 1, "yellow": 2, "grey": 1}
    assert data["answers"]["yellow"] == [True, False]
    assert len(llm.calls) == 5 * 2 and all(len(c.images) == 1 for c in llm.calls)
    assert "Reply with yes or no only. Is it yellow?" in llm.calls[0].prompt_text


def test_verify_propositions_respects_top_n_and_counts_unreadable_answers(gallery):
    index, reference = gallery
    llm = ScriptedLLM(fn=lambda req: "maybe" if colour(req.images[0]) == "green" else vqa(req))
    states = states_for(reference, questions=[*QUESTIONS, ["?"]])
    state = run("verify_propositions", llm, states, index, top_n=3)[0]
    assert state.ranking.ids[3:] == ("yellow", "grey")  # the tail does not move
    record = state.record("verify_propositions")
    assert record.fallbacks == 2 and record.notes["dropped_propositions"] == 1
    # green's unreadable answers count as "no": it matches "Is it red? no" once
    assert state.data["verify_propositions"]["matches"]["green"] == 1
    assert len(llm.calls) == 3 * 2


def test_verify_propositions_skips_queries_without_propositions(gallery):
    index, reference = gallery
    llm = ScriptedLLM(fn=vqa)
    state = run("verify_propositions", llm, states_for(reference, questions=[]), index)[0]
    assert state.ranking.ids == tuple(IDS) and not llm.calls
    assert state.record("verify_propositions").notes["skipped"] == "no propositions"


# ---------------------------------------------------------------------------- evaluate
def evaluator(accept: set[str]):
    def answer(req) -> str:
        pair = req.images[0]
        right = colour(pair, (pair.width - pair.height // 2, pair.height // 2))
        return "Answer: Yes\nIt fits." if right in accept else "Answer: No\nIt does not."

    return answer


def test_side_by_side_puts_the_reference_left_and_the_candidate_right():
    pair = side_by_side(
        Image.new("RGB", (40, 20), "white"), Image.new("RGB", (10, 30), "blue"), 32, 4
    )
    assert pair.size == (68, 32)
    assert pair.getpixel((16, 16)) == (255, 255, 255) and pair.getpixel((34, 16)) == (0, 0, 0)
    assert pair.getpixel((52, 16)) == (0, 0, 255) and pair.getpixel((37, 16)) == (128, 128, 128)
    with pytest.raises(ValueError, match="tile"):
        side_by_side(pair, pair, 10)


def test_evaluate_moves_the_first_accepted_candidate_up_and_stops(gallery):
    index, reference = gallery
    llm = ScriptedLLM(fn=evaluator({"blue", "green"}))
    states = states_for(reference, n=2)
    states[1].ranking = Ranking(
        ("blue", "red", "green", "yellow", "grey"), states[1].ranking.scores
    )
    first, second = run("evaluate", llm, states, index, tile_size=32)
    # q0: red no, green yes -> green first, blue never asked; q1: blue yes at once
    assert first.ranking.ids == ("green", "red", "blue", "yellow", "grey")
    assert first.data["evaluate"]["verdicts"] == {"red": False, "green": True}
    assert second.ranking.ids == ("blue", "red", "green", "yellow", "grey")
    assert len(llm.calls) == 3 and llm.batch_sizes == [2, 1]
    text = llm.calls[0].prompt_text
    assert '"make it brighter"' in text and "Answer: Yes" in text
    assert first.record("evaluate").notes["requests"] == 2


def test_evaluate_keeps_the_order_when_nothing_is_accepted_and_counts_bad_answers(
    gallery, tmp_path
):
    index, reference = gallery
    llm = ScriptedLLM(fn=lambda req: "I am not sure.")
    cache = ContentCache(tmp_path)
    state = run("evaluate", llm, states_for(reference), index, cache=cache, tile_size=32)[0]
    assert state.ranking.ids == tuple(IDS)
    record = state.record("evaluate")
    assert record.fallbacks == 3 and len(llm.calls) == 3
    again = ScriptedLLM(fn=lambda req: "unused")
    cached = run("evaluate", again, states_for(reference), index, cache=cache, tile_size=32)[0]
    assert again.calls == [] and cached.record("evaluate").cache_hits == 3


def test_evaluate_prompt_reads_the_answer_line():
    prompt = load_prompt("evaluate/imagescope")
    assert prompt.images == 1 and prompt.variables == ("modification",)
    assert prompt.parse("Answer: No\nbecause") == "No"


# ---------------------------------------------------------------------------- rescore
def test_rescore_orders_the_head_by_the_second_query(gallery):
    index, reference = gallery
    stage = stage_class("rescore")(query="second", top_n=4)
    states = states_for(reference)
    states[0].embeddings["second"] = torch.tensor([0.1, 0.2, 0.0, 0.9, 0.5, 0, 0, 0])
    states[0].trace.append(StageRecord(stage="rescore", name="rescore"))
    state = stage.run(states, Context(index=index))[0]
    # head (red, green, blue, yellow) scored 0.1, 0.2, 0.0, 0.9; grey (0.5) is outside top 4
    assert state.ranking.ids == ("yellow", "green", "red", "blue", "grey")
    assert state.data["rescore"]["scores"]["yellow"] == pytest.approx(0.9, abs=1e-3)
    with pytest.raises(ConfigError, match="top_n"):
        stage_class("rescore")(top_n=1)


def test_rerankers_need_a_ranking(gallery):
    index, reference = gallery
    state = QueryState(Query("x", reference=reference))
    state.embeddings["query"] = torch.ones(8)
    state.trace.append(StageRecord(stage="rescore", name="rescore"))
    with pytest.raises(DataError, match="put a `retrieve` stage"):
        stage_class("rescore")().run([state], Context(index=index))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("verify_propositions", {"top_n": 1}, "top_n must be >= 2"),
        ("verify_propositions", {"max_image_side": 10}, "max_image_side must be >= 28"),
        ("evaluate", {"top_n": 0}, "top_n must be >= 1"),
        ("evaluate", {"tile_size": 8}, "tile_size must be >= 28"),
    ],
)
def test_bad_heads_are_refused_with_the_parameter_named(name, params, message):
    with pytest.raises(ConfigError, match=message):
        stage_class(name)(**params)
