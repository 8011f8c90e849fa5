"""The shipped re-ranking prompts: pinned hashes, variables, images, and how they render."""

from __future__ import annotations

import hashlib

import pytest

from cir.prompts import list_prompts, load_prompt

# A shipped prompt version is never edited: a change is a new .v<N+1> file with its own hash here.
PINNED = {
    "rerank/cotrr.v1": "594a04df6ccd",
    "rerank/grid.v1": "8f1898f4732b",
    "rerank/listwise.v1": "f023c26e28bc",
    "rerank/verify.v1": "a22e3e1f0398",
}


def test_rerank_prompt_hashes_are_pinned():
    assert sorted(p.ref for p in list_prompts("rerank")) == sorted(PINNED)
    for ref, prefix in PINNED.items():
        prompt = load_prompt(ref)
        assert prompt.sha256 == hashlib.sha256(prompt.path.read_bytes()).hexdigest()
        assert prompt.sha256.startswith(prefix), f"{ref} was edited; ship a new version instead"
        assert prompt.source and prompt.description


@pytest.mark.parametrize(
    ("name", "variables", "images"),
    [("listwise", {"modification", "count"}, None), ("grid", {"modification", "count"}, 2),
     ("verify", {"modification"}, 2)],
)  # fmt: skip
def test_variables_and_images(name, variables, images):
    prompt = load_prompt(name, stage="rerank")
    assert set(prompt.variables) == variables and prompt.images == images
    assert prompt.fallback.policy == "retry" and prompt.fallback.retries == 1


def test_listwise_asks_for_three_steps_then_json():
    text = load_prompt("rerank/listwise").render(modification="make the car blue", count=10)
    assert '"make the car blue"' in text and "numbered 1 to 10" in text
    steps = [text.index(f"Step {i}") for i in (1, 2, 3)]
    assert steps == sorted(steps)
    assert text.rstrip().endswith('{"ranking": [best, second, ..., worst]}')


def test_grid_explains_the_numbering_and_verify_asks_yes_or_no():
    grid = load_prompt("rerank/grid").render(modification="add a hat", count=9)
    flat = " ".join(grid.split())
    assert "from 1 to 9" in flat and "left to right, row by row" in flat
    verify = load_prompt("rerank/verify").render(modification="add a hat")
    assert verify.rstrip().endswith("Answer with a single word, Yes or No.")
