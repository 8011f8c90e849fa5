"""``cir replay import``: the authors' released outputs, in their published formats, answer a
real ``cir bench run`` instead of the models; hostile files are refused with clear errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from click.testing import CliRunner

from cir.bench.placeholders import make_miniature
from cir.bench.runner import run_benchmark
from cir.cli import cli
from cir.resources import Resources

NOT_ASKED = "a model was asked"


@pytest.fixture(scope="module")
def circo(fixtures_root: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("replay")
    return make_miniature("circo", fixtures_root / "circo", root / "circo", 6, 50, ("val",))


def _overrides(num_captions: int = 3) -> list[str]:
    scripted = {"backend": "scripted", "default": NOT_ASKED}
    return [
        f"stages.caption.captioner={json.dumps(scripted | {'name': 'captioner'})}",
        f"stages.recompose.llm={json.dumps(scripted | {'name': 'llm'})}",
        f"stages.caption.num_captions={num_captions}",
    ]


def _ldre_file(circo: Path, out: Path) -> Path:
    """An LDRE/SEIZE release: the official annotations with the two added lists."""
    records = json.loads((circo / "annotations" / "val.json").read_text())
    for r in records:
        r["multi_caption_opt"] = [f"photo {i} of scene {r['id']}" for i in range(3)]
        r["multi_gpt-3.5_opt"] = [f"edited photo {i} of scene {r['id']}" for i in range(3)]
    out.write_text(json.dumps(records))
    return out


def _import(method: str, file: Path, circo: Path, tiny_clip: str, cache: Path, *extra: str):
    sets = [arg for o in _overrides() for arg in ("--set", o)]
    return CliRunner().invoke(
        cli,
        ["replay", "import", method, str(file), "--dataset", "circo", "--split", "val",
         "--data-root", str(circo), "--pipeline", "ldre", "--encoder", tiny_clip,
         "--cache-dir", str(cache), *sets, *extra],
    )  # fmt: skip


def test_released_ldre_outputs_answer_a_bench_run(circo, tiny_clip, tmp_path):
    file = _ldre_file(circo, tmp_path / "test.json")
    cache = tmp_path / "cache"
    result = _import("ldre", file, circo, tiny_clip, cache)
    assert result.exit_code == 0, result.output
    assert "24 cache entries for 6 queries" in result.output  # 6 caption sets + 18 edits
    run = run_benchmark(
        "circo", "val", data_root=circo, pipeline="ldre", encoder=tiny_clip,
        out_dir=tmp_path / "run", cache_dir=cache, progress=False, overrides=_overrides(),
        resources=Resources(),
    )  # fmt: skip
    details = [
        json.loads(line) for line in (run.out_dir / "queries.jsonl").read_text().splitlines()
    ]
    for d in details:
        assert d["captions"] == [f"photo {i} of scene {d['id']}" for i in range(3)]
        assert d["targets"] == [f"edited photo {i} of scene {d['id']}" for i in range(3)]
    imported = run.manifest["content_cache"]["imported"]
    assert list(imported.values()) == [24] and next(iter(imported)).startswith("replay:")


def test_a_caption_count_that_differs_from_the_pipeline_is_refused(circo, tiny_clip, tmp_path):
    file = _ldre_file(circo, tmp_path / "test.json")
    result = _import(
        "ldre",
        file,
        circo,
        tiny_clip,
        tmp_path / "cache",
        "--set",
        "stages.caption.num_captions=15",
    )
    assert result.exit_code != 0
    assert "holds 3 captions, the pipeline samples 15" in result.output
    assert "stages.caption.num_captions=3" in result.output


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("list.json", json.dumps({"a": 1}), "expected a JSON list of annotation objects"),
    ],
)
def test_hostile_json_files_are_refused_with_what_was_wrong(
    circo, tiny_clip, tmp_path, name, content, message
):
    file = tmp_path / name
    file.write_text(content)
    result = _import("ldre", file, circo, tiny_clip, tmp_path / "cache")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert message.lower() in result.output.lower(), result.output


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_a_pickle_with_objects_is_refused_before_anything_runs(circo, tiny_clip, tmp_path, capfd):
    file = tmp_path / "circo_blip2_t5_val_captions.pkl"
    file.write_bytes(pickle.dumps({"all_captions": [_Evil()]}))
    result = _import("cirevl", file, circo, tiny_clip, tmp_path / "cache")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "builtins" in result.output and "print" in result.output
    assert "executed" not in capfd.readouterr().out


def test_weimocir_gallery_captions_become_the_runs_caption_sidecar(circo, tiny_clip, tmp_path):
    from cir.bench.gallery import index_folder
    from cir.bench.runner import open_run
    from cir.index import GalleryIndex

    _, _, spec, parts = open_run("circo", circo, None, "weimocir", "val", tiny_clip)
    ids = list(parts[0].gallery)
    entries = [{"candidate": i, "captions": [f"{i} says {n}" for n in range(5)]} for i in ids[1:]]
    file = tmp_path / "labeled_images_cir_cleaned.json"
    file.write_text(json.dumps(entries))
    cache = tmp_path / "cache"
    result = CliRunner().invoke(
        cli,
        ["replay", "import", "weimocir", str(file), "--dataset", "circo", "--split", "val",
         "--data-root", str(circo), "--pipeline", "weimocir", "--encoder", tiny_clip,
         "--cache-dir", str(cache)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"{len(ids)} gallery images captioned" in result.output and ids[0] in result.output
    index = GalleryIndex.load(index_folder(cache, "circo", parts[0], spec) / "index")
    tensor, meta = index.sidecar("captions")
    assert tensor.shape[:2] == (len(ids), 3) and meta["source"].startswith("replay:")
    rows = dict(zip(index.ids, meta["captions"], strict=True))
    assert rows[ids[0]] == ["", "", ""]  # no entry: empty captions, as the reference code
    assert rows[ids[1]] == [f"{ids[1]} says {n}" for n in range(3)]  # the first K only
    run = run_benchmark(
        "circo", "val", data_root=circo, pipeline="weimocir", encoder=tiny_clip,
        out_dir=tmp_path / "run", cache_dir=cache, progress=False, resources=Resources(),
    )  # fmt: skip
    assert run.manifest["indexes"]["circo"]["reused"]  # the captioned index served the run


def test_cirevl_mods_file_answers_a_cirevl_run(circo, tiny_clip, tmp_path):
    from cir.bench.datasets import get_dataset

    queries = get_dataset("circo", circo).queries("val")
    mods = {
        "base_caption": [f"a photo of scene {q.id}" for q in queries],
        "instruction": [q.text for q in queries],
        "modified_captions": [f"the scene {q.id} after the change" for q in queries],
    }
    file = tmp_path / "circo_blip2_t5_val_mods_structural.json"
    file.write_text(json.dumps(mods))
    overrides = _overrides()[:2]  # scripted captioner and LLM, one caption per query
    sets = [arg for o in overrides for arg in ("--set", o)]
    result = CliRunner().invoke(
        cli,
        ["replay", "import", "cirevl", str(file), "--dataset", "circo", "--split", "val",
         "--data-root", str(circo), "--pipeline", "cirevl", "--encoder", tiny_clip,
         "--cache-dir", str(tmp_path / "cache"), *sets],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "12 cache entries for 6 queries" in result.output
    run = run_benchmark(
        "circo", "val", data_root=circo, pipeline="cirevl", encoder=tiny_clip,
        out_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
        overrides=overrides, resources=Resources(),
    )  # fmt: skip
    for line in (run.out_dir / "queries.jsonl").read_text().splitlines():
        d = json.loads(line)
        assert d["captions"] == [f"a photo of scene {d['id']}"]
        assert d["targets"] == [f"the scene {d['id']} after the change"]
