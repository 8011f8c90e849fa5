"""Gallery captions and language stages on a local Ray cluster equal local runs; the content
cache the actors share serves a second run without a model call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cir import Query
from cir.cache import ContentCache
from cir.context import Context
from cir.errors import DataError
from cir.gallery_captions import caption_gallery
from cir.index import GalleryIndex
from cir.models import load_encoder
from cir.pipeline import load_pipeline
from cir.stages.caption import Caption

MODS = ["make it red", "add a dog", "at night", "from above", "in winter"]


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory, sample_photos: Path, tiny_clip: str) -> Path:
    out = tmp_path_factory.mktemp("ray_stage_index")
    GalleryIndex.build(sample_photos, load_encoder(tiny_clip), out=out, num_workers=0)
    return out


def _captioner(tiny_models) -> Caption:
    blip = {"backend": "transformers", "model": tiny_models["blip"]}
    return Caption(captioner=blip, num_captions=2, temperature=1.0, seed=5, max_tokens=6)


def _caption(folder: Path, tiny_models, ray, progress_file: Path) -> GalleryIndex:
    index = GalleryIndex.load(folder, mmap=False)
    encoder = load_encoder(index.encoder.spec)
    ctx = Context(index=index)
    caption_gallery(
        index,
        _captioner(tiny_models),
        encoder,
        ctx,
        batch_size=3,
        progress_file=progress_file,
        ray=ray,
    )
    return index


def test_gallery_captions_on_ray_equal_local(index_folder, tiny_models, ray_cluster, tmp_path):
    local = _caption(index_folder, tiny_models, None, tmp_path / "local.jsonl")
    on_ray = _caption(index_folder, tiny_models, True, tmp_path / "ray.jsonl")
    local_emb, local_meta = local.sidecar("captions")
    ray_emb, ray_meta = on_ray.sidecar("captions")
    assert ray_meta["captions"] == local_meta["captions"]
    assert all(len(c) == 2 for c in ray_meta["captions"])
    assert torch.equal(ray_emb, local_emb)
    lines = (tmp_path / "ray.jsonl").read_text().splitlines()  # progress kept for a resume
    assert sorted(json.loads(line)["candidate"] for line in lines) == sorted(on_ray.ids)


def _pipeline(tiny_models):
    blip = json.dumps({"backend": "transformers", "model": tiny_models["blip"]})
    llm = json.dumps({"backend": "scripted", "echo": True})
    overrides = [f"stages.caption.captioner={blip}", f"stages.recompose.llm={llm}"]
    return load_pipeline("cirevl", [*overrides, "stages.caption.max_tokens=6"])


def _run(pipeline, folder: Path, cache: ContentCache, ray):
    index = GalleryIndex.load(folder)
    queries = [
        Query(text, reference_id=ref, id=f"q{n}")
        for n, (text, ref) in enumerate(zip(MODS, index.ids, strict=False))
    ]
    return pipeline.run(queries, index, batch_size=2, cache=cache, ray=ray, progress=False)


def _misses_and_hits(states, stage: str) -> tuple[int, int]:
    records = [s.record(stage) for s in states]
    return sum(r.cache_misses for r in records), sum(r.cache_hits for r in records)


def test_language_stages_on_ray_equal_local_and_reuse_the_cache(
    index_folder, tiny_models, ray_cluster, tmp_path
) -> None:
    pipeline = _pipeline(tiny_models)
    local = _run(pipeline, index_folder, ContentCache(tmp_path / "local"), None)
    shared = ContentCache(tmp_path / "ray")
    first = _run(pipeline, index_folder, shared, True)
    for a, b in zip(local, first, strict=True):
        assert (a.captions, a.targets, a.llm_raw) == (b.captions, b.targets, b.llm_raw)
        assert a.ranking.ids == b.ranking.ids
    assert _misses_and_hits(first, "caption") == (len(MODS), 0)
    assert len(shared) > 0  # the actors wrote the driver's cache
    again = _run(pipeline, index_folder, shared, True)
    for stage in ("caption", "recompose"):
        misses, hits = _misses_and_hits(again, stage)
        assert misses == 0 and hits >= len(MODS), (stage, misses, hits)
    assert [s.targets for s in again] == [s.targets for s in first]


def test_a_user_error_inside_an_actor_is_raised_as_itself(
    index_folder, tiny_models, ray_cluster
) -> None:
    index = GalleryIndex.load(index_folder)
    queries = [Query("make it red", reference_id="not-in-the-gallery.jpg", id="q0")]
    with pytest.raises(DataError, match=r"not-in-the-gallery\.jpg"):
        _pipeline(tiny_models).run(queries, index, ray=True, progress=False)
