"""The ``rerank`` stage with the scripted backend: every mode, parsing cases, fallbacks, caching.

The gallery is a folder of solid-colour images, so a scripted answer can tell which candidate
it is looking at from the pixels it was sent.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from cir.cache import ContentCache
from cir.errors import ConfigError, DataError
from cir.generation import AnswerParseError
from cir.index import GalleryIndex
from cir.llm import ScriptedLLM, spec_key
from cir.rerank.grid import BADGE, compose_grid
from cir.resources import Resources
from cir.stages.base import Context, stage_class
from cir.types import Query, QueryState, Ranking, StageRecord

COLOURS = {
    "red": (220, 20, 20),
    "green": (20, 220, 20),
    "blue": (20, 20, 220),
    "yellow": (220, 220, 20),
    "cyan": (20, 220, 220),
    "magenta": (220, 20, 220),
    "grey": (120, 120, 120),
    "orange": (250, 140, 0),
}
IDS = list(COLOURS)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    folder = tmp_path_factory.mktemp("solid_gallery")
    paths = []
    for name, colour in COLOURS.items():
        path = folder / f"{name}.png"
        Image.new("RGB", (300, 200), colour).save(path)
        paths.append(path)
    reference = folder / "reference.png"
    Image.new("RGB", (640, 480), (0, 0, 0)).save(reference)
    emb = torch.randn(len(IDS), 8, generator=torch.Generator().manual_seed(0))
    index = GalleryIndex.from_embeddings(IDS, emb, paths=paths, device="cpu")
    return index, reference


def colour_name(image: Image.Image) -> str:
    pixel = image.getpixel((image.width - 2, image.height - 2))
    return next(name for name, colour in COLOURS.items() if colour == pixel)


def make_states(reference, texts=("make it brighter",), order=IDS) -> list[QueryState]:
    scores = tuple(float(len(order) - i) for i in range(len(order)))
    states = []
    for i, text in enumerate(texts):
        state = QueryState(Query(text, reference=reference, id=f"q{i}"))
        state.ranking = Ranking(tuple(order), scores)
        states.append(state)
    return states


def run_stage(llm: ScriptedLLM, states, index, cache=None, **params):
    spec = {"backend": "scripted", "name": f"test{id(llm)}", "default": "unused"}
    resources = Resources()
    resources.get(spec_key(spec), lambda: llm)
    stage = stage_class("rerank")(llm=spec, **params)
    ctx = Context(index=index, resources=resources, cache=cache)
    stage.setup(ctx)
    for state in states:
        state.trace.append(StageRecord(stage="rerank", name=stage.instance))
    return stage.run(states, ctx)


# ---------------------------------------------------------------------------- listwise
def test_listwise_applies_the_json_order_and_keeps_the_tail(gallery):
    index, reference = gallery
    llm = ScriptedLLM(['Step 1 ...\nStep 3 ...\n```json\n{"ranking": [3, 1, 4, 2]}\n```'])
    [state] = run_stage(llm, make_states(reference), index, mode="listwise", top_n=4)
    assert state.ranking.ids == ("blue", "red", "yellow", "green", *IDS[4:])
    assert state.ranking.scores == tuple(float(8 - i) for i in range(8))
    data = state.data["rerank"]
    assert data["order"] == ["blue", "red", "yellow", "green"]
    assert {"id": "blue", "from": 3, "to": 1} in data["moves"]
    assert not data["fallback"] and data["placed"] == 4
    assert state.reasoning == [data["answer"]] and data["answer"].endswith("```")
    assert state.trace[-1].fallbacks == 0 and state.trace[-1].notes["moved"] == 4


def test_listwise_sends_reference_then_numbered_bounded_candidates(gallery):
    index, reference = gallery
    llm = ScriptedLLM(['{"ranking": [1, 2, 3]}'])
    run_stage(llm, make_states(reference), index, mode="listwise", top_n=3, max_image_side=128)
    [request] = llm.calls
    images = request.images
    assert len(images) == 4
    assert max(images[0].size) == 128 and images[0].getpixel((5, 5)) == (0, 0, 0)
    for image, name in zip(images[1:], IDS[:3], strict=True):
        assert max(image.size) <= 128
        assert image.getpixel((0, 0)) == BADGE  # the number badge
        assert colour_name(image) == name
    text = request.messages[-1].content
    assert "make it brighter" in text and "numbered 1 to 3" in text


def test_listwise_batches_all_queries_in_one_call(gallery):
    index, reference = gallery
    llm = ScriptedLLM(by_substring={"alpha": "[2, 1]", "beta": '{"ranking": [3, 2, 1]}'})
    states = make_states(reference, texts=("alpha change", "beta change"))
    run_stage(llm, states, index, mode="listwise", top_n=3)
    assert llm.batch_sizes == [2]
    assert states[0].ranking.ids[:3] == ("green", "red", "blue")
    assert states[1].ranking.ids[:3] == ("blue", "green", "red")


@pytest.mark.parametrize(
    ("answer", "top"),
    [
        (
            'Reasoning first. Candidate [2] is best.\n{"ranking": [2, 3, 1]}',
            ("green", "blue", "red"),
        ),
        ('{"ranking": [9, 3, 0]}', ("blue", "red", "green")),  # 9 and 0 dropped (1-based: 3 in)
        ('{"ranking": [0, 2, 1]}', ("red", "blue", "green")),  # 0-based
        ('{"ranking": [3]}', ("blue", "red", "green")),  # partial: the rest in retrieval order
        ('{"ranking": [2, 2, 3, 2]}', ("green", "blue", "red")),  # duplicates
    ],
)
def test_listwise_parsing_cases(gallery, answer, top):
    index, reference = gallery
    [state] = run_stage(ScriptedLLM([answer]), make_states(reference), index, top_n=3)
    assert state.ranking.ids[:3] == top
    assert state.ranking.ids[3:] == tuple(IDS[3:])
    assert state.trace[-1].fallbacks == 0


@pytest.mark.parametrize("answer", ["I am not sure.", "", '{"ranking": [7, 8]}'])
def test_unreadable_answers_retry_then_keep_retrieval_order(gallery, answer):
    index, reference = gallery
    llm = ScriptedLLM([answer])
    [state] = run_stage(llm, make_states(reference), index, top_n=4)
    assert state.ranking.ids == tuple(IDS)
    assert len(llm.calls) == 2  # the prompt declares one retry
    assert llm.calls[1].temperature > 0 and llm.calls[1].seed != llm.calls[0].seed
    record = state.trace[-1]
    assert record.fallbacks == 1 and record.notes["retries"] == 1
    assert state.data["rerank"]["fallback"] is True


def test_retry_that_parses_is_used(gallery):
    index, reference = gallery
    llm = ScriptedLLM(["garbage", "[4, 3, 2, 1]"])
    [state] = run_stage(llm, make_states(reference), index, top_n=4)
    assert state.ranking.ids[:4] == ("yellow", "blue", "green", "red")
    assert state.trace[-1].fallbacks == 0 and state.trace[-1].notes["retries"] == 1


def test_retries_param_overrides_the_prompt(gallery):
    index, reference = gallery
    llm = ScriptedLLM(["garbage"])
    run_stage(llm, make_states(reference), index, top_n=3, retries=3)
    assert len(llm.calls) == 4
    llm = ScriptedLLM(["garbage"])
    run_stage(llm, make_states(reference), index, top_n=3, fallback="fallback")
    assert len(llm.calls) == 1


def test_fallback_raise_stops_with_a_clear_error(gallery):
    index, reference = gallery
    with pytest.raises(AnswerParseError, match="does not parse"):
        run_stage(ScriptedLLM(["nope"]), make_states(reference), index, top_n=3, fallback="raise")


# ---------------------------------------------------------------------------- grid
def test_grid_sends_one_numbered_grid_and_keeps_it(gallery):
    index, reference = gallery
    llm = ScriptedLLM(['Tile 5 fits best. {"ranking": [5, 1]}'])
    params = {"mode": "grid", "top_n": 6, "grid_cols": 3, "tile_size": 64, "max_image_side": 96}
    [state] = run_stage(llm, make_states(reference), index, **params)
    [request] = llm.calls
    assert len(request.images) == 2
    grid = state.data["rerank_grid"]
    tiles = [Image.new("RGB", (96, 64), COLOURS[name]) for name in IDS[:6]]
    expected, layout = compose_grid(tiles, cols=3, tile_size=64)
    assert grid.tobytes() == expected.tobytes() == request.images[1].tobytes()
    assert (layout.cols, layout.rows) == (3, 2)
    assert state.ranking.ids[:6] == ("cyan", "red", "green", "blue", "yellow", "magenta")
    assert "of 6 candidate photos" in request.messages[-1].content
    assert state.trace[-1].notes["grid"] == {"size": list(grid.size), "cols": 3}


# ---------------------------------------------------------------------------- verify
def yes_logprobs(p_yes_by_colour):
    def logprobs(request, text):
        p = p_yes_by_colour[colour_name(request.images[1])]
        return {"Yes": math.log(p), "No": math.log(1 - p), "Maybe": math.log(1e-4)}

    return logprobs


def test_verify_scores_from_logprobs_batched_across_queries(gallery):
    index, reference = gallery
    p = {"red": 0.2, "green": 0.9, "blue": 0.5, "yellow": 0.9, "cyan": 0.1}
    llm = ScriptedLLM(default="Yes", logprobs=yes_logprobs(p))
    states = make_states(reference, texts=("one", "two"))
    run_stage(llm, states, index, mode="verify", top_n=5)
    assert llm.batch_sizes == [10]  # 2 queries x 5 candidates in one call
    assert all(req.logprobs == 20 and len(req.images) == 2 for req in llm.calls)
    for state in states:
        # green and yellow tie at 0.9: retrieval order (green first) breaks the tie
        assert state.ranking.ids == ("green", "yellow", "blue", "red", "cyan", *IDS[5:])
        data = state.data["rerank"]
        assert data["p_yes"]["blue"] == pytest.approx(0.5 / (0.5 + 0.5))
        assert set(data["source"].values()) == {"logprobs"}
        assert state.trace[-1].fallbacks == 0


def test_verify_reads_the_text_when_there_are_no_logprobs(gallery):
    index, reference = gallery
    answers = {"red": "No.", "green": "Yes", "blue": "no", "yellow": "YES, it matches"}
    llm = ScriptedLLM(fn=lambda req: answers[colour_name(req.images[1])])
    [state] = run_stage(llm, make_states(reference), index, mode="verify", top_n=4, logprobs=0)
    assert llm.calls[0].logprobs == 0
    assert state.ranking.ids[:4] == ("green", "yellow", "red", "blue")
    assert set(state.data["rerank"]["source"].values()) == {"text"}


def test_verify_unreadable_candidate_retries_then_keeps_its_place(gallery):
    index, reference = gallery
    answers = {"red": "No", "green": "hmm", "blue": "Yes"}
    llm = ScriptedLLM(fn=lambda req: answers[colour_name(req.images[1])])
    [state] = run_stage(llm, make_states(reference), index, mode="verify", top_n=3, logprobs=0)
    assert len(llm.calls) == 4  # three pairs, then one retry for green
    assert state.ranking.ids[:3] == ("blue", "green", "red")  # green pinned at rank 2
    assert state.data["rerank"]["p_yes"]["green"] is None
    record = state.trace[-1]
    assert record.fallbacks == 1 and record.notes["retries"] == 1


# ---------------------------------------------------------------------------- shared
def test_second_run_is_served_from_the_cache(gallery, tmp_path):
    index, reference = gallery
    cache = ContentCache(tmp_path / "cache")
    for mode, answer in (("listwise", "[2, 1]"), ("grid", "[2, 1]"), ("verify", "Yes")):
        llm = ScriptedLLM(default=answer)
        first = run_stage(llm, make_states(reference), index, cache=cache, mode=mode, top_n=3)
        calls = len(llm.calls)
        second = run_stage(llm, make_states(reference), index, cache=cache, mode=mode, top_n=3)
        assert len(llm.calls) == calls > 0, mode
        assert second[0].ranking == first[0].ranking
        assert second[0].trace[-1].cache_misses == 0 and second[0].trace[-1].cache_hits > 0


def test_cache_key_changes_with_the_image_bound(gallery, tmp_path):
    index, reference = gallery
    cache = ContentCache(tmp_path / "cache")
    llm = ScriptedLLM(default="[1, 2]")
    run_stage(llm, make_states(reference), index, cache=cache, top_n=3, max_image_side=128)
    run_stage(llm, make_states(reference), index, cache=cache, top_n=3, max_image_side=64)
    assert len(llm.calls) == 2


def test_short_rankings(gallery):
    index, reference = gallery
    llm = ScriptedLLM(default="[2, 1]")
    [two] = run_stage(llm, make_states(reference, order=IDS[:2]), index, top_n=10)
    assert two.ranking.ids == ("green", "red") and two.data["rerank"]["candidates"] == 2
    calls = len(llm.calls)
    [one] = run_stage(llm, make_states(reference, order=IDS[:1]), index, top_n=10)
    assert one.ranking.ids == ("red",) and len(llm.calls) == calls
    assert one.trace[-1].notes["skipped"] == "fewer than 2 candidates"


def test_missing_ranking_and_missing_images_are_clear_errors(gallery):
    index, reference = gallery
    state = QueryState(Query("x", reference=reference))
    with pytest.raises(DataError, match="put a `retrieve` stage before"):
        run_stage(ScriptedLLM(default="[1]"), [state], index)
    no_paths = GalleryIndex.from_embeddings(IDS, torch.randn(8, 4), device="cpu")
    with pytest.raises(DataError, match="has no image file in the index"):
        run_stage(ScriptedLLM(default="[1]"), make_states(reference), no_paths)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"mode": "pointwise"}, "mode"),
        ({"top_n": 1}, "top_n"),
        ({"tile_size": 10}, "tile_size"),
        ({"grid_cols": 0}, "grid_cols"),
        ({"max_image_side": 8}, "max_image_side"),
        ({"retries": -1}, "retries"),
    ],
)
def test_bad_params_are_refused(params, message):
    with pytest.raises(ConfigError, match=message):
        stage_class("rerank")(**params)


def test_prompt_must_fill_the_mode_variables(gallery):
    index, reference = gallery
    with pytest.raises(ConfigError, match="needs variable"):
        run_stage(ScriptedLLM(default="x"), make_states(reference), index, mode="verify",
                  prompt="rerank/grid")  # fmt: skip


def test_vllm_image_limit_is_checked_before_loading():
    spec = {"backend": "vllm", "model": "m", "limit_mm_per_prompt": {"image": 2}}
    stage = stage_class("rerank")(mode="listwise", top_n=10, llm=spec)
    with pytest.raises(ConfigError, match=r"sends 11 images .* allows 2; set stages\.rerank"):
        stage.setup(Context())
    stage_class("rerank")(mode="grid", top_n=50, llm=spec)._check_vllm_limits()  # 2 suffice
    verify = stage_class("rerank")(mode="verify", logprobs=50, llm=spec)
    with pytest.raises(ConfigError, match="at most 20 log-probabilities"):
        verify.setup(Context())


def test_writes_follow_the_mode():
    make = stage_class("rerank")
    assert "data.rerank_grid" in make(mode="grid").writes
    assert "data.rerank_grid" not in make(mode="verify").writes
    assert set(make().reads) == {"query.text", "query.image", "ranking"}
