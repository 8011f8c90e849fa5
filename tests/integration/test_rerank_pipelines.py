"""The ``rerank`` stage with a tiny chat VLM through transformers, and the cotrr, square and best
pipelines end to end on a tiny gallery (tiny CLIP, BLIP, LM and VLM built from configs)."""

from __future__ import annotations

import json

import pytest
import torch

from cir import Query, QueryState, StageRecord
from cir.cache import ContentCache
from cir.index import GalleryIndex
from cir.llm import load_backend
from cir.pipeline import load_pipeline
from cir.resources import Resources
from cir.stages.base import Context
from cir.stages.rerank import Rerank
from cir.types import Ranking

MODS = ["make it red", "add a dog next to it", "the same scene at night"]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, str]) -> GalleryIndex:
    from PIL import Image
    from skimage import data

    from cir.models import load_encoder

    folder = tmp_path_factory.mktemp("gallery")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image.resize((96, 72)).save(folder / f"{name}.jpg")
    for shade in ("red", "green", "blue", "yellow"):
        Image.new("RGB", (64, 64), shade).save(folder / f"{shade}.png")
    encoder = load_encoder(tiny_models["clip"])
    index = GalleryIndex.build(
        folder, encoder, out=tmp_path_factory.mktemp("index"), num_workers=0, progress=False
    )
    # one caption per gallery image for the caption-aware similarity of best.yaml
    captions = [f"a photo of {i.split('.')[0]}" for i in index.ids]
    embedded = encoder.encode_texts(captions).unsqueeze(1)
    index.set_sidecar("captions", embedded, {"model": "test"}, {"text": [[c] for c in captions]})
    return index


def queries(index: GalleryIndex) -> list[Query]:
    return [Query(m, reference_id=index.ids[i], id=f"q{i}") for i, m in enumerate(MODS)]


def ranked_states(index: GalleryIndex) -> list[QueryState]:
    states = []
    for n, query in enumerate(queries(index)):
        ids = tuple(index.ids[n:] + index.ids[:n])
        state = QueryState(query, ranking=Ranking(ids, tuple(float(-i) for i in range(len(ids)))))
        state.trace.append(StageRecord("rerank", "rerank"))
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


def vlm_spec(tiny_models) -> dict:
    return {"backend": "transformers", "model": tiny_models["vlm"]}


# ---------------------------------------------------------------------------- the stage
@pytest.mark.parametrize("mode", ["listwise", "grid"])
def test_order_modes_with_tiny_vlm(mode, tiny_models, gallery) -> None:
    ctx = Context(gallery, Resources(), None)
    stage = Rerank(mode=mode, top_n=4, llm=vlm_spec(tiny_models), max_tokens=12, tile_size=48)
    stage.setup(ctx)
    counter = CallCounter(stage.backend)
    before = [s.ranking for s in ranked_states(gallery)]
    states = stage.run(ranked_states(gallery), ctx)
    retried = sum(s.record("rerank").notes.get("retries", 0) for s in states)
    assert counter.requests == len(states) + retried  # one request per query (plus retries)
    for state, old in zip(states, before, strict=True):
        data = state.data["rerank"]
        assert sorted(state.ranking.ids[:4]) == sorted(old.ids[:4])
        assert state.ranking.ids[4:] == old.ids[4:]
        assert state.reasoning == [data["answer"]]
        assert state.record("rerank").fallbacks == int(data["fallback"])
        if data["fallback"]:  # a random model rarely writes an ordering
            assert state.ranking.ids == old.ids
    if mode == "grid":
        grid = states[0].data["rerank_grid"]
        assert grid.size == (2 * 48 + 3 * 4, 2 * 48 + 3 * 4)


def test_verify_with_tiny_vlm_scores_from_logprobs(tiny_models, gallery) -> None:
    ctx = Context(gallery, Resources(), None)
    vocab = 700  # more than the tiny vocabulary: every token's log-probability comes back
    stage = Rerank(mode="verify", top_n=5, llm=vlm_spec(tiny_models), logprobs=vocab)
    stage.setup(ctx)
    counter = CallCounter(stage.backend)
    states = stage.run(ranked_states(gallery), ctx)
    assert counter.requests == 3 * 5
    for state in states:
        data = state.data["rerank"]
        assert set(data["source"].values()) == {"logprobs"}
        scores = [data["p_yes"][i] for i in state.ranking.ids[:5]]
        assert all(0.0 < p < 1.0 for p in scores)
        assert scores == sorted(scores, reverse=True)
        assert state.record("rerank").fallbacks == 0


