"""A run with two vLLM engines (a text LLM, then a multimodal LLM): the first is shut down
before the second starts, so two engines never hold the device at once."""

from __future__ import annotations

import pytest
import torch

from cir import Query
from cir.index import GalleryIndex
from cir.pipeline import Pipeline
from cir.resources import Resources
from cir.stages import Port, Stage, register_stage, registry_snapshot
from cir.testing.lm import VLLM_CPU_ENGINE

pytestmark = pytest.mark.vllm


def _spec(model: str, **extra) -> dict:
    return {"backend": "vllm", "model": model, **VLLM_CPU_ENGINE, "max_model_len": 1024, **extra}


def _gallery(tmp_path) -> GalleryIndex:
    from PIL import Image

    paths = []
    for i, colour in enumerate(["red", "blue", "green", "yellow"]):
        paths.append(tmp_path / f"g{i}.png")
        Image.new("RGB", (64, 64), colour).save(paths[-1])
    ids = [p.name for p in paths]
    return GalleryIndex.from_embeddings(ids, torch.randn(4, 8), paths=paths, device="cpu")


class _TextVector(Stage):
    """A test stage: a fixed pseudo-embedding of each target text, standing in for CLIP
    (open_clip is not part of the vLLM environment). Example: none, tests only."""

    name = "test_text_vector"
    inputs = (Port("targets", "texts"),)
    outputs = (Port("embeddings.query", "vector"),)

    def run(self, states, ctx):
        for state in states:
            seed = sum(map(ord, state.targets[0])) % 1000
            state.embeddings["query"] = torch.randn(
                8, generator=torch.Generator().manual_seed(seed)
            )
        return states


def _engines_resident(events) -> int:
    """The most vLLM engines alive at once over a run's load/release events."""
    alive, most = set(), 0
    for event in events:
        if event.key[0] != "vllm-engine":
            continue
        (alive.add if event.action == "load" else alive.discard)(event.key)
        most = max(most, len(alive))
    return most


def test_engines_are_shut_down_before_the_next_starts(tiny_models, tmp_path):
    gallery = _gallery(tmp_path)
    spec = {
        "name": "two_engines",
        "stages": [
            {"stage": "caption", "params": {"captioner": {"backend": "scripted", "default": "a"}}},
            {"stage": "recompose", "params": {"llm": _spec(tiny_models["lm"]), "max_tokens": 4}},
            {"stage": "test_text_vector"},
            {"stage": "retrieve", "params": {"query": "query", "k": 4}},
            {"stage": "rerank", "params": {
                "llm": _spec(tiny_models["vlm"], limit_mm_per_prompt={"image": 5}),
                "top_n": 4, "max_tokens": 8, "fallback": "fallback"}},
        ],
    }  # fmt: skip
    resources = Resources()
    with registry_snapshot():
        register_stage(_TextVector)
        pipe = Pipeline.from_dict(spec)
    states = pipe.run([Query("make it red", reference_id="g1.png")], gallery, resources=resources)
    assert states[0].ranking is not None and len(states[0].ranking) == 4
    engines = [e for e in resources.events if e.key[0] == "vllm-engine"]
    assert [e.action for e in engines] == ["load", "release", "load", "release"]
    assert _engines_resident(resources.events) == 1
    assert resources.peak_language_models() == 1 and resources.keys() == []
