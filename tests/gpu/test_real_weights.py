"""Real weights on a GPU machine with network access: `make test-gpu` (or pytest --run-gpu)."""

from __future__ import annotations

import pytest
import torch

from cir import Query, load_pipeline
from cir.index import GalleryIndex
from cir.models import load_encoder

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def device() -> str:
    assert torch.cuda.is_available(), "the gpu group needs a CUDA device"
    return "cuda"


def test_open_clip_openai_weights_match_the_hugging_face_port(device, sample_photos):
    """QuickGELU must be on for `openai` tags: with it, open_clip and HF features agree."""
    photos = sorted(sample_photos.iterdir())[:6]
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in photos]
    ours = load_encoder("ViT-B-32/openai", device=device, dtype="fp32")
    theirs = load_encoder("openai/clip-vit-base-patch32", device=device, dtype="fp32")
    similarity = (ours.encode_images(images) * theirs.encode_images(images)).sum(-1)
    assert similarity.min() > 0.99, similarity
    texts = ["a photo of a cat", "a rocket on a launch pad"]
    assert (ours.encode_texts(texts) * theirs.encode_texts(texts)).sum(-1).min() > 0.99


def test_clip_fusion_finds_the_cat_with_real_weights(device, sample_photos, tmp_path):
    encoder = load_encoder("ViT-B-32/openai", device=device)
    index = GalleryIndex.build(sample_photos, encoder, out=tmp_path / "index")
    state = load_pipeline("text_only").run([Query("a photo of a cat")], index)[0]
    assert "cat" in state.ranking.ids[0]


def test_instruct_pix2pix_edits_a_photo_the_same_way_twice(device, sample_photos):
    """A real editor from the hub, on the GPU in float16: seeded edits repeat pixel for pixel."""
    import numpy as np

    from cir.diffusion import Picture, Rendering, draw, load_generator
    from cir.resources import Resources

    spec = {"model": "timbrooks/instruct-pix2pix", "dtype": "float16", "device": device}
    photo = sorted(sample_photos.iterdir())[0]
    settings = Rendering(steps=20, guidance=7.5, image_guidance=1.5, seed=0)
    first = draw(load_generator(spec, Resources()), [Picture("make it snow", photo)], settings)
    again = draw(load_generator(spec, Resources()), [Picture("make it snow", photo)], settings)
    assert np.array_equal(np.asarray(first[0].image), np.asarray(again[0].image))
    assert first[0].image.size[0] % 8 == 0
