"""The ``rerank`` stage on the real vLLM path (vLLM's CPU build) with a tiny chat VLM.

The verify score must come from the first token's log-probabilities that vLLM reports, and agree
with the same stage run through the transformers backend on the same weights. A random tiny
model almost never puts "yes" or "no" among its top first tokens, so the model used here has its
output layer rewritten: every row is zero except those of ``yes`` (a random vector ``a``) and
``no`` (``-a``). Its first token is then always yes or no, which one and how sure depends on the
images, and every other token shares logit 0.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cir import Query, QueryState, StageRecord
from cir.index import GalleryIndex
from cir.resources import Resources
from cir.stages.base import Context
from cir.stages.rerank import Rerank
from cir.testing.lm import VLLM_CPU_ENGINE
from cir.types import Ranking

pytestmark = pytest.mark.vllm

COLOURS = [
    (220, 30, 30),
    (30, 200, 40),
    (30, 40, 210),
    (230, 220, 40),
    (20, 20, 20),
    (240, 240, 240),
]


def yes_no_vlm(path) -> str:
    """The tiny Qwen2-VL with an output layer that only ever says yes or no first."""
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    from cir.testing.lm import tiny_chat_vlm

    folder = tiny_chat_vlm(path)
    model = Qwen2VLForConditionalGeneration.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    yes, no = (token_for(tokenizer, word) for word in ("yes", "no"))
    head = torch.zeros_like(model.lm_head.weight)
    direction = torch.randn(head.shape[1], generator=torch.Generator().manual_seed(7))
    head[yes], head[no] = direction, -direction
    model.config.tie_word_embeddings = False
    model.config.text_config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(folder)
    return folder


def token_for(tokenizer, word: str) -> int:
    """A vocabulary entry that decodes to ``word`` (maybe with a leading space)."""
    from cir.rerank.yesno import normalise_token

    for token_id in range(len(tokenizer)):
        if normalise_token(tokenizer.decode([token_id])) == word:
            return token_id
    raise AssertionError(f"the tiny vocabulary has no token for {word!r}")


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> str:
    return yes_no_vlm(tmp_path_factory.mktemp("yes_no_vlm"))


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[GalleryIndex, Image.Image]:
    folder = tmp_path_factory.mktemp("gallery")
    paths, ids = [], []
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (96, 80), colour)
        image.paste((255 - colour[0], 128, colour[2] // 2), (10 * i, 5, 10 * i + 30, 40))
        paths.append(folder / f"c{i}.png")
        ids.append(f"c{i}")
        image.save(paths[-1])
    index = GalleryIndex.from_embeddings(ids, torch.randn(len(ids), 8), paths=paths, device="cpu")
    return index, Image.new("RGB", (90, 90), (120, 60, 30))


def states(gallery, texts=("make it brighter", "add a stripe")) -> list[QueryState]:
    index, reference = gallery
    out = []
    for n, text in enumerate(texts):
        state = QueryState(Query(text, reference=reference, id=f"q{n}"))
        state.ranking = Ranking(tuple(index.ids), tuple(float(-i) for i in range(len(index))))
        state.trace.append(StageRecord("rerank", "rerank"))
        out.append(state)
    return out


def run(spec, gallery, resources, **params) -> list[QueryState]:
    ctx = Context(gallery[0], resources, None)
    stage = Rerank(llm=spec, **params)
    stage.setup(ctx)
    return stage.run(states(gallery), ctx)


@pytest.fixture(scope="module")
def resources():
    res = Resources()
    yield res
    res.clear()


def vllm_spec(vlm: str, images: int) -> dict:
    engine = {**VLLM_CPU_ENGINE, "max_model_len": 1024}
    return {"backend": "vllm", "model": vlm, "limit_mm_per_prompt": {"image": images}, **engine}


def test_verify_score_from_vllm_logprobs_matches_transformers(vlm, gallery, resources):
    params = {"mode": "verify", "top_n": 6, "logprobs": 5}
    through_vllm = run(vllm_spec(vlm, 2), gallery, resources, **params)
    local = {"backend": "transformers", "model": vlm}
    through_transformers = run(local, gallery, Resources(), **params)
    for served, direct in zip(through_vllm, through_transformers, strict=True):
        data, expected = served.data["rerank"], direct.data["rerank"]
        assert set(data["source"].values()) == {"logprobs"}
        assert served.record("rerank").fallbacks == 0
        for id_, p in data["p_yes"].items():
            assert 0.0 < p < 1.0
            assert p == pytest.approx(expected["p_yes"][id_], abs=2e-3)
        assert len({round(p, 4) for p in data["p_yes"].values()}) > 1  # depends on the image
        scores = [data["p_yes"][i] for i in served.ranking.ids[:6]]
        assert scores == sorted(scores, reverse=True)
        assert served.ranking.ids == direct.ranking.ids


def test_listwise_and_grid_through_vllm(vlm, gallery, resources):
    listwise = run(vllm_spec(vlm, 7), gallery, resources, mode="listwise", top_n=6, max_tokens=8)
    grid = run(vllm_spec(vlm, 7), gallery, resources, mode="grid", top_n=6, tile_size=48)
    for state in [*listwise, *grid]:
        data = state.data["rerank"]
        # the model only says yes/no: no ordering, so one retry, then retrieval order (counted)
        assert data["fallback"] and state.record("rerank").fallbacks == 1
        assert state.record("rerank").notes["retries"] == 1
        assert state.ranking.ids == tuple(gallery[0].ids)
    assert grid[0].data["rerank_grid"].size == (3 * 48 + 4 * 4, 2 * 48 + 3 * 4)
