"""The demo's callbacks over a tiny real gallery, a tiny CLIP model and scripted language models."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cir.resources import Resources
from demos.app import build_app
from demos.callbacks import DemoCallbacks
from demos.engine import DemoEngine
from demos.safety import (
    TILE_SIDE,
    decode_upload,
    gallery_image,
    gallery_tile,
    redact_config,
    redact_secrets,
)

CAPTION = "a photo of a cat lying on a red sofa"
TARGET = "a dog lying on a red sofa"


def _scripted(**options) -> dict:
    return {"backend": "scripted", **options}


def _language_pipeline(folder: Path, name: str, recompose_answer: str, rerank: bool) -> str:
    """A caption -> recompose -> text search (-> listwise re-rank) pipeline with scripted models."""
    stages = [
        {"stage": "caption", "params": {"captioner": _scripted(default=CAPTION, name=name)}},
        {
            "stage": "recompose",
            "params": {"llm": _scripted(default=recompose_answer, name=name), "retries": 0},
        },
        {"stage": "encode_text", "params": {"source": "targets", "output": "target"}},
        {"stage": "retrieve", "params": {"query": "target", "k": 6}},
    ]
    if rerank:
        answer = 'Step 1: the sofa matters. Step 3: best first. {"ranking": [3, 1, 2]}'
        stages.append({"stage": "rerank", "params": {"llm": _scripted(default=answer), "top_n": 3}})
    spec = {"name": name, "description": f"{name} test", "stages": stages}
    if rerank:  # the page offers only the knobs a pipeline declares
        mode = {"label": "mode", "set": ["stages.rerank.mode"], "choices": ["listwise", "grid"]}
        spec["knobs"] = {"rerank_mode": mode}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _failing_pipeline(folder: Path) -> str:
    """A pipeline whose LLM answers once, then fails like a backend that went away."""
    llm = _scripted(responses=[f"Target Description: {TARGET}"], when_exhausted="error")
    stages = [
        {"stage": "caption", "params": {"captioner": _scripted(default=CAPTION, name="fail")}},
        {"stage": "recompose", "params": {"llm": llm}},
        {"stage": "encode_text", "params": {"source": "targets", "output": "target"}},
        {"stage": "retrieve", "params": {"query": "target"}},
    ]
    path = folder / "flaky.yaml"
    path.write_text(yaml.safe_dump({"name": "flaky", "stages": stages}))
    return str(path)


@pytest.fixture(scope="module")
def pipeline_files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("demo_pipelines")
    return {
        "language": _language_pipeline(folder, "language", f"Target Description: {TARGET}", True),
        "fallback": _language_pipeline(folder, "fallback", "I cannot help with that.", False),
        "flaky": _failing_pipeline(folder),
    }


@pytest.fixture(scope="module")
def engine(sample_index, pipeline_files) -> DemoEngine:
    offered = ["clip_fusion", "image_only", "text_only", *pipeline_files.values()]
    return DemoEngine(sample_index, offered, resources=Resources())


@pytest.fixture(scope="module")
def callbacks(engine) -> DemoCallbacks:
    return DemoCallbacks(engine)


@pytest.fixture(scope="module")
def photo_id(sample_index) -> str:
    return sample_index.ids[0]


def test_search_returns_tiles_from_the_gallery_folder_with_scores(
    callbacks, sample_index, photo_id
):
    tiles, trace, ids, grid, status = callbacks.search(
        "clip_fusion", None, photo_id, "make it black and white", alpha=0.5, top_k=4
    )
    assert len(tiles) == len(ids) == 4
    for (image, caption), gid in zip(tiles, ids, strict=True):
        expected = Image.open(sample_index.path(gid)).convert("RGB")
        expected.thumbnail((TILE_SIDE, TILE_SIDE))
        assert isinstance(image, Image.Image) and image.size == expected.size  # a copy, no path
        rank, score, shown_id = caption.split(" · ")
        assert rank.startswith("#") and shown_id == gid and float(score) <= 1.0
    assert "image 0.50 · text 0.50" in trace  # the fusion weights that were used
    for stage in ("encode_image", "encode_text", "fuse", "retrieve"):
        assert f"<td>{stage}</td>" in trace
    assert grid is None and "queries answered" in status


def test_hide_reference_drops_it_from_its_results(callbacks, photo_id):
    _, _, with_ref, *_ = callbacks.search("image_only", None, photo_id, "", top_k=50)
    _, _, without, *_ = callbacks.search(
        "image_only", None, photo_id, "", top_k=50, exclude_reference=True
    )
    assert with_ref[0] == photo_id  # an image is its own nearest neighbour
    assert photo_id not in without and len(without) == len(with_ref) - 1


def test_uploaded_image_is_used_as_the_reference(callbacks, sample_index, photo_id, tmp_path):
    upload = tmp_path / "upload.png"
    Image.open(sample_index.path(photo_id)).save(upload)
    _, trace, ids, *_ = callbacks.search("image_only", str(upload), None, "", top_k=3)
    assert ids[0] == photo_id and "Could not answer" not in trace


def test_language_trace_shows_captions_targets_reasoning_and_moves(
    callbacks, pipeline_files, photo_id
):
    tiles, trace, ids, _, _ = callbacks.search("language", None, photo_id, "a dog instead")
    assert CAPTION in trace and TARGET in trace
    assert "Step 1: the sofa matters" in trace  # the re-ranker's chain of thought
    assert "<th>before</th><th>after</th>" in trace and "▲ 2" in trace  # candidate 3 -> rank 1
    assert tiles[0][1].startswith("#1 ▲2 · ")  # the tile says how far it moved
    assert len(ids) == 6


def test_parser_fallback_is_flagged(callbacks, photo_id):
    _, trace, ids, *_ = callbacks.search("fallback", None, photo_id, "a dog instead")
    assert ids, "a fallback still answers the query"
    assert "Parser fallbacks" in trace and "<b>recompose</b> fell back 1×" in trace
    assert "a dog instead" in trace  # the fallback target is the modification text


def test_backend_failure_is_a_message_and_the_app_goes_on(callbacks, engine, photo_id):
    first = callbacks.search("flaky", None, photo_id, "a dog instead")
    failed_before = engine.failed
    tiles, trace, ids, *_ = callbacks.search("flaky", None, photo_id, "a cat instead")
    assert first[2] and not ids and not tiles
    assert "Could not answer this query" in trace and "scripted responses" in trace
    assert "Traceback" not in trace and engine.failed == failed_before + 1
    assert callbacks.search("clip_fusion", None, photo_id, "in red")[2]  # the next query works


@pytest.mark.parametrize(
    ("image", "ref", "text", "message"),
    [
        (None, None, "in red", "upload a reference image or pick one"),
        (None, "no_such_image.jpg", "in red", "is not an image of this gallery"),
        (None, "IDX0", "   ", "type how the target should differ"),
        (None, "IDX0", "x" * 1001, "keep it under 1000"),
    ],
)
def test_bad_queries_get_clear_messages(callbacks, sample_index, image, ref, text, message):
    ref = sample_index.ids[0] if ref == "IDX0" else ref
    tiles, trace, ids, *_ = callbacks.search("clip_fusion", image, ref, text)
    assert not tiles and not ids and message in trace


def test_bad_uploads_are_refused(callbacks, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image at all")
    assert "not an image" in callbacks.search("image_only", str(fake), None, "")[1]
    big = tmp_path / "big.png"
    Image.new("RGB", (2000, 2000)).save(big)
    with pytest.raises(Exception, match="oversized"):
        decode_upload(big, max_pixels=1_000_000)
    small = decode_upload(big, max_side=256)
    assert max(small.size) == 256 and small.mode == "RGB"


def test_compare_runs_two_pipelines_on_the_same_query(callbacks, photo_id):
    tiles_a, trace_a, tiles_b, trace_b, _ = callbacks.compare(
        "clip_fusion", "language", None, photo_id, "a dog instead", top_k=5
    )
    assert len(tiles_a) == len(tiles_b) == 5  # the shared top-k applies to both pipelines
    assert "<b>clip_fusion</b>" in trace_a and "<b>language</b>" in trace_b
    assert TARGET in trace_b and TARGET not in trace_a


def test_models_load_once_and_queries_run_concurrently(engine, callbacks, photo_id):
    callbacks.search("clip_fusion", None, photo_id, "warm")
    loaded = engine.status()["models_loaded"]
    results: list = []
    threads = [
        threading.Thread(
            target=lambda t=t: results.append(callbacks.search("clip_fusion", None, photo_id, t))
        )
        for t in ("in red", "at night", "with snow", "smaller")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(r[2] for r in results)
    assert engine.status()["models_loaded"] == loaded


def test_pipeline_change_updates_the_knobs(callbacks):
    description, alpha, beta, top_k, mode = callbacks.pipeline_changed("clip_fusion")
    assert "Fuse" in description and alpha["visible"] and alpha["value"] == 0.8
    assert not beta["visible"] and top_k["value"] == 50 and not mode["visible"]
    _, alpha, _, _, mode = callbacks.pipeline_changed("language")
    assert not alpha["visible"] and mode["visible"] and "grid" in mode["choices"]
    assert "unknown pipeline" in callbacks.pipeline_changed("../../etc/passwd")[0]


def test_unknown_pipeline_names_never_load_files(callbacks, photo_id, tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: evil\nstages: [{stage: retrieve}]\n")
    trace = callbacks.search(str(evil), None, photo_id, "in red")[1]
    assert "unknown pipeline" in trace and "this demo offers" in trace


def test_gallery_images_never_leave_the_index_folder(sample_index, tmp_path):
    from cir.index import GalleryIndex

    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    inside = sample_index.path(sample_index.ids[0])
    idx = GalleryIndex.from_embeddings(
        ["ok", "escape"], sample_index.embeddings[:2].float(), paths=[str(inside), str(outside)]
    )
    idx._root = str(sample_index.root)  # the folder the gallery was built from
    assert gallery_image(idx, "ok") == inside.resolve()
    assert gallery_image(idx, "escape") is None and gallery_image(idx, "../x") is None


def test_gallery_images_inside_shards_are_served_by_id_only(sample_index, sample_photos, tmp_path):
    from cir.index import GalleryIndex
    from cir.testing.shards import write_shards

    pytest.importorskip("pyarrow")
    shards = tmp_path / "shards"
    write_shards(sample_photos, shards, kind="tar", per_shard=100)
    (shards / ".private.tar").write_bytes((shards / "part-00000.tar").read_bytes())
    member = sorted(p.name for p in sample_photos.iterdir() if p.is_file())[0]
    ids = [f"part-00000.tar/{member}", f".private.tar/{member}"]
    idx = GalleryIndex.from_embeddings(ids, sample_index.embeddings[:2].float(), paths=ids)
    idx._root = str(shards)
    assert gallery_image(idx, ids[0]) == (shards / ids[0]).resolve()
    tile = gallery_tile(idx, ids[0])
    assert isinstance(tile, Image.Image) and max(tile.size) <= TILE_SIDE
    assert gallery_image(idx, ids[1]) is None  # a hidden shard is never served
    assert gallery_image(idx, "part-00000.tar/other.jpg") is None  # not indexed


def test_use_result_and_examples(callbacks, sample_index):
    ids = sample_index.ids[:3]
    image, ref, dropdown = callbacks.use_result(ids, 1)
    assert ref == dropdown == ids[1] and isinstance(image, Image.Image)
    assert max(image.size) <= 512
    examples = callbacks.examples()
    assert examples and all(sample_index.has(i) and text for i, text in examples)


def test_secrets_are_redacted(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_API_KEY", "sk-very-secret-value")
    assert redact_secrets("failed with sk-very-secret-value") == "failed with ***"
    spec = {"llm": {"api_key": "abc12345", "api_key_env": "MY_SERVICE_API_KEY", "max_tokens": 9}}
    assert redact_config(spec) == {
        "llm": {"api_key": "***", "api_key_env": "MY_SERVICE_API_KEY", "max_tokens": 9}
    }


def test_build_app_wires_a_bounded_queue(engine):
    app = build_app(engine.index, engine=engine, concurrency=3, max_queue=7)
    assert app.cir_engine is engine
    assert app._queue.max_size == 7 and app._queue.default_concurrency_limit == 3
    names = {dep.api_name for dep in app.fns.values()}
    assert {"search", "compare", "status"} <= names


# ---------------------------------------------------------------------- the `cir demo` command
def _cir(*args: str):
    from click.testing import CliRunner

    from cir.cli import cli

    return CliRunner().invoke(cli, ["demo", *args])


def test_cli_needs_an_index_or_a_gallery(tmp_path):
    for args in ([], ["--index", str(tmp_path), "--gallery", str(tmp_path)]):
        result = _cir(*args)
        assert result.exit_code != 0 and "exactly one of --index" in result.output
    result = _cir("--index", str(tmp_path / "missing"))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "index" in result.output.lower()


def test_cli_refuses_an_override_that_matches_no_pipeline(sample_index, tmp_path):
    folder = sample_index.save(tmp_path / "index")
    result = _cir("--index", str(folder), "--set", "stages.nope.alpha=1", "--no-cache")
    assert result.exit_code != 0 and "matches no stage of the offered pipelines" in result.output


def test_cli_names_the_demo_extra_when_gradio_is_missing():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['gradio'] = None\n"
        "from click.testing import CliRunner\nfrom cir.cli import cli\n"
        "r = CliRunner().invoke(cli, ['demo', '--index', '.'])\nprint(r.output)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert 'pip install "cir[demo]"' in out.stdout, out.stderr[-2000:]
