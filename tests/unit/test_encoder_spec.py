"""Encoder names, identities, device/dtype choice and target pad: no weights are loaded."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from PIL import Image

from cir.errors import ConfigError
from cir.models import EncoderIdentity, load_encoder, parse_spec, target_pad, wants_quick_gelu
from cir.models.encoder import check_preprocessing, resolve_device, resolve_dtype


@pytest.mark.parametrize(
    ("spec", "pretrained", "family", "source", "model", "tag"),
    [
        ("ViT-L-14/openai", None, "open_clip", "builtin", "ViT-L-14", "openai"),
        ("ViT-L-14", "openai", "open_clip", "builtin", "ViT-L-14", "openai"),
        ("vit-b-32/laion400m_e32", None, "open_clip", "builtin", "ViT-B-32", "laion400m_e32"),
        ("ViT-B/32", "openai", "open_clip", "builtin", "ViT-B-32", "openai"),
        ("ViT-L-14/openai", "openai", "open_clip", "builtin", "ViT-L-14", "openai"),
        ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None, "open_clip", "hf-hub",
         "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None),
        ("openai/clip-vit-large-patch14", None, "hf", "hub", "openai/clip-vit-large-patch14", None),
        ("google/siglip-base-patch16-224", None, "hf", "hub", "google/siglip-base-patch16-224",
         None),
        ("hf:openai/clip-vit-base-patch32", None, "hf", "hub", "openai/clip-vit-base-patch32",
         None),
    ],
)  # fmt: skip
def test_names_users_type(spec, pretrained, family, source, model, tag):
    parsed = parse_spec(spec, pretrained)
    assert (parsed.family, parsed.source, parsed.model, parsed.pretrained) == (
        family,
        source,
        model,
        tag,
    )
    assert parse_spec(parsed.spec) == parsed  # the canonical string parses back to the same spec


def test_local_directories_are_recognised_by_their_config(tmp_path):
    clip_dir, hf_dir = tmp_path / "oc", tmp_path / "hf"
    clip_dir.mkdir()
    hf_dir.mkdir()
    (clip_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "clip"}))

    assert parse_spec(f"local-dir:{clip_dir}").source == "local-dir"
    assert parse_spec(str(clip_dir)).family == "open_clip"  # a bare path to an open_clip folder
    parsed = parse_spec(str(hf_dir))
    assert (parsed.family, parsed.source, parsed.model) == ("hf", "local", str(hf_dir.resolve()))
    assert parse_spec(f"hf:{hf_dir}") == parsed
    assert parse_spec(parsed.spec) == parsed


@pytest.mark.parametrize(
    ("spec", "pretrained", "message"),
    [
        ("ViT-L-15/openai", None, "ViT-L-14"),
        ("VIT-L14", None, "unknown encoder"),
        ("ViT-L-14", None, "needs pretrained weights"),
        ("ViT-L-14/opena", None, "Did you mean 'openai'"),
        ("ViT-L-14/openai", "laion2b_s32b_b82k", "give the tag once"),
        ("openai/clip-vit-large-patch14", "openai", "only applies to open_clip"),
        ("hf-hub:laion/x", "openai", "only applies to open_clip"),
        ("hf-hub:not a repo", None, "'org/repo'"),
        ("", None, "non-empty"),
        ("/definitely/not/here", None, "does not exist"),
        ("local-dir:/definitely/not/here", None, "does not exist"),
        ("a/b/c", None, "unknown encoder"),
    ],
)
def test_bad_names_say_what_is_valid(spec, pretrained, message):
    with pytest.raises(ConfigError) as err:
        parse_spec(spec, pretrained)
    assert message in str(err.value)


def test_folder_without_a_model_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"neither open_clip_config\.json"):
        parse_spec(str(tmp_path))
    with pytest.raises(ConfigError, match=r"has no open_clip_config\.json"):
        parse_spec(f"local-dir:{tmp_path}")
    (tmp_path / "open_clip_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="open_clip directory"):
        parse_spec(f"hf:{tmp_path}")


def test_load_encoder_refuses_bad_options_before_loading_anything():
    with pytest.raises(ConfigError, match="targetpad"):
        load_encoder("ViT-B-32/openai", preprocessing="squash")
    with pytest.raises(ConfigError, match="'fp32', 'fp16', 'bf16'"):
        load_encoder("ViT-B-32/openai", dtype="int8")


def test_quick_gelu_follows_the_weights_tag_in_open_clips_own_configs():
    # OpenAI's weights were trained with QuickGELU; LAION's and DataComp's were not.
    assert open_clip.get_pretrained_cfg("ViT-L-14", "openai")["quick_gelu"] is True
    assert wants_quick_gelu("ViT-L-14", "openai")
    assert wants_quick_gelu("ViT-B-32", "openai")
    assert wants_quick_gelu("RN50", "openai")
    assert not wants_quick_gelu("ViT-L-14", "laion2b_s32b_b82k")
    assert not wants_quick_gelu("ViT-B-32", "datacomp_xl_s13b_b90k")
    assert not wants_quick_gelu("ViT-L-14", None)
    # Every tag open_clip marks as QuickGELU is detected, and no other.
    for model, tag in open_clip.list_pretrained():
        expected = bool(open_clip.get_pretrained_cfg(model, tag).get("quick_gelu", False))
        assert wants_quick_gelu(model, tag) is expected


def test_identity_round_trips_and_keys_on_family_model_and_weights():
    ident = EncoderIdentity("open_clip", "ViT-L-14", "openai", "ViT-L-14/openai", "targetpad", 768)
    assert ident.key == "open_clip:ViT-L-14:openai"
    assert EncoderIdentity.from_dict(json.loads(json.dumps(ident.to_dict()))) == ident
    other = EncoderIdentity("open_clip", "ViT-L-14", "laion2b_s32b_b82k", "x", "targetpad", 768)
    assert other.key != ident.key
    with pytest.raises(ConfigError, match="missing"):
        EncoderIdentity.from_dict({"family": "hf"})


def test_device_and_dtype_defaults_and_overrides():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) is torch.float32
    assert resolve_dtype(None, torch.device("cuda")) is torch.float16
    assert resolve_dtype("bf16", cpu) is torch.bfloat16
    assert resolve_dtype("FP16", cpu) is torch.float16
    assert resolve_dtype(torch.float32, cpu) is torch.float32
    with pytest.raises(ConfigError):
        resolve_dtype(torch.int8, cpu)
    with pytest.raises(ConfigError, match="invalid device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    assert check_preprocessing("targetpad") == "targetpad"


def test_target_pad_pads_elongated_images_only():
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    padded = target_pad(wide)
    assert padded.size == (300, 240)  # 300 / 1.25 = 240: aspect ratio brought down to 1.25
    assert padded.getpixel((0, 0)) == (0, 0, 0)  # black border
    assert padded.getpixel((150, 120)) == (255, 0, 0)  # original content in the middle
    tall = target_pad(Image.new("RGB", (100, 300)))
    assert tall.size == (240, 300)
    for size in [(100, 100), (120, 100)]:  # aspect ratio below 1.25: untouched
        image = Image.new("RGB", size)
        assert target_pad(image) is image


def test_checkpoint_file_as_pretrained_round_trips(tmp_path):
    checkpoint = tmp_path / "my_finetune.pt"
    checkpoint.write_bytes(b"weights")
    parsed = parse_spec("ViT-B-32", pretrained=str(checkpoint))
    assert parsed.pretrained == str(checkpoint.resolve())
    assert parse_spec(parsed.spec) == parsed
    assert not wants_quick_gelu("ViT-B-32", parsed.pretrained)
