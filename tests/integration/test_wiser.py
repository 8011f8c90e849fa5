"""The wiser pipeline end to end with tiny models: two branches, an MLLM verifier, confidence
fusion and a refinement round whose confident branches are answered by the content cache."""

from __future__ import annotations

import pytest
import torch

from cir import Query
from cir.cache import ContentCache
from cir.index import GalleryIndex
from cir.llm import load_backend
from cir.pipeline import load_pipeline
from cir.plan import plan_pipeline
from cir.rerank.confidence import fuse_confidences
from cir.resources import Resources

MODS = ["make it red", "add a dog next to it", "the same scene at night"]
REFINER = {"backend": "scripted", "name": "wiser-refiner", "default": "Suggestion: add a hat."}


@pytest.fixture(scope="module")
def gallery(photos, tiny_models, tmp_path_factory) -> GalleryIndex:
    from cir.models import load_encoder

    encoder = load_encoder(tiny_models["clip"])
    index = GalleryIndex.build(
        photos, encoder, out=tmp_path_factory.mktemp("wiser_index"), num_workers=0, progress=False
    )
    captions = [f"a photo of {gid.split('.')[0]}" for gid in index.ids]
    rows = {"captions": [[c] for c in captions]}
    index.set_sidecar("captions", encoder.encode_texts(captions).unsqueeze(1), {"k": 1}, rows)
    return index


def wiser_overrides(tiny_models, generators, tau_text: float, tau_image: float) -> dict:
    vlm = {"backend": "transformers", "model": tiny_models["vlm"]}
    lm = {"backend": "transformers", "model": tiny_models["lm"]}
    out = {
        "stages.caption.captioner": {"backend": "transformers", "model": tiny_models["blip"]},
        "stages.caption.prompt": "plain",
        "stages.caption.max_tokens": 6,
        "stages.caption.num_beams": 1,
        "stages.refine_text.llm": REFINER,
        "stages.refine_text.tau": tau_text,
        "stages.refine_image.llm": REFINER,
        "stages.refine_image.tau": tau_image,
    }
    for stage in ("edit_text", "edit_text_2"):
        out |= {f"stages.{stage}.llm": lm, f"stages.{stage}.max_tokens": 8}
    for stage in ("edit_image", "edit_image_2"):
        out |= {f"stages.{stage}.generator": {"model": generators["editor"]},
                f"stages.{stage}.steps": 2, f"stages.{stage}.true_cfg": None,
                f"stages.{stage}.negative_prompt": None}  # fmt: skip
    for stage in ("search_text", "search_image", "search_text_2", "search_image_2"):
        out[f"stages.{stage}.k"] = 4
    for stage in ("verify_text", "verify_image", "verify_text_2", "verify_image_2"):
        out |= {f"stages.{stage}.llm": vlm, f"stages.{stage}.top_n": 4,
                f"stages.{stage}.logprobs": 700, f"stages.{stage}.max_image_side": 64}  # fmt: skip
    return out


def test_wiser_refines_unsure_branches_and_fuses_by_confidence(
    tiny_models, generators, gallery, tmp_path
):
    # tau 1.0: the text branch is always refined; tau 0.0: the image branch never is
    pipe = load_pipeline("wiser", overrides=wiser_overrides(tiny_models, generators, 1.0, 0.0))
    resources, cache = Resources(), ContentCache(tmp_path)
    queries = [Query(m, reference_id=gallery.ids[i], id=f"q{i}") for i, m in enumerate(MODS)]
    states = pipe.run(queries, gallery, batch_size=3, cache=cache, resources=resources,
                      keep_models=True)  # fmt: skip
    assert len(load_backend(REFINER, resources).calls) == len(queries)  # text branch only
    for state in states:
        text, image = state.data["verify_text_2"]["p_yes"], state.data["verify_image_2"]["p_yes"]
        assert state.data["refine_text"] == f"{state.query.text} and add a hat."
        assert state.data["refine_image"] == state.query.text
        assert state.record("refine_text").notes["refine"]["triggered"] is True
        assert state.record("refine_image").notes["refine"]["triggered"] is False
        # the confident image branch repeats itself from the cache, picture and verdicts alike
        assert state.record("edit_image_2").cache_hits == 1
        assert state.record("verify_image_2").cache_misses == 0
        assert image == state.data["verify_image"]["p_yes"]
        assert state.record("edit_text_2").cache_misses == 1  # a new instruction
        # the fused ranking is the union of both top-4 lists by summed confidence
        fused = fuse_confidences([text, image], ["max", "first", "id"])
        assert state.ranking.ids == tuple(gid for gid, _ in fused)
        assert state.ranking.scores == pytest.approx([s for _, s in fused])
        assert set(state.ranking.ids) == set(text) | set(image) and len(text) == len(image) == 4
        assert torch.is_tensor(state.embeddings["edited_image"])


def test_wiser_plan_keeps_the_generator_through_the_second_round(tiny_models, generators):
    pipe = load_pipeline("wiser", overrides=wiser_overrides(tiny_models, generators, 0.7, 0.7))
    plan = plan_pipeline(pipe, device="cpu", device_bytes=2**34)
    editor = generators["editor"]
    resident = [editor in stage.resident for stage in plan.stages]
    names = [s.instance for s in pipe.stages]
    assert resident.index(True) == names.index("edit_image")
    assert len(resident) - resident[::-1].index(True) - 1 == names.index("edit_image_2")
    assert plan.models[editor].kind == "generator" and plan.models[editor].params > 0
