"""Stop sequences, labelled-line parser options, labels interleaved with images, and the pieces
of the subset protocol for re-rankers (set members in ranking order, re-ordering them)."""

from __future__ import annotations

import pytest

from cir import Query, QueryState
from cir.cache import ContentCache
from cir.errors import ConfigError, DataError
from cir.generation import Ask, Generator
from cir.llm import ChatMessage, ChatRequest, Sampling, load_backend
from cir.llm.base import cut_at_stop
from cir.prompts import ParseError, build_parser, load_prompt
from cir.rerank.order import full_order, parse_order
from cir.rerank.subset import reorder, set_members
from cir.resources import Resources
from cir.stages._prompted import GenerationParams, stage_parser
from cir.types import Ranking

CIREVL_STOP = ("\n\n", "<|endoftext|>")


def test_stop_is_a_sampling_setting_kept_in_cache_keys_only_when_used():
    assert "stop" not in Sampling().to_dict()
    assert Sampling(stop=["\n\n"]).to_dict()["stop"] == ["\n\n"]
    assert Sampling(stop="END").stop == ("END",)
    for bad in ([""], [3], {"a": 1}):
        with pytest.raises(ValueError, match="stop must be a list of non-empty strings"):
            Sampling(stop=bad)


def test_cut_at_stop_keeps_the_text_before_the_earliest_stop():
    text = "Edited Description: a red car<|endoftext|>\n\nEdited Description: a blue car"
    assert cut_at_stop(text, CIREVL_STOP) == "Edited Description: a red car"
    assert cut_at_stop("no stop here", CIREVL_STOP) == "no stop here"


def test_the_scripted_backend_cuts_its_answers_at_the_stop():
    llm = load_backend({"backend": "scripted", "default": "first\n\nsecond"}, Resources())
    [plain, cut] = llm.generate(
        [ChatRequest.from_prompt("q"), ChatRequest.from_prompt("q", stop=["\n\n"])]
    )
    assert (plain.text, cut.text) == ("first\n\nsecond", "first")


def test_stop_sequences_are_part_of_the_cache_key(tmp_path):
    llm = load_backend({"backend": "scripted", "default": "a\n\nb", "name": "stop"}, Resources())
    prompt, cache = load_prompt("recompose/ldre"), ContentCache(tmp_path)
    ask = Ask({"caption": "a dog", "modification": "a cat"})

    def run(stop):
        gen = Generator(llm, prompt, stage="recompose", sampling=Sampling(stop=stop), cache=cache)
        return gen.run([ask])[0]

    plain, cut, again = run(()), run(CIREVL_STOP), run(CIREVL_STOP)
    assert (plain.texts, plain.cached) == (["a\n\nb"], False)
    assert (cut.texts, cut.cached) == (["a"], False)  # another key: the model is asked again
    assert (again.texts, again.cached) == (["a"], True)
    assert len(llm.calls) == 2


def test_labelled_parser_reads_the_first_or_the_last_labelled_line():
    answer = "Edited Description: a red car\nEdited Description: a blue car"
    assert build_parser({"kind": "labelled_line", "label": "Edited Description"})(answer) == (
        "a blue car"
    )
    first = build_parser({"kind": "labelled_line", "label": "Edited Description", "pick": "first"})
    assert first(answer) == "a red car"
    with pytest.raises(ConfigError, match="pick must be 'first' or 'last'"):
        build_parser({"kind": "labelled_line", "label": "X", "pick": "middle"})


def test_labelled_parser_can_accept_an_answer_without_its_label():
    strict = build_parser({"kind": "labelled_line", "label": "Edited Description"})
    bare = build_parser({"kind": "labelled_line", "label": "Edited Description", "bare": True})
    with pytest.raises(ParseError, match="no line labelled"):
        strict(" a cat on a sofa. ")
    assert bare(" a cat on a sofa. ") == "a cat on a sofa."
    assert bare("Edited Description: a cat") == "a cat"
    with pytest.raises(ParseError):
        bare("   ")


def test_stage_parser_options_lie_over_the_prompts_parser():
    prompt = load_prompt("recompose/cirevl-circo")
    assert stage_parser(prompt, GenerationParams(), "recompose") is None
    parse = stage_parser(prompt, GenerationParams(parser={"pick": "first"}), "recompose")
    assert parse("Edited Description: one\nEdited Description: two") == "one"
    with pytest.raises(ConfigError, match="may not change the parser kind"):
        stage_parser(prompt, GenerationParams(parser={"kind": "text"}), "recompose")


def test_labels_come_before_their_images_and_after_the_prompt_text():
    red, blue = (_image("red"), _image("blue"))
    message = ChatMessage("user", "", (red, blue), labels=("Reference image:", "Image 1:"))
    assert [kind for kind, _ in message.parts()] == ["text", "image", "text", "image"]
    with pytest.raises(ValueError, match="one label per image"):
        ChatMessage("user", "", (red, blue), labels=("only one",))
    [user] = load_prompt("rerank/cotrr").messages(
        {"modification": "add a hat", "count": 1}, (red, blue), ("Reference image:", "Image 1:")
    )
    texts = [value for kind, value in user.parts() if kind == "text"]
    assert texts[0].startswith("You are an expert") and texts[0].endswith("\n\nReference image:")
    assert texts[1] == "Image 1:" and user.content == ""
    request = ChatRequest((user,))
    assert "add a hat" in request.prompt_text and "Image 1:" in request.prompt_text


def test_full_order_and_reorder_put_the_named_positions_first():
    assert full_order([3, 3, 0, 9], 4) == [3, 0, 1, 2]
    assert reorder(["a", "b", "c", "d", "e"], [4, 3, 2, 1, 0]) == ["e", "d", "c", "b", "a"]
    assert reorder(["a", "b", "c"], []) == ["a", "b", "c"]


def test_cotrr_answer_key_is_read():
    assert parse_order('{"top_5_indices": [2, 1, 5, 4, 3], "CoT": "..."}', 5).order == (
        1, 0, 4, 3, 2,
    )  # fmt: skip


def test_set_members_leave_the_reference_out_and_follow_the_ranking():
    members = ["r", "m1", "m2", "m3", "m4", "m5"]
    query = Query("x", reference_id="r", id="q", extras={"group_members": members})
    state = QueryState(query, ranking=Ranking(("g9", "m3", "m1", "g2"), (4.0, 3.0, 2.0, 1.0)))
    assert set_members(state, "group_members", "rerank") == ["m3", "m1", "m2", "m4", "m5"]
    with pytest.raises(DataError, match="extras\\['candidates'\\]"):
        set_members(state, "candidates", "rerank")


def _image(colour: str):
    from PIL import Image

    return Image.new("RGB", (16, 16), colour)
