"""Tiny random open_clip, HF CLIP and SigLIP models through the real loading code."""

from __future__ import annotations

import json
import logging
import pickle

import pytest
import torch
from open_clip.transformer import QuickGELU
from PIL import Image

from cir.errors import ConfigError
from cir.models import Encoder, load_encoder
from cir.testing.clip import (
    EMBED_DIM,
    SIGLIP_CONTEXT,
    WIDTH,
    tiny_hf_clip,
    tiny_open_clip,
    tiny_siglip,
)

FACTORIES = {"open_clip": tiny_open_clip, "hf_clip": tiny_hf_clip, "siglip": tiny_siglip}
DIMS = {"open_clip": EMBED_DIM, "hf_clip": EMBED_DIM, "siglip": WIDTH}
CONTEXTS = {"open_clip": 77, "hf_clip": 77, "siglip": SIGLIP_CONTEXT}
TEXTS = ["a red dress", "the same jacket in blue without a hood", "", "Two DOGS on a beach!"]


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_encoders")
    return {kind: make(root / kind) for kind, make in FACTORIES.items()}


@pytest.fixture(scope="module", params=list(FACTORIES))
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def encoder(specs, kind) -> Encoder:
    return load_encoder(specs[kind])


def _photos() -> list[Image.Image]:
    gen = torch.Generator().manual_seed(1)
    shapes = [(40, 40), (90, 30), (30, 70), (64, 48), (33, 33)]
    return [
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy())
        for w, h in shapes
    ]


def test_shapes_norms_and_defaults_on_cpu(encoder, kind):
    images, dim = _photos(), DIMS[kind]
    img = encoder.encode_images(images, batch_size=2)
    txt = encoder.encode_texts(TEXTS)
    assert img.shape == (len(images), dim) and txt.shape == (len(TEXTS), dim)
    assert img.dtype == txt.dtype == torch.float32 and img.device.type == "cpu"
    assert torch.allclose(img.norm(dim=1), torch.ones(len(images)), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    assert encoder.dim == encoder.identity.dim == dim
    assert encoder.context_length == CONTEXTS[kind]
    if not torch.cuda.is_available():
        assert encoder.device.type == "cpu" and encoder.dtype is torch.float32
    assert not torch.allclose(txt[0], txt[1])  # different texts, different embeddings


def test_outputs_are_ordinary_tensors(encoder):
    out = encoder.encode_texts(["a cat"])
    out.mul_(2)  # an inference-mode tensor would refuse in-place updates here
    assert out.requires_grad is False and torch.allclose(out.norm(), torch.tensor(2.0))


def test_batches_equal_one_by_one(encoder):
    images = _photos()
    together = encoder.encode_images(images, batch_size=len(images))
    single = torch.cat([encoder.encode_images([im], batch_size=1) for im in images])
    assert torch.allclose(together, single, atol=1e-5)
    texts = encoder.encode_texts(TEXTS, batch_size=3)
    alone = torch.cat([encoder.encode_texts([t]) for t in TEXTS])
    assert torch.allclose(texts, alone, atol=1e-5)
    pixels = torch.stack([encoder.preprocess(im) for im in images])
    assert torch.allclose(encoder.encode_pixels(pixels), together, atol=1e-5)


def test_raw_outputs_normalise_to_the_default_ones(encoder):
    raw = encoder.encode_texts(TEXTS, normalize=False)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-3)
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=1), encoder.encode_texts(TEXTS))
    raw_img = encoder.encode_images(_photos()[:2], normalize=False)
    normed = torch.nn.functional.normalize(raw_img, dim=1)
    assert torch.allclose(normed, encoder.encode_images(_photos()[:2]), atol=1e-6)


