"""The ``analyze`` stage and its prompts with the scripted backend: rendering, parsing and
fallbacks."""

from __future__ import annotations

import hashlib
import re

import pytest
from PIL import Image

from cir.errors import ConfigError, DataError
from cir.llm import ScriptedLLM, spec_key
from cir.parsing import extract_json
from cir.pipeline import Pipeline
from cir.prompts import ParseError, list_prompts, load_prompt
from cir.resources import Resources
from cir.stages.analyze import Analyze, fields_parser, render_value
from cir.stages.base import Context
from cir.types import Query, QueryState, StageRecord

EDITS = [["Modification", "Make the car blue."], ["Removal", "Remove the tree."]]
IMAGESCOPE = (
    "Step 1 ...\n```json\n"
    '{"edits": [["Modification", "Make the car blue."], ["Removal", "Remove the tree."]],\n'
    ' "targets": ["A blue car.", "A blue car on a road.", "A blue car on a road, no tree."]}\n```'
)
COTMR = (
    '{"reasoning": "swap the colour", "target_caption": "a blue car",'
    ' "present_objects": ["blue car"], "absent_objects": []}'
)


def run_analyze(llm: ScriptedLLM, states, **params) -> list[QueryState]:
    spec = {"backend": "scripted", "name": f"analyze{id(llm)}", "default": "unused"}
    resources = Resources()
    resources.get(spec_key(spec), lambda: llm)
    stage = Analyze(params.pop("instance", None), llm=spec, **params)
    ctx = Context(resources=resources)
    stage.setup(ctx)
    for state in states:
        state.trace.append(StageRecord(stage="analyze", name=stage.instance))
    return stage.run(states, ctx)


def make_state(text="make the car blue and remove the tree", caption="a red car by a tree"):
    state = QueryState(Query(text, reference=Image.new("RGB", (32, 32), "red"), id="q"))
    state.captions = [caption]
    return state


IMAGESCOPE_PARAMS = dict(
    prompt="imagescope", targets=["targets"], fields=["edits"], reasoning=None,
    fallback_target="caption",
)  # fmt: skip


# ---------------------------------------------------------------------------- prompts
# The prompts of the reasoning stages; a shipped version is never edited (a change is a new .vN).
PINNED = {
    "analyze/cotmr.v1": "af5097cff666",
    "analyze/imagescope-fashion.v1": "fa08250cdf63",
    "analyze/imagescope-propositions-fashion.v1": "392f64bab0ea",
    "analyze/imagescope-propositions.v1": "1f06d9061cee",
    "analyze/imagescope.v1": "ba72cfb02e65",
    "analyze/mcotre.v1": "30390ea89f44",
    "consistency/reverse_caption.v1": "13a92e0433b9",
    "consistency/reverse_query.v1": "61a3296a5537",
    "evaluate/imagescope.v1": "60f46dc9ee20",
    "verify_propositions/imagescope.v1": "d4d44605dc53",
}


def test_reasoning_prompts_are_pinned_and_declare_a_source():
    stages = {ref.split("/")[0] for ref in PINNED}
    shipped = {p.ref for stage in stages for p in list_prompts(stage)}
    assert shipped == set(PINNED), "a new prompt: add its hash to PINNED"
    for ref, prefix in PINNED.items():
        prompt = load_prompt(ref)
        assert hashlib.sha256(prompt.path.read_bytes()).hexdigest().startswith(prefix), ref
        assert prompt.source and prompt.description


@pytest.mark.parametrize(
    ("ref", "variables", "examples"),
    [
        ("analyze/imagescope", {"caption": "a red car", "modification": "make it blue"}, 5),
        ("analyze/imagescope-fashion", {"caption": "a red dress", "modification": "is blue"}, 5),
        ("analyze/imagescope-propositions", {"modification": "x", "edits": "(1) A: b"}, 5),
        ("analyze/imagescope-propositions-fashion", {"modification": "x", "edits": "(1) A"}, 5),
    ],
)
def test_imagescope_prompts_keep_five_examples_and_end_with_the_query(ref, variables, examples):
    prompt = load_prompt(ref)
    text = prompt.render(**variables)
    blocks = re.findall(r"```json\n(.*?)\n```", text, re.S)
    assert len(blocks) == examples
    keys = {"targets", "edits"} if "propositions" not in ref else {"questions", "statements"}
    assert all(set(extract_json(block)) == keys for block in blocks)
    assert text.rstrip().endswith(variables["caption" if "caption" in variables else "edits"])
    assert prompt.images == 0 and prompt.source and prompt.description


@pytest.mark.parametrize(
    ("ref", "keys"),
    [
        ("analyze/cotmr", ("target_caption", "present_objects", "absent_objects")),
        ("analyze/mcotre", ("modification_caption", "integrated_caption")),
    ],
)
def test_one_image_prompts_show_two_parseable_examples(ref, keys):
    prompt = load_prompt(ref)
    assert prompt.images == 1 and prompt.variables == ("modification",)
    text = prompt.render(modification="make it blue")
    assert '"make it blue"' in text
    lines = [line for line in text.splitlines() if extract_json(line) is not None]
    assert len(lines) == 2  # the two worked answers (the format line is not JSON)
    parse = fields_parser(keys[:1], keys[1:])
    assert all(set(parse(line)) == {"reasoning", *keys} for line in lines)


