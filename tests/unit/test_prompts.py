"""Prompt files: pinned hashes, strict rendering, loading errors, parsers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from cir._paths import shipped_dir
from cir.errors import ConfigError
from cir.prompts import (
    FallbackPolicy,
    ParseError,
    build_parser,
    list_prompts,
    load_prompt,
    load_prompt_file,
    parse_prompt_text,
)

# A shipped prompt version is never edited: a change is a new .v<N+1> file with its own hash here.
PINNED = {
    "caption/brief.v1": "7a36bcf74e98",
    "caption/cirevl.v1": "0556a4aadd14",
    "caption/detailed.v1": "7f0adf14f7ad",
    "caption/imagescope-fashion.v1": "de66e034cb89",
    "caption/imagescope-scene.v1": "736f1bf7cc08",
    "caption/imagescope.v1": "b2f6ab517549",
    "caption/ldre.v1": "203919bded91",
    "caption/plain.v1": "05766a65bd21",
    "caption/simple.v1": "d57c2c1a8c8a",
    "caption/thorough.v1": "64a31f8fbe65",
    "imagine/caption.v1": "81161536d86a",
    "imagine/edit.v1": "b44fc5c32206",
    "imagine/paracosm-circo.v1": "5de39995098e",
    "imagine/paracosm.v1": "ebd323ed14a8",
    "imagine/target.v1": "8866b8fbcb3b",
    "reason/osrcir.v1": "85fc1b550122",
    "reason/osrcir.v2": "ef1884ab6e28",
    "recompose/cirevl-circo.v1": "fea1bb1517b7",
    "recompose/cirevl-cirr.v1": "7d3f660db9e0",
    "recompose/cirevl-fashion.v1": "fd65d587e49f",
    "recompose/cirevl-genecis.v1": "8c21755c5b03",
    "recompose/cirevl-genecis-focus.v1": "47c88574dd6e",
    "recompose/fashion.v1": "c64341d5b384",
    "recompose/general.v1": "2b8164ab8bdd",
    "recompose/ldre.v1": "2baf91aab509",
    "recompose/short.v1": "32779e3ec485",
    "recompose/wiser.v1": "07c929190062",
    "refine/image.v1": "19ff54cfeb39",
    "refine/text.v1": "3183797732d3",
}
PINNED_STAGES = ("caption", "imagine", "recompose", "reason", "refine")

MINIMAL = """---
variables: [caption, modification]
parser: {kind: labelled_line, label: Answer}
---
Caption: {{caption}} / change: {{ modification }} / json: {"keep": "braces"}
Answer:"""


def test_shipped_prompt_hashes_are_pinned() -> None:
    for stage in PINNED_STAGES:
        for prompt in list_prompts(stage):
            assert prompt.ref in PINNED, f"new prompt {prompt.ref}: add its hash to PINNED"
    for ref, prefix in PINNED.items():
        prompt = load_prompt(ref)
        assert prompt.sha256 == hashlib.sha256(prompt.path.read_bytes()).hexdigest()
        assert prompt.sha256.startswith(prefix), f"{ref} was edited; ship a new version instead"


def test_shipped_files_match_their_names_and_declare_a_source() -> None:
    root = shipped_dir("prompts")
    for prompt in list_prompts():
        stage, name = prompt.id.split("/")
        assert prompt.path.parent == (root / stage).resolve()
        assert prompt.path.name.startswith(f"{name}.v{prompt.version}.")
        if stage in PINNED_STAGES:
            assert prompt.source and prompt.description


def test_lookup_by_name_version_stage_and_path(tmp_path: Path) -> None:
    assert load_prompt("recompose/general").ref == "recompose/general.v1"
    assert load_prompt("general.v1", stage="recompose").ref == "recompose/general.v1"
    assert load_prompt("osrcir", stage="reason").images == 1
    own = tmp_path / "mine.txt"
    own.write_text(MINIMAL)
    prompt = load_prompt(str(own), stage="recompose")
    assert prompt.id == "mine" and prompt.path == own.resolve()
    with pytest.raises(ConfigError, match=r"unknown prompt 'nope'.*recompose/fashion\.v1"):
        load_prompt("nope", stage="recompose")


def test_render_is_strict_and_keeps_literal_braces() -> None:
    prompt = parse_prompt_text(MINIMAL)
    text = prompt.render(caption="a dog", modification="make it a cat")
    assert text == 'Caption: a dog / change: make it a cat / json: {"keep": "braces"}\nAnswer:'
    with pytest.raises(ConfigError, match=r"missing variable\(s\) \['modification'\]"):
        prompt.render(caption="a dog")
    with pytest.raises(ConfigError, match=r"unknown variable\(s\) \['extra'\]"):
        prompt.render(caption="a", modification="b", extra="c")
    with pytest.raises(ConfigError, match="must be text"):
        prompt.render(caption=None, modification="b")


def test_values_are_not_re_rendered() -> None:
    prompt = parse_prompt_text(MINIMAL)
    text = prompt.render(caption="{{modification}}", modification="x")
    assert "Caption: {{modification}}" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no front matter\n{{x}}", "starts with front matter"),
        ("---\nvariables: [x]\n---\n{{x}}", "needs `parser:`"),
        ("---\nparser: text\n---\nhi", "needs `variables:`"),
        (
            "---\nvariables: []\nparser: text\nsytem: typo\n---\nhi",
            r"unknown front matter key.*sytem",
        ),
        ("---\nvariables: []\nparser: text\n---\n{{y}}", "not declared in `variables`"),
        ("---\nvariables: [x, y]\nparser: text\n---\n{{x}}", r"\['y'\] never appear"),
        ("---\nvariables: [x]\nparser: text\n---\n{{x y}}", "not a variable name"),
        ("---\nvariables: []\nparser: {kind: regex}\n---\nhi", "parser kind 'regex' unknown"),
        ("---\nvariables: []\nparser: text\nfallback: {policy: skip}\n---\nhi", "policy 'skip'"),
        ("---\nvariables: []\nparser: text\nfallback: {policy: retry}\n---\nhi", "retries >= 1"),
        ("---\nvariables: []\nparser: text\nimages: -1\n---\nhi", "`images:` must be"),
        ("---\n[1, 2]\n---\nhi", "front matter must be a mapping"),
    ],
)
def test_bad_prompt_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_prompt_text(text)


def test_version_in_file_name_must_match(tmp_path: Path) -> None:
    folder = tmp_path / "recompose"
    folder.mkdir()
    path = folder / "mine.v2.txt"
    path.write_text("---\nversion: 3\nvariables: []\nparser: text\n---\nhi")
    with pytest.raises(ConfigError, match="version 3"):
        load_prompt_file(path)
    path.write_text("---\nvariables: []\nparser: text\n---\nhi")
    prompt = load_prompt_file(path)
    assert (prompt.id, prompt.version) == ("recompose/mine", 2)
    with pytest.raises(ConfigError, match="does not exist"):
        load_prompt_file(tmp_path / "missing.txt")


def test_messages_attach_images_and_system() -> None:
    prompt = load_prompt("reason/osrcir")
    image = Image.new("RGB", (4, 4))
    system, user = prompt.messages({"modification": "make it red"}, [image])
    assert system.role == "system" and "JSON" in system.content
    assert user.images == (image,) and '"make it red"' in user.content
    with pytest.raises(ConfigError, match=r"takes 1 image\(s\), got 0"):
        prompt.messages({"modification": "x"}, [])
    (only,) = load_prompt("recompose/short").messages({"caption": "a", "modification": "b"})
    assert only.role == "user" and only.images == ()


def test_labelled_line_parser() -> None:
    parse = build_parser({"kind": "labelled_line", "label": "Target Description"})
    assert parse("Target Description: a red car") == "a red car"
    assert parse('thinking...\ntarget description:  **"a red car"** ') == "a red car"
    assert parse("Target Description: first\nTarget Description: second") == "second"
    assert parse("**Target Description:**\na cat on a mat") == "a cat on a mat"
    with pytest.raises(ParseError, match="no line labelled"):
        parse("a red car")
    with pytest.raises(ParseError, match="is empty"):
        parse("Target Description:")


def test_json_parsers() -> None:
    parse = build_parser({"kind": "json", "keys": ["target_description"]})
    fenced = 'Sure.\n```json\n{"target_description": "a cat", "reasoning": "swap"}\n```'
    assert parse(fenced) == {"target_description": "a cat", "reasoning": "swap"}
    with pytest.raises(ParseError, match="lacks a non-empty string 'target_description'"):
        parse('{"target_description": ""}')
    with pytest.raises(ParseError, match="no JSON object"):
        parse("no json here")
    assert build_parser({"kind": "json_key", "key": "a"})('x {"a": " b "} y') == "b"


def test_text_parser_and_bad_parser_options() -> None:
    parse = build_parser("text")
    assert parse('  "a dog on grass" ') == "a dog on grass"
    with pytest.raises(ParseError, match="empty"):
        parse("   ")
    with pytest.raises(ConfigError, match="labelled_line"):
        build_parser({"kind": "labelled_line", "labl": "x"})


def test_fallback_policy_specs() -> None:
    assert FallbackPolicy.from_spec("raise").final == "raise"
    retry = FallbackPolicy.from_spec({"policy": "retry", "retries": 2, "then": "raise"})
    assert (retry.retries, retry.final) == (2, "raise")
    assert FallbackPolicy.from_spec(None).final == "fallback"
    with pytest.raises(ConfigError, match="takes no retries"):
        FallbackPolicy("fallback", retries=2)
    with pytest.raises(ConfigError, match="unknown key"):
        FallbackPolicy.from_spec({"policy": "raise", "tries": 1})


def test_cli_list_and_show() -> None:
    from click.testing import CliRunner

    from cir.cli import cli

    runner = CliRunner()
    listed = runner.invoke(cli, ["prompts", "list", "--stage", "recompose"])
    assert listed.exit_code == 0
    assert (
        "recompose/general.v1" in listed.output and PINNED["recompose/general.v1"] in listed.output
    )
    shown = runner.invoke(cli, ["prompts", "show", "general", "--stage", "recompose"])
    assert shown.exit_code == 0 and "{{caption}}" in shown.output
    rendered = runner.invoke(
        cli,
        [
            "prompts",
            "show",
            "recompose/short",
            "--var",
            "caption=a cat",
            "--var",
            "modification=red",
        ],
    )
    assert rendered.exit_code == 0 and "Photo: a cat\nCondition: red" in rendered.output
    missing = runner.invoke(cli, ["prompts", "show", "recompose/short", "--var", "caption=x"])
    assert missing.exit_code != 0 and "missing variable" in missing.output