def test_reloading_gives_identical_embeddings_and_identity(encoder, kind, specs, tmp_path):
    again = load_encoder(encoder.identity.spec)
    assert again.identity == encoder.identity
    assert torch.equal(again.encode_texts(TEXTS), encoder.encode_texts(TEXTS))
    rebuilt = load_encoder(FACTORIES[kind](tmp_path / "same_seed"))
    assert torch.equal(rebuilt.encode_images(_photos()), encoder.encode_images(_photos()))
    other = load_encoder(FACTORIES[kind](tmp_path / "other_seed", seed=1))
    assert not torch.allclose(other.encode_texts(TEXTS), encoder.encode_texts(TEXTS))


def test_long_texts_are_truncated_with_one_counted_warning(encoder, caplog):
    before = encoder.truncated_texts
    long_text = " ".join(["a very long description of a red dress"] * 40)
    with caplog.at_level(logging.WARNING, logger="cir.models"):
        out = encoder.encode_texts([long_text, "short", long_text + " again"], batch_size=2)
    assert out.shape[0] == 3 and torch.isfinite(out).all()
    assert encoder.truncated_texts == before + 2
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 3 texts" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cir.models"):
        encoder.encode_texts(["short"])
    assert not caplog.records and encoder.truncated_texts == before + 2


def test_targetpad_changes_wide_images_only(specs, kind, encoder):
    padded = load_encoder(specs[kind], preprocessing="targetpad")
    assert padded.identity.preprocessing == "targetpad"
    assert padded.identity.key == encoder.identity.key  # same space, different input handling
    wide = Image.new("RGB", (120, 40), (250, 20, 20))
    square = Image.new("RGB", (50, 50), (20, 250, 20))
    assert not torch.allclose(padded.preprocess(wide), encoder.preprocess(wide))
    assert torch.equal(padded.preprocess(square), encoder.preprocess(square))
    twin = encoder.with_preprocessing("targetpad")  # same weights, no reload
    assert twin.model is encoder.model and twin.identity == padded.identity
    assert torch.equal(twin.preprocess(wide), padded.preprocess(wide))
    assert encoder.identity.preprocessing == "default"


def test_preprocess_pickles_for_worker_processes(encoder):
    image = _photos()[1]
    clone = pickle.loads(pickle.dumps(encoder.preprocess))
    assert torch.equal(clone(image), encoder.preprocess(image))
    grey = image.convert("L")
    assert encoder.preprocess(grey).shape == encoder.preprocess(image).shape


def test_dtype_override_still_returns_float32(specs):
    enc = load_encoder(specs["open_clip"], dtype="bf16", device="cpu")
    assert enc.dtype is torch.bfloat16
    assert enc.model.visual.conv1.weight.dtype is torch.bfloat16  # open_clip keeps norms in fp32
    out = enc.encode_texts(["a cat"])
    assert out.dtype is torch.float32 and abs(out.norm().item() - 1) < 1e-5


def test_empty_and_wrong_inputs(encoder):
    assert encoder.encode_texts([]).shape == (0, encoder.dim)
    assert encoder.encode_images([]).shape == (0, encoder.dim)
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode_texts("a single string")
    with pytest.raises(TypeError, match="expects strings"):
        encoder.encode_texts(["ok", 3])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        encoder.encode_pixels(torch.zeros(3, 32, 32))


def test_quick_gelu_requested_by_config_is_built(tmp_path):
    plain = load_encoder(tiny_open_clip(tmp_path / "gelu"))
    quick = load_encoder(tiny_open_clip(tmp_path / "quick", quick_gelu=True))
    assert not any(isinstance(m, QuickGELU) for m in plain.model.modules())
    assert any(isinstance(m, torch.nn.GELU) for m in plain.model.modules())
    assert any(isinstance(m, QuickGELU) for m in quick.model.modules())
    # Same weights, different activation: the features differ.
    assert not torch.allclose(plain.encode_texts(TEXTS), quick.encode_texts(TEXTS))


def test_hf_models_other_than_clip_and_siglip_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="clip, siglip"):
        load_encoder(str(tmp_path))


def test_missing_weights_give_a_config_error(tmp_path):
    folder = tmp_path / "broken"
    spec = tiny_hf_clip(folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        load_encoder(spec)