# ---------------------------------------------------------------------------- pipelines
def tiny_overrides(name: str, tiny_models: dict[str, str]) -> dict:
    vlm = vlm_spec(tiny_models)
    common = {"stages.retrieve.k": 6, "stages.rerank.llm": vlm, "stages.rerank.max_tokens": 12,
              "stages.rerank.top_n": 4}  # fmt: skip
    if name == "square":
        return {**common, "stages.reason.llm": vlm, "stages.reason.max_tokens": 8,
                "stages.rerank.grid_cols": 2, "stages.rerank.tile_size": 48}  # fmt: skip
    if name == "cotrr":
        return {**common, "stages.reason.llm": vlm, "stages.reason.max_tokens": 8,
                "stages.rerank.max_image_side": 64}  # fmt: skip
    language = {
        "stages.caption.captioner": {"backend": "transformers", "model": tiny_models["blip"]},
        "stages.caption.max_tokens": 6,
        "stages.recompose.llm": {"backend": "transformers", "model": tiny_models["lm"]},
        "stages.recompose.max_tokens": 8,
    }
    if name == "best":
        language |= {"stages.caption.num_captions": 3, "stages.rerank_wide.llm": vlm,
                     "stages.rerank_wide.top_n": 6, "stages.rerank_wide.tile_size": 48,
                     "stages.rerank_wide.max_tokens": 12}  # fmt: skip
    return {**common, **language}


def model_backends(pipe, resources) -> list:
    specs = []
    for stage in pipe.stages:
        spec = getattr(stage.params, "llm", None) or getattr(stage.params, "captioner", None)
        if spec is not None and spec not in specs:
            specs.append(spec)
    return [load_backend(spec, resources) for spec in specs]


@pytest.mark.parametrize("name", ["cotrr", "square", "best"])
def test_pipeline_end_to_end_and_second_run_from_cache(name, tiny_models, gallery, tmp_path):
    pipe = load_pipeline(name, overrides=tiny_overrides(name, tiny_models))
    resources, cache = Resources(), ContentCache(tmp_path)
    first = pipe.run(queries(gallery), gallery, batch_size=3, cache=cache, resources=resources)
    counters = [CallCounter(b) for b in model_backends(pipe, resources)]
    second = pipe.run(queries(gallery), gallery, batch_size=3, cache=cache, resources=resources)
    assert [c.requests for c in counters] == [0] * len(counters)
    rerankers = [s.instance for s in pipe.stages if s.name == "rerank"]
    for a, b in zip(first, second, strict=True):
        assert len(a.ranking) == 6 and len(set(a.ranking.ids)) == 6
        assert a.ranking == b.ranking
        assert [r.name for r in a.trace] == [s.instance for s in pipe.stages]
        assert all(r.cache_misses == 0 for r in b.trace)
        for instance in rerankers:
            data = a.data[instance]
            for move in data["moves"]:
                if instance == rerankers[-1]:
                    assert a.ranking.ids[move["to"] - 1] == move["id"]
            assert a.record(instance).notes["mode"] == data["mode"]
    if name in ("square", "best"):
        grid_key = f"{rerankers[0]}_grid"
        assert all(grid_key in s.data for s in first)
    query = next(s for s in pipe.stages if s.name == "retrieve").params.query
    assert first[0].embeddings[query].dim() == 1


def test_cotrr_reorders_with_a_scripted_reranker(tiny_models, gallery) -> None:
    scripted = {
        "backend": "scripted",
        "name": "cotrr-test",
        "default": '{"top_4_indices": [4, 3, 2, 1]}',
    }
    fields = {"reference_description": "a cat", "thoughts": "t", "reflections": "r"}
    answer = json.dumps(fields | {"target_description": "a dog"})
    overrides = tiny_overrides("cotrr", tiny_models) | {
        "stages.rerank.llm": scripted,
        "stages.reason.llm": {"backend": "scripted", "default": answer},
    }  # fmt: skip
    pipe = load_pipeline("cotrr", overrides=overrides)
    resources = Resources()
    states = pipe.run(queries(gallery), gallery, resources=resources, keep_models=True)
    calls = load_backend(scripted, resources).calls
    assert len(calls) == len(states)
    for state, request in zip(states, calls, strict=True):
        moves = {m["from"]: m["to"] for m in state.data["rerank"]["moves"]}
        assert moves == {1: 4, 2: 3, 3: 2, 4: 1}
        assert state.record("rerank").fallbacks == 0
        assert state.targets == ["a dog"] and state.reasoning[:2] == ["t", "r"]
        assert torch.isclose(state.embeddings["target"].norm(), torch.tensor(1.0), atol=1e-3)
        [message] = request.messages  # the prompt, then a label before every image
        kinds = [kind for kind, _ in message.parts()]
        assert kinds == ["text", "image"] * 5
        labels = [value for kind, value in message.parts() if kind == "text"]
        assert labels[0].endswith("Reference image:") and "Modification text" in labels[0]
        assert labels[1:] == ["Candidate images:\nImage 1:", "Image 2:", "Image 3:", "Image 4:"]
        assert request.json_mode
