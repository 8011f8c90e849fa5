"""``cir pipelines plan``: the published models' sizes from their configs alone, offline.

The configs carry the published architectures' dimensions and sit in a Hugging Face cache
folder, so the plan reads them exactly as it would after fetching config.json from the hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cir.cli import cli
from cir.index.ann_sizing import parse_memory as parse_bytes
from cir.pipeline import load_pipeline
from cir.plan import GiB, plan_pipeline


def _qwen_text() -> dict:
    return dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                max_position_embeddings=32768, tie_word_embeddings=False)  # fmt: skip


def published_configs() -> dict[str, dict]:
    """config.json of the models the `best` pipeline names (published dimensions)."""
    from transformers import Blip2Config, Qwen2_5_VLConfig, Qwen2Config

    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                  out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31])  # fmt: skip
    blip2 = Blip2Config(  # BLIP-2 OPT-6.7b finetuned on COCO (LDRE's captioner)
        vision_config=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                           num_attention_heads=16, image_size=364, patch_size=14),
        qformer_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072, encoder_hidden_size=1408),
        text_config=dict(model_type="opt", hidden_size=4096, ffn_dim=16384,
                         num_hidden_layers=32, num_attention_heads=32, vocab_size=50272,
                         max_position_embeddings=2048, word_embed_proj_dim=4096),
        num_query_tokens=32,
    )  # fmt: skip
    configs = {
        "Qwen/Qwen2.5-7B-Instruct": Qwen2Config(**_qwen_text()),
        "Qwen/Qwen2.5-VL-7B-Instruct": Qwen2_5_VLConfig(
            text_config=_qwen_text(), vision_config=vision
        ),
        "Salesforce/blip2-opt-6.7b-coco": blip2,
    }
    out = {}
    for name, config in configs.items():
        data = config.to_dict()
        data["architectures"] = [
            {"qwen2": "Qwen2ForCausalLM", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
             "blip-2": "Blip2ForConditionalGeneration"}[data["model_type"]]
        ]  # fmt: skip
        data["torch_dtype"] = "bfloat16"
        out[name] = data
    return out


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """A Hugging Face cache holding only the config.json of each published model."""
    root = tmp_path_factory.mktemp("hf_cache")
    for name, config in published_configs().items():
        repo = root / f"models--{name.replace('/', '--')}"
        snapshot = repo / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(json.dumps(config))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0" * 40)
    return root


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_best_plan_has_the_published_sizes_and_one_language_model_per_stage(offline_hub):
    pipe = load_pipeline("best", overrides=["encoder=ViT-L-14/openai"])
    plan = plan_pipeline(pipe, "cuda", 80 * GiB)
    params = {name: m.params for name, m in plan.models.items()}
    assert 7.55e9 < params["Qwen/Qwen2.5-7B-Instruct"] < 7.7e9
    assert 8.2e9 < params["Qwen/Qwen2.5-VL-7B-Instruct"] < 8.4e9
    assert 7.6e9 < params["Salesforce/blip2-opt-6.7b-coco"] < 8.0e9
    assert params["ViT-L-14/openai"] == 427_616_513
    qwen = plan.models["Qwen/Qwen2.5-7B-Instruct"]
    assert qwen.dtype == "bfloat16" and qwen.weight_bytes == 2 * qwen.params
    assert qwen.kv_bytes == 2 * 28 * 4 * 128 * 2 * 32768  # one full-length sequence
    for stage in plan.stages:  # the run's schedule: never two language models at once
        language = [n for n in stage.resident if plan.models[n].kind == "language"]
        assert len(language) <= 1, (stage.stage, language)
    assert plan.peak.stage == "rerank_wide" and not plan.warnings
    summed = sum(m.total for m in plan.models.values())
    assert plan.peak.bytes < summed / 2  # stage-major: far below loading everything at once


def test_a_plan_that_does_not_fit_says_how_to_lower_it(offline_hub):
    plan = plan_pipeline(load_pipeline("best"), "cuda", 12 * GiB)
    (warning,) = plan.warnings
    assert "exceeds the device" in warning and "tensor_parallel_size" in warning
    assert "rerank_wide" in warning


def test_plan_command_prints_the_table_and_json(offline_hub):
    runner = CliRunner()
    res = runner.invoke(cli, ["pipelines", "plan", "cirevl", "--memory", "24GiB"])
    assert res.exit_code == 0, res.output
    assert "Qwen/Qwen2.5-7B-Instruct" in res.output and "peak:" in res.output
    res = runner.invoke(cli, ["pipelines", "plan", "cirevl", "--json", "--device", "cpu"])
    data = json.loads(res.output)
    assert data["models"]["Qwen/Qwen2.5-7B-Instruct"]["dtype"] == "float32"
    assert data["peak_stage"] == "recompose"


def test_a_model_without_any_config_is_reported_not_fatal(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    plan = plan_pipeline(load_pipeline("cirevl"), "cuda", 24 * GiB)
    hub_models = ("Salesforce/blip2-flan-t5-xxl", "Qwen/Qwen2.5-7B-Instruct")
    assert all(plan.models[name].params is None for name in hub_models)
    assert any("size of" in w and "unknown" in w for w in plan.warnings)


def test_sizes_parse_with_units():
    assert parse_bytes("24GiB") == 24 * 2**30 and parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("512 mib") == 512 * 2**20 and parse_bytes("1000") == 1000
    with pytest.raises(Exception, match="is not a size"):
        parse_bytes("lots")


def test_the_gallery_captioner_is_planned_before_the_stages(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    plan = plan_pipeline(load_pipeline("imagescope"), "cuda", 24 * GiB)
    first = plan.stages[0]
    assert first.stage == "gallery_captions"
    assert any("llava" in name for name in first.models)
