"""caption / recompose / reason through tiny transformers models, and the three language pipelines
end to end on a tiny gallery, with the content cache making second runs free."""

from __future__ import annotations

import re

import pytest
import torch

from cir import Query, QueryState, StageRecord
from cir.cache import ContentCache
from cir.index import GalleryIndex
from cir.llm import ChatRequest, load_backend
from cir.pipeline import load_pipeline
from cir.resources import Resources
from cir.stages.base import Context
from cir.stages.caption import Caption
from cir.stages.reason import Reason
from cir.stages.recompose import Recompose

MODS = ["make it red", "add a dog next to it", "the same scene at night"]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, str]) -> GalleryIndex:
    from PIL import Image
    from skimage import data

    from cir.models import load_encoder

    folder = tmp_path_factory.mktemp("gallery")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).convert("RGB").resize((64, 64)).save(
            folder / f"{name}.jpg"
        )
    for shade in ("red", "green"):
        Image.new("RGB", (64, 64), shade).save(folder / f"{shade}.png")
    out = tmp_path_factory.mktemp("gallery_index")
    encoder = load_encoder(tiny_models["clip"])
    return GalleryIndex.build(folder, encoder, out=out, num_workers=0, progress=False)


def _queries(gallery: GalleryIndex) -> list[Query]:
    pairs = zip(MODS, gallery.ids[: len(MODS)], strict=True)
    return [Query(m, reference_id=i, id=f"q{n}") for n, (m, i) in enumerate(pairs)]


def _states(stage: str, gallery: GalleryIndex, captions: list[str] | None = None) -> list:
    states = []
    for query in _queries(gallery):
        state = QueryState(query, captions=list(captions or []))
        state.trace.append(StageRecord(stage, stage))
        states.append(state)
    return states


class CallCounter:
    """Counts the requests a real backend receives (its real ``generate`` still runs)."""

    def __init__(self, backend) -> None:
        self.requests = 0
        self._generate = backend.generate
        backend.generate = self

    def __call__(self, requests):
        self.requests += len(requests)
        return self._generate(requests)


def _transformers(path: str) -> dict:
    return {"backend": "transformers", "model": path}


# ---------------------------------------------------------------------------- stages
def test_caption_stage_with_tiny_blip_matches_the_backend(tiny_models, gallery, tmp_path) -> None:
    ctx = Context(gallery, Resources(), ContentCache(tmp_path))
    stage = Caption(captioner=_transformers(tiny_models["blip"]), max_tokens=8)
    stage.setup(ctx)
    states = stage.run(_states("caption", gallery), ctx)
    direct = stage.backend.generate(
        [ChatRequest.from_prompt("", images=[_image(gallery, s)], max_tokens=8) for s in states]
    )
    for state, gen in zip(states, direct, strict=True):
        record = state.record("caption")
        expected = gen.text.strip() or stage.params.fallback_caption
        assert state.captions == [expected]
        assert (record.cache_misses, record.fallbacks) == (1, int(not gen.text.strip()))
    counter = CallCounter(stage.backend)
    again = stage.run(_states("caption", gallery), ctx)
    assert counter.requests == 0
    assert [s.captions for s in again] == [s.captions for s in states]
    assert all(s.record("caption").cache_hits == 1 for s in again)


def test_sampled_captions_are_reproducible(tiny_models, gallery) -> None:
    ctx = Context(gallery, Resources(), None)
    params = dict(num_captions=3, temperature=1.0, top_p=0.9, seed=7, max_tokens=6)
    stage = Caption(captioner=_transformers(tiny_models["blip"]), **params)
    stage.setup(ctx)
    counter = CallCounter(stage.backend)
    first = [s.captions for s in stage.run(_states("caption", gallery), ctx)]
    second = [s.captions for s in stage.run(_states("caption", gallery), ctx)]
    assert all(len(c) == 3 for c in first) and first == second
    assert counter.requests == 2 * len(first)  # one request of n=3 per image, no cache
    assert all(len(set(c)) > 1 for c in first)  # sampled: the three captions differ
    reseeded = Caption(captioner=_transformers(tiny_models["blip"]), **{**params, "seed": 8})
    reseeded.setup(ctx)
    assert [s.captions for s in reseeded.run(_states("caption", gallery), ctx)] != first


def test_recompose_with_tiny_lm_and_a_users_prompt(tiny_models, gallery, tmp_path) -> None:
    own = tmp_path / "mine.v1.txt"
    own.write_text(
        "---\nvariables: [caption, modification]\nparser: text\nfallback: {policy: fallback}\n"
        "---\nDescribe: {{caption}} but {{modification}}"
    )
    ctx = Context(gallery, Resources(), None)
    stage = Recompose(llm=_transformers(tiny_models["lm"]), prompt=str(own), max_tokens=8)
    stage.setup(ctx)
    states = stage.run(_states("recompose", gallery, ["a photo", "a picture"]), ctx)
    for state in states:
        assert len(state.targets) == 2 and len(state.llm_raw) == 2
        for target, raw in zip(state.targets, state.llm_raw, strict=True):
            assert target == (raw.strip().strip("\"'`*").strip() or state.query.text)
        assert state.record("recompose").cache_misses == 2


