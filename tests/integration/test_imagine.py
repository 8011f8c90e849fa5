"""Generators, the ``imagine`` stage, gallery twins and the paracosm pipeline, with tiny diffusers
pipelines built from configs and loaded through ``DiffusionPipeline.from_pretrained``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cir import Query
from cir.cache import ContentCache
from cir.cli import cli
from cir.context import Context
from cir.diffusion import Picture, Rendering, draw, load_generator
from cir.errors import BackendError, ConfigError, DataError
from cir.index import GalleryIndex
from cir.pipeline import Pipeline, load_pipeline
from cir.plan import plan_pipeline
from cir.resources import Resources
from cir.scoring import twin_scores
from cir.stages.caption import Caption
from cir.stages.imagine import Imagine
from cir.twins import TwinsInterrupted, imagine_twins
from demos.engine import Outcome
from demos.render import data_images, trace_html

FAST = Rendering(steps=2, seed=0)


@pytest.fixture()
def index(photos: Path, tiny_clip: str, tmp_path: Path) -> GalleryIndex:
    from cir.models import load_encoder

    return GalleryIndex.build(
        photos, load_encoder(tiny_clip), out=tmp_path / "index", num_workers=0, progress=False
    )


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


class DrawCounter:
    """Counts the pictures a real generator draws (its real ``draw`` still runs)."""

    def __init__(self, generator) -> None:
        self.pictures = 0
        self._draw = generator.draw
        generator.draw = self

    def __call__(self, pictures, rendering):
        self.pictures += len(pictures)
        return self._draw(pictures, rendering)


# ---------------------------------------------------------------------------- generators
def test_seeded_pictures_repeat_across_loads_and_batches(generators, photos):
    sources = sorted(photos.iterdir())
    pictures = [Picture("make it red", sources[0]), Picture("make it blue", sources[1])]
    first = load_generator({"model": generators["editor"]}, Resources())
    again = load_generator({"model": generators["editor"]}, Resources())
    assert first is not again and first.can_edit and first.kind.endswith("InstructPix2PixPipeline")
    batched = draw(first, pictures, FAST, batch_size=4)
    repeated = draw(again, pictures, FAST, batch_size=4)
    alone = draw(again, pictures, FAST, batch_size=1)
    for a, b, c in zip(batched, repeated, alone, strict=True):
        assert a.image.size == (40, 32)
        assert np.array_equal(pixels(a.image), pixels(b.image))
        assert np.abs(pixels(a.image) - pixels(c.image)).max() <= 2  # batched kernels' rounding
    reseeded = draw(first, pictures[:1], Rendering(steps=2, seed=1))[0]
    assert not np.array_equal(pixels(reseeded.image), pixels(batched[0].image))
    drawer = load_generator({"model": generators["drawer"]}, Resources())
    drawn = draw(drawer, [Picture("a red bus"), Picture("a cat")], FAST)
    assert [d.image.size for d in drawn] == [(32, 32), (32, 32)] and not drawer.can_edit
    guided = Rendering(steps=2, guidance=7.5, image_guidance=1.5, negative_prompt="blurry")
    edits = draw(first, pictures, guided, batch_size=4)  # the negative prompt goes with each
    assert len(edits) == 2
    assert not np.array_equal(pixels(edits[0].image), pixels(batched[0].image))


def test_pictures_come_back_from_the_cache(generators, photos, tmp_path):
    cache = ContentCache(tmp_path)
    generator = load_generator({"model": generators["editor"]}, Resources())
    counter = DrawCounter(generator)
    pictures = [Picture("add a hat", image=sorted(photos.iterdir())[0])] * 2
    first = draw(generator, pictures, FAST, cache=cache)
    assert counter.pictures == 1 and [d.cached for d in first] == [False, False]
    second = draw(generator, pictures, FAST, cache=cache)
    assert counter.pictures == 1 and [d.cached for d in second] == [True, True]
    assert np.array_equal(pixels(first[0].image), pixels(second[0].image))
    assert {e["kind"] for e in cache.entries()} == {"image"}


def _damaged_copy(source: str, tmp_path: Path, damage: str) -> str:
    folder = tmp_path / damage
    shutil.copytree(source, folder)
    if damage == "broken-index":
        (folder / "model_index.json").write_text("{not json")
    elif damage == "missing-unet":
        shutil.rmtree(folder / "unet")
    elif damage == "corrupt-weights":
        for weights in (folder / "unet").glob("*.safetensors"):
            weights.write_bytes(b"\x00" * 64)
    return str(folder)


@pytest.mark.parametrize("damage", ["broken-index", "missing-unet", "corrupt-weights"])
def test_a_damaged_pipeline_is_a_clear_error(generators, tmp_path, damage):
    folder = _damaged_copy(generators["editor"], tmp_path, damage)
    with pytest.raises(BackendError, match="cannot load the diffusers pipeline") as err:
        load_generator({"model": folder}, Resources())
    assert folder in str(err.value) and "model_index.json" in str(err.value)


def test_missing_pipelines_and_wrong_settings_are_clear_errors(generators, tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as err:
        load_generator({"model": str(tmp_path / "nowhere")}, Resources())
    assert str(tmp_path / "nowhere") in str(err.value)
    with pytest.raises(ConfigError, match=r"has no model_index\.json"):
        load_generator({"model": str(tmp_path)}, Resources())
    with pytest.raises(ConfigError, match="unknown parameter"):
        load_generator({"model": generators["drawer"], "steps": 3}, Resources())
    drawer = load_generator({"model": generators["drawer"]}, Resources())
    with pytest.raises(ConfigError, match="draws from text only"):
        draw(drawer, [Picture("a cat", image=Image.new("RGB", (32, 32)))], FAST)
    with pytest.raises(ConfigError, match="does not take true_cfg"):
        draw(drawer, [Picture("a cat")], Rendering(steps=2, true_cfg=4.0))


# ---------------------------------------------------------------------------- the stage
def _imagine_pipeline(editor: str) -> Pipeline:
    return Pipeline.from_dict(
        {
            "name": "imagine-test",
            "stages": [
                {"stage": "imagine", "params": {"generator": {"model": editor}, "steps": 2}},
                {"stage": "encode_image", "params": {"source": "data.imagined", "output": "q"}},
                {"stage": "retrieve", "params": {"query": "q", "k": 3}},
            ],
        }
    )


def test_imagine_stage_draws_into_the_state_and_the_trace(generators, index, tmp_path):
    pipe, cache, resources = (
        _imagine_pipeline(generators["editor"]),
        ContentCache(tmp_path),
        Resources(),
    )
    queries = [
        Query("make it red", reference_id=i, id=f"q{n}") for n, i in enumerate(index.ids[:3])
    ]
    first = pipe.run(queries, index, cache=cache, resources=resources)
    key = pipe.stage("imagine").models(Context())[0].key
    events = [(e.action, e.key) for e in resources.events]
    assert events[:2] == [("load", key), ("release", key)]  # released before the encoder loads
    for state in first:
        picture = state.data["imagined"]
        assert isinstance(picture, Image.Image) and picture.size == (40, 32)
        note = state.record("imagine").notes["imagined"]
        assert note["prompt"] == "make it red" and note["field"] == "data.imagined"
        assert note["seed"] == 0 and note["size"] == [40, 32]
        assert len(state.ranking) == 3
    second = pipe.run(queries, index, cache=cache, resources=resources)
    for a, b in zip(first, second, strict=True):
        assert b.record("imagine").cache_hits == 1 and b.record("imagine").cache_misses == 0
        assert np.array_equal(pixels(a.data["imagined"]), pixels(b.data["imagined"]))
        assert a.ranking == b.ranking
    html = trace_html(Outcome("imagine-test", first[0]))
    assert "Imagined pictures" in html and "data:image/png;base64," in html
    assert data_images(first[0]) == []  # drawn pictures are shown in the trace, not as a grid


def test_imagine_reads_extras_and_refuses_what_is_missing(generators, index, tmp_path):
    stage = Imagine(generator={"model": generators["editor"]}, steps=2, prompt="paracosm-circo")
    assert [p.field for p in stage.bound_inputs()] == ["query.image"]
    ctx = Context(index=index, resources=Resources())
    from cir.types import QueryState, StageRecord

    def state(extras):
        s = QueryState(Query("x", reference_id=index.ids[0], extras=extras))
        s.trace.append(StageRecord("imagine", "imagine"))
        return s

    extras = {"relative_caption": "has two cats", "shared_concept": "a sofa"}
    stage.setup(ctx)
    done = stage.run([state(extras)], ctx)[0]
    prompt = done.record("imagine").notes["imagined"]["prompt"]
    assert (
        prompt == "Apply this change to the picture: has two cats. Keep a sofa exactly as it is "
        "in the picture."
    )
    with pytest.raises(DataError, match=r"Query\.extras"):
        stage.run([state({})], ctx)
    text = Imagine(task="text", generator={"model": generators["drawer"]}, steps=2)
    assert [p.field for p in text.bound_inputs()] == ["targets"]
    text.setup(ctx)
    with pytest.raises(DataError, match="draws from targets"):
        text.run([state({})], ctx)


# ---------------------------------------------------------------------------- gallery twins
def _twin_tools(generators, tiny_models):
    captioner = Caption(
        captioner={"backend": "transformers", "model": tiny_models["blip"]}, max_tokens=6
    )
    drawer = Imagine(
        task="text", prompt="caption", generator={"model": generators["drawer"]}, steps=2, seed=42
    )
    return captioner, drawer


def test_twins_resume_from_their_shards(generators, tiny_models, index, tmp_path, monkeypatch):
    from cir.models import load_encoder

    encoder = load_encoder(tiny_models["clip"])
    folder, work = tmp_path / "index", tmp_path / "index" / "twins.build"
    ctx = Context(index=index, resources=Resources(), cache=ContentCache(tmp_path / "cache"))
    captioner, drawer = _twin_tools(generators, tiny_models)
    with pytest.raises(TwinsInterrupted):  # both caption shards and the first twin shard
        imagine_twins(index, folder, captioner, drawer, encoder, ctx, shard_size=2,
                      interrupt_after_shards=3)  # fmt: skip
    assert len(list(work.glob("captions-*.json"))) == 2
    assert len(list(work.glob("twins-*.json"))) == 1
    (work / "twins-00009.json").write_text("{")
    with pytest.raises(DataError, match="--no-resume"):
        imagine_twins(index, folder, captioner, drawer, encoder, ctx, shard_size=2)
    (work / "twins-00009.json").unlink()
    other = Imagine(
        task="text", prompt="caption", generator={"model": generators["drawer"]}, steps=3
    )
    with pytest.raises(DataError, match="other settings"):
        imagine_twins(index, folder, captioner, other, encoder, ctx, shard_size=2)
    asked = {"captions": 0, "pictures": 0}
    caption_images, draw_pictures = captioner.caption_images, drawer.draw_pictures

    def count(kind, call):
        def counted(items, *args, **kwargs):
            asked[kind] += len(items)
            return call(items, *args, **kwargs)

        return counted

    monkeypatch.setattr(captioner, "caption_images", count("captions", caption_images))
    monkeypatch.setattr(drawer, "draw_pictures", count("pictures", draw_pictures))
    summary = imagine_twins(index, folder, captioner, drawer, encoder, ctx, shard_size=2)
    assert summary == {"images": 4, "captions_resumed": 4, "twins_resumed": 2, "shards": 1}
    assert asked == {"captions": 0, "pictures": 2}  # only the missing twins are made
    assert not work.exists()
    saved = GalleryIndex.load(folder)
    twins, meta = saved.sidecar("twins")
    assert twins.shape == (4, index.dim) and twins.dtype == torch.float16
    assert meta["kind"] == "gallery_twins" and len(meta["captions"]) == 4
    # every twin is the picture drawn from its caption, embedded by the index's encoder
    drawn = draw_pictures([c[0] for c in meta["captions"]], [None] * 4, ctx)
    assert [d.key for d in drawn] == meta["keys"] and all(d.cached for d in drawn)
    want = encoder.encode_images([d.image for d in drawn])
    torch.testing.assert_close(twins.float(), want, atol=2e-3, rtol=0)
    assert ctx.resources.keys() == [drawer.models(ctx)[0].key]  # the captioner was released


def test_cli_index_imagine_adds_the_sidecar(generators, tiny_models, index, tmp_path):
    folder = str(tmp_path / "index")
    blip = f"{{backend: transformers, model: {tiny_models['blip']}}}"
    args = ["index", "imagine", folder, "--captioner", blip, "--generator", generators["drawer"],
            "--steps", "2", "--max-tokens", "6", "--caption-prompt", "plain",
            "--no-cache", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "sidecar 'twins' saved" in result.output and "images 4" in result.output
    assert "twins" in json.loads((tmp_path / "index" / "manifest.json").read_text())["sidecars"]
    args[args.index("--generator") + 1] = str(tmp_path / "none")
    bad = CliRunner().invoke(cli, args)
    assert bad.exit_code != 0 and "does not exist" in bad.output and "Traceback" not in bad.output


# ---------------------------------------------------------------------------- paracosm
def paracosm_overrides(generators, tiny_models) -> dict:
    return {
        "stages.imagine.generator": {"model": generators["editor"]},
        "stages.imagine.steps": 2,
        "stages.imagine.true_cfg": None,
        "stages.imagine.negative_prompt": None,
        "stages.imagine.width": None,
        "stages.imagine.height": None,
        "stages.describe.captioner": {"backend": "transformers", "model": tiny_models["vlm"]},
        "stages.describe.max_tokens": 6,
        "stages.retrieve.k": 4,
    }


def test_paracosm_end_to_end_and_from_the_cache(generators, tiny_models, index, tmp_path):
    from cir.models import load_encoder

    ctx = Context(index=index, resources=Resources(), cache=ContentCache(tmp_path / "cache"))
    captioner, drawer = _twin_tools(generators, tiny_models)
    imagine_twins(
        index, tmp_path / "index", captioner, drawer, load_encoder(tiny_models["clip"]), ctx
    )
    pipe = load_pipeline("paracosm", overrides=paracosm_overrides(generators, tiny_models))
    queries = [
        Query("make it red", reference_id=i, id=f"q{n}") for n, i in enumerate(index.ids[:2])
    ]
    states = pipe.run(queries, index, cache=ctx.cache, resources=ctx.resources)
    twins = index.sidecar("twins")[0].float()
    for state in states:
        query = state.embeddings["query"][None]
        want = twin_scores(query, index.embeddings.float(), twins)[0].topk(4)
        assert state.ranking.ids == tuple(index.ids[i] for i in want.indices)
        assert state.ranking.scores == pytest.approx(want.values.tolist(), abs=1e-5)
        assert state.captions and isinstance(state.data["mental"], Image.Image)
    again = pipe.run(queries, index, cache=ctx.cache, resources=ctx.resources)
    for a, b in zip(states, again, strict=True):
        assert a.ranking == b.ranking
        assert all(r.cache_misses == 0 for r in b.trace)


def test_plan_sizes_the_generator_from_its_components(generators, tmp_path):
    from diffusers import DiffusionPipeline

    loaded = DiffusionPipeline.from_pretrained(generators["editor"])
    sizes = {n: sum(p.numel() for p in getattr(loaded, n).parameters())
             for n in ("unet", "vae", "text_encoder")}  # fmt: skip
    config_only = Path(_damaged_copy(generators["editor"], tmp_path, "config-only"))
    for weights in config_only.rglob("*.safetensors"):
        weights.unlink()  # as a hub cache holding configs only: counted on the meta device
    for model, device, offload, count in [
        (generators["editor"], "cpu", "none", sum(sizes.values())),
        (str(config_only), "cpu", "none", sum(sizes.values())),
        (generators["editor"], "cuda", "model", max(sizes.values())),
    ]:
        overrides = {
            "stages.imagine.generator": {"model": model, "offload": offload},
            "stages.describe.captioner": {"backend": "scripted", "default": "a photo"},
        }
        pipe = load_pipeline("paracosm", overrides=overrides)
        plan = plan_pipeline(pipe, device=device, device_bytes=2**30)
        estimate = plan.models[model]
        assert estimate.kind == "generator" and estimate.params == sum(sizes.values())
        assert estimate.weight_bytes == count * (4 if device == "cpu" else 2)
        assert plan.stages[0].resident == [model] and plan.stages[0].bytes >= estimate.weight_bytes