# ---------------------------------------------------------------------------- parsing
def test_fields_parser_requires_targets_and_fields():
    parse = fields_parser(("targets",), ("edits",))
    assert parse(IMAGESCOPE)["targets"][0] == "A blue car."
    assert parse('{"targets": "one text", "edits": []}')["edits"] == []
    for bad, message in [
        ("no json here", "no JSON object"),
        ('{"targets": [], "edits": []}', "non-empty"),
        ('{"targets": ["a", 3], "edits": []}', "non-empty"),
        ('{"targets": ["a"]}', r"lacks the key\(s\) \['edits'\]"),
    ]:
        with pytest.raises(ParseError, match=message):
            parse(bad)


def test_render_value_numbers_lists_and_pairs():
    assert (
        render_value(EDITS) == "(1) Modification: Make the car blue.\n(2) Removal: Remove the tree."
    )
    assert render_value(["a", {"q": "x"}]) == "(1) a\n(2) q: x"
    assert render_value([]) == "(none)" and render_value(None) == "(none)"
    assert render_value("  text ") == "text"


# ---------------------------------------------------------------------------- the stage
def test_imagescope_decompose_writes_three_targets_and_the_edits():
    llm = ScriptedLLM([IMAGESCOPE])
    state = run_analyze(llm, [make_state()], **IMAGESCOPE_PARAMS)[0]
    assert state.targets == [
        "A blue car.",
        "A blue car on a road.",
        "A blue car on a road, no tree.",
    ]
    assert state.data["edits"] == EDITS and state.data["targets"] == state.targets
    assert state.data["analyze"] == IMAGESCOPE and state.llm_raw == [IMAGESCOPE]
    prompt = llm.calls[0].prompt_text
    assert "Instruction: make the car blue and remove the tree" in prompt
    assert "Reference Image: a red car by a tree" in prompt
    assert not llm.calls[0].images and state.record("analyze").fallbacks == 0


def test_a_bad_answer_falls_back_to_the_caption_and_empty_fields_counted():
    llm = ScriptedLLM(["I cannot help with that."])
    state = run_analyze(llm, [make_state()], **IMAGESCOPE_PARAMS)[0]
    assert state.targets == ["a red car by a tree"] and state.data["edits"] == []
    record = state.record("analyze")
    assert record.fallbacks == 1 and "no JSON object" in record.notes["parse_errors"][0]
    assert len(llm.calls) == 1  # ImageScope's prompt falls back without retrying


def test_cotmr_sends_the_image_retries_once_and_keeps_the_reasoning():
    llm = ScriptedLLM(['{"target_caption": ""}', COTMR])
    state = run_analyze(llm, [make_state()])[0]
    assert len(llm.calls) == 2 and len(llm.calls[0].images) == 1
    assert state.targets == ["a blue car"] and state.reasoning == ["swap the colour"]
    assert state.data["present_objects"] == ["blue car"] and state.data["absent_objects"] == []
    record = state.record("analyze")
    assert record.fallbacks == 0 and record.notes["retries"] == 1


def test_cotmr_fallback_keeps_the_modification_and_no_objects():
    llm = ScriptedLLM(["nothing useful"])
    state = run_analyze(llm, [make_state("make it blue")])[0]
    assert state.targets == ["make it blue"] and state.data["target_caption"] == "make it blue"
    assert state.data["present_objects"] == [] and state.reasoning == []
    assert state.record("analyze").fallbacks == 1


def test_propositions_read_the_edits_an_earlier_analyze_wrote():
    llm = ScriptedLLM(['{"statements": [], "questions": [["Is the car blue?", "yes"]]}'])
    state = make_state()
    state.data["edits"] = EDITS
    params = dict(
        prompt="imagescope-propositions", targets=[], fields=["questions"], reasoning=None
    )
    state = run_analyze(llm, [state], instance="propositions", **params)[0]
    assert "(2) Removal: Remove the tree." in llm.calls[0].prompt_text
    assert state.data["questions"] == [["Is the car blue?", "yes"]]
    assert state.targets == [] and state.data["propositions"].startswith("{")


def test_ports_follow_the_prompt_and_a_missing_caption_is_named():
    decompose = Analyze(**IMAGESCOPE_PARAMS)
    assert decompose.reads == ("captions", "query.text")
    assert "data.edits" in decompose.writes and "targets" in decompose.writes
    cotmr = Analyze()
    assert set(cotmr.reads) == {"query.text", "query.image"}
    propositions = Analyze(prompt="imagescope-propositions", targets=[], fields=["questions"])
    assert "data.edits" in propositions.reads and "targets" not in propositions.writes
    with pytest.raises(DataError, match="put a `caption` stage"):
        run_analyze(ScriptedLLM([IMAGESCOPE]), [_no_caption()], **IMAGESCOPE_PARAMS)


def _no_caption() -> QueryState:
    state = make_state()
    state.captions = []
    return state


def test_bad_params_and_a_pipeline_missing_the_edits_are_refused():
    with pytest.raises(ConfigError, match="at least one answer key"):
        Analyze(targets=[], fields=[])
    with pytest.raises(ConfigError, match="named twice"):
        Analyze(targets=["a"], fields=["a"])
    spec = {"stages": [{"stage": "analyze", "params": {"prompt": "imagescope-propositions",
            "targets": [], "fields": ["questions"]}}]}  # fmt: skip
    with pytest.raises(ConfigError, match=r"reads 'data.edits', but no earlier stage writes it"):
        Pipeline.from_dict(spec)