def test_recompose_shipped_prompt_counts_fallbacks(tiny_models, gallery) -> None:
    ctx = Context(gallery, Resources(), None)
    stage = Recompose(llm=_transformers(tiny_models["lm"]), max_tokens=8, fallback="fallback")
    stage.setup(ctx)
    label = re.compile(r"target description\s*:\s*\S", re.IGNORECASE)
    for state in stage.run(_states("recompose", gallery, ["a photo"]), ctx):
        unparsed = sum(not label.search(raw) for raw in state.llm_raw)
        assert state.record("recompose").fallbacks == unparsed
        if unparsed:
            assert state.targets == [state.query.text]


def test_reason_with_tiny_chat_vlm_retries_then_falls_back(tiny_models, gallery) -> None:
    ctx = Context(gallery, Resources(), None)
    stage = Reason(llm=_transformers(tiny_models["vlm"]), max_tokens=8, retries=1)
    stage.setup(ctx)
    counter = CallCounter(stage.backend)
    states = stage.run(_states("reason", gallery), ctx)
    for state in states:
        record = state.record("reason")
        assert len(state.llm_raw) == 1 and len(state.targets) == 1
        if record.fallbacks:  # a random model does not write the JSON object
            assert state.targets == [state.query.text]
            assert record.notes["retries"] == 1
    retried = sum(s.record("reason").notes.get("retries", 0) for s in states)
    assert counter.requests == len(states) + retried


# ---------------------------------------------------------------------------- pipelines
def _tiny_overrides(name: str, tiny_models: dict[str, str]) -> list[str]:
    blip, lm, vlm = (tiny_models[k] for k in ("blip", "lm", "vlm"))
    common = ["stages.retrieve.k=4"]
    if name == "osrcir":
        return [*common, f"stages.reason.llm={{backend: transformers, model: '{vlm}'}}",
                "stages.reason.max_tokens=8"]  # fmt: skip
    return [
        *common,
        f"stages.caption.captioner={{backend: transformers, model: '{blip}'}}",
        "stages.caption.max_tokens=6",
        f"stages.recompose.llm={{backend: transformers, model: '{lm}'}}",
        "stages.recompose.max_tokens=8",
        *(["stages.caption.num_captions=3"] if name == "ldre" else []),
    ]


@pytest.mark.parametrize("name", ["cirevl", "ldre", "osrcir"])
def test_pipeline_end_to_end_and_second_run_from_cache(name, tiny_models, gallery, tmp_path):
    pipe = load_pipeline(name, overrides=_tiny_overrides(name, tiny_models))
    resources, cache = Resources(), ContentCache(tmp_path)
    queries = _queries(gallery)
    first = pipe.run(queries, gallery, batch_size=2, cache=cache, resources=resources)
    backends = [
        load_backend(s.params.llm if hasattr(s.params, "llm") else s.params.captioner, resources)
        for s in pipe.stages
        if s.name in ("caption", "recompose", "reason")
    ]
    counters = [CallCounter(b) for b in backends]
    second = pipe.run(queries, gallery, batch_size=2, cache=cache, resources=resources)
    assert [c.requests for c in counters] == [0] * len(counters)
    for a, b in zip(first, second, strict=True):
        assert len(a.ranking) == 4 and set(a.ranking.ids) <= set(gallery.ids)
        assert a.ranking.ids == b.ranking.ids and a.targets == b.targets
        assert [r.stage for r in a.trace] == [s.name for s in pipe.stages]
        assert all(r.cache_misses == 0 for r in b.trace)
        assert sum(r.cache_hits for r in b.trace) > 0
    if name == "ldre":
        assert all(len(s.captions) == 3 and len(s.targets) == 3 for s in first)
    embedding = first[0].embeddings["target"]
    assert embedding.dim() == 1 and torch.isclose(embedding.norm(), torch.tensor(1.0), atol=1e-3)


def test_scripted_pipeline_second_run_makes_no_model_calls(gallery, tiny_models, tmp_path) -> None:
    captioner = {"backend": "scripted", "default": "a photo of a cat", "name": "cap"}
    llm = {"backend": "scripted", "default": "Edited Description: a red cat", "name": "lm"}
    pipe = load_pipeline(
        "cirevl",
        overrides={"stages.caption.captioner": captioner, "stages.recompose.llm": llm,
                   "stages.retrieve.k": 3},
    )  # fmt: skip
    resources, cache = Resources(), ContentCache(tmp_path)
    run = {"cache": cache, "resources": resources, "keep_models": True}  # models stay loaded
    first = pipe.run(_queries(gallery), gallery, **run)
    scripted = [load_backend(spec, resources) for spec in (captioner, llm)]
    assert [len(s.calls) for s in scripted] == [3, 3]
    assert all(s.targets == ["a red cat"] and s.captions == ["a photo of a cat"] for s in first)
    second = pipe.run(_queries(gallery), gallery, **run)
    assert [len(s.calls) for s in scripted] == [3, 3]
    assert [s.ranking.ids for s in second] == [s.ranking.ids for s in first]
    hits = {r.stage: r.cache_hits for r in second[0].trace}
    assert hits == {"caption": 1, "recompose": 1, "encode_text": 1, "retrieve": 0}


def _image(gallery: GalleryIndex, state: QueryState):
    from PIL import Image

    with Image.open(gallery.path(state.query.reference_id)) as im:
        return im.convert("RGB")
