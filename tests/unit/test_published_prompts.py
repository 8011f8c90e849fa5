"""The prompts that follow the published methods keep the authors' structure and example counts."""

from __future__ import annotations

import json
import re

import pytest

from cir.prompts import load_prompt
from cir.rerank.order import parse_order

ASPECTS = (
    "cardinality", "addition", "negation", "direct addressing", "compare & change",
    "comparative", "conjunction", "spatial relations & background", "viewpoint",
)  # fmt: skip


EXAMPLE = re.compile(r"^Image Content: .*\n^Instruction: .*\n^Edited Description:", re.M)


def _examples(text: str) -> int:
    """Worked examples: Image Content and Instruction lines followed by an answer line."""
    return len(EXAMPLE.findall(text))


@pytest.mark.parametrize(
    ("ref", "aspects", "examples"),
    [("recompose/cirevl-cirr", 0, 24), ("recompose/cirevl-circo", 9, 19),
     ("recompose/cirevl-fashion", 9, 19), ("recompose/cirevl-genecis", 0, 0),
     ("recompose/cirevl-genecis-focus", 0, 3)],
)  # fmt: skip
def test_cirevl_prompts_keep_the_number_of_examples(ref, aspects, examples):
    text = load_prompt(ref).render(caption="a red car", modification="make it blue")
    assert _examples(text) == examples
    assert sum(f'"{aspect}"\nImage Content:' in text for aspect in ASPECTS) == aspects
    assert text.endswith("Image Content: a red car\nInstruction: make it blue")


def test_cirevl_genecis_focus_prompt_lists_the_named_object_first():
    text = load_prompt("recompose/cirevl-genecis-focus").render(caption="c", modification="m")
    answers = re.findall(r"^Instruction: (.*)\nEdited Description: (.*)$", text, re.M)
    assert [a.split(",")[0].split()[-1] for _, a in answers] == [i for i, _ in answers]
    assert "comma-separated" in text
    short = load_prompt("recompose/cirevl-genecis")
    assert short.parse("Edited Description: a red car") == "a red car"
    assert short.fallback.final == "fallback"


def test_cirevl_answers_are_read_from_the_labelled_line():
    prompt = load_prompt("recompose/cirevl-circo")
    assert prompt.parse("Edited Description: a blue car on a road") == "a blue car on a road"
    assert prompt.fallback.final == "fallback"


def test_ldre_prompt_has_one_example_and_keeps_the_whole_answer():
    prompt = load_prompt("recompose/ldre")
    text = prompt.render(caption="a dog on a sofa", modification="make it a cat")
    assert _examples(text) == 2  # the worked example and the open answer line
    assert text.endswith("Instruction: make it a cat\nEdited Description:")
    assert prompt.system and prompt.parse(" a cat on a sofa.\n") == "a cat on a sofa."


def test_osrcir_v2_asks_for_four_fields_with_three_examples():
    prompt = load_prompt("reason/osrcir")
    assert prompt.ref == "reason/osrcir.v2" and prompt.images == 1
    answers = re.findall(r"^Answer: (\{.*\})$", prompt.system, re.M)
    assert len(answers) == 3
    fields = ["reference_description", "thoughts", "reflections", "target_description"]
    assert all(list(json.loads(a)) == fields for a in answers)
    flat = " ".join(prompt.system.split())
    assert all(aspect in flat for aspect in ASPECTS)
    assert '"make it red"' in prompt.render(modification="make it red")


def test_cotrr_prompt_ranks_every_candidate_and_its_example_parses():
    text = load_prompt("rerank/cotrr").render(modification="add a hat", count=10)
    assert text.count("all 10") == 2 and text.rstrip().endswith('"add a hat"')
    example = re.search(r"^\{\"ranking\".*\}$", text, re.M).group(0)
    assert parse_order(example, 5).order == (3, 1, 0, 4, 2)


def test_captioner_prompts():
    assert load_prompt("caption/ldre").template == "a photo of"
    assert "every object" in load_prompt("caption/cirevl").template
