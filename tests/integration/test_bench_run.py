"""``cir bench run`` end to end on miniature splits: annotation entries in the official formats
(the committed fixtures), generated images, a tiny open_clip model loaded through the real
code, the real index, cache and pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cir.bench.datasets import CIRR, FashionIQ
from cir.bench.evaluate import evaluate_files
from cir.bench.manifest import file_sha256
from cir.bench.placeholders import make_miniature
from cir.bench.runner import run_benchmark
from cir.bench.submission import validate_file
from cir.cli import cli


@pytest.fixture(scope="module")
def workspace(fixtures_root: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    for name in ("circo", "cirr", "fashioniq"):
        # 50 distractors: every gallery is large enough for top-50 submissions
        make_miniature(name, fixtures_root / name, root / name, n_queries=3, distractors=50)
    return root


def _run(workspace: Path, tiny_clip: str, dataset: str, split: str, out: str) -> dict:
    args = [
        "bench", "run", dataset, "--split", split,
        "--data-root", str(workspace / dataset), "--pipeline", "clip_fusion",
        "--encoder", tiny_clip, "--out", str(workspace / out),
        "--cache-dir", str(workspace / "cache"), "--json",
    ]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)  # stdout holds one JSON object and nothing else


def test_cirr_val_run_then_a_second_run_served_from_the_cache(workspace, tiny_clip) -> None:
    first = _run(workspace, tiny_clip, "cirr", "val", "run1")
    out = workspace / "run1"
    for name in ("cirr_val_recall.json", "cirr_val_recall_subset.json", "metrics.json",
                 "manifest.json", "report.md", "recall_at_k.png", "queries.jsonl"):  # fmt: skip
        assert (out / name).is_file(), name
    assert first["queries"] == 3 and not first["index_reused"]

    # the metrics written equal a fresh evaluation of the prediction files
    scored = evaluate_files(
        "cirr", "val", workspace / "cirr",
        [out / "cirr_val_recall.json", out / "cirr_val_recall_subset.json"],
    )  # fmt: skip
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(scored.metrics)

    # protocol: the reference never ranks; the subset holds group members only
    queries = {q.id: q for q in CIRR(workspace / "cirr").queries("val")}
    recall = json.loads((out / "cirr_val_recall.json").read_text())
    subset = json.loads((out / "cirr_val_recall_subset.json").read_text())
    for qid, q in queries.items():
        assert len(recall[qid]) == 50 and q.reference_id not in recall[qid]
        members = set(q.extras["group_members"]) - {q.reference_id}
        assert len(subset[qid]) == 3 and set(subset[qid]) <= members
        assert (
            subset[qid] == [i for i in recall[qid] if i in members][:3]
            or len([i for i in recall[qid] if i in members]) < 3
        )

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["presets"] == ["cirr"] and manifest["protocol"]["exclude_reference"] is True
    retrieve = manifest["pipeline"]["stages"][-1]["params"]
    assert retrieve["exclude_reference"] is True and retrieve["k"] >= len(
        CIRR(workspace / "cirr").gallery_names("val")
    )
    cap = workspace / "cirr" / "captions" / "cap.rc2.val.json"
    assert manifest["annotations"][str(cap)] == file_sha256(cap)
    assert "torch" in manifest["packages"] and tiny_clip in manifest["models"]
    assert set(manifest["stages"]) == {"encode_image", "encode_text", "fuse", "retrieve"}
    assert manifest["stages"]["encode_text"]["cache_misses"] == 3
    assert all(s["seconds"] >= 0 for s in manifest["stages"].values())
    report = (out / "report.md").read_text()
    assert "| Recall_subset@1 |" in report and "![recall_at_k.png]" in report

    second = _run(workspace, tiny_clip, "cirr", "val", "run2")
    again = json.loads((workspace / "run2" / "manifest.json").read_text())
    assert second["index_reused"] and second["cache_hit_rate"] == 1.0
    assert again["stages"]["encode_text"]["cache_misses"] == 0  # no text encoder call
    assert again["stages"]["encode_image"]["cache_hits"] == 3  # references from the index
    assert again["content_cache"]["writes"] == 0
    assert again["metrics"] == pytest.approx(manifest["metrics"])


def test_cirr_and_circo_test_runs_write_valid_submissions(workspace, tiny_clip) -> None:
    _run(workspace, tiny_clip, "cirr", "test", "cirr_test")
    for metric in ("recall", "recall_subset"):
        path = workspace / "cirr_test" / f"cirr_test_{metric}.json"
        report = validate_file("cirr", "test", workspace / "cirr", path)
        assert report.ok and report.kind == f"cirr/{metric}", report.summary()
    assert not (workspace / "cirr_test" / "metrics.json").exists()

    _run(workspace, tiny_clip, "circo", "test", "circo_test")
    path = workspace / "circo_test" / "circo_test_submission.json"
    report = validate_file("circo", "test", workspace / "circo", path)
    assert report.ok and not report.warnings, report.summary()  # image ids checked too
    manifest = json.loads((workspace / "circo_test" / "manifest.json").read_text())
    assert manifest["protocol"]["exclude_reference"] is False
    assert manifest["pipeline"]["stages"][-1]["params"]["exclude_reference"] is False


def test_fashioniq_val_ranks_each_category_gallery(workspace, tiny_clip) -> None:
    result = _run(workspace, tiny_clip, "fashioniq", "val", "fiq")
    assert result["queries"] == 9
    assert {"dress/Recall@10", "toptee/Recall@50", "average/Recall@50"} <= set(result)
    manifest = json.loads((workspace / "fiq" / "manifest.json").read_text())
    assert list(manifest["indexes"]) == ["dress", "shirt", "toptee"]
    predictions = json.loads((workspace / "fiq" / "fashioniq_val_submission.json").read_text())
    for category in ("dress", "shirt", "toptee"):
        gallery = json.loads(
            (workspace / "fashioniq" / "image_splits" / f"split.{category}.val.json").read_text()
        )
        ranked = predictions[f"{category}/0"]
        assert len(ranked) == 50 and set(ranked) <= set(gallery)


def test_limited_run_and_missing_images(workspace, tiny_clip) -> None:
    result = run_benchmark(
        "fashioniq", "val", data_root=workspace / "fashioniq", pipeline="clip_fusion",
        encoder=tiny_clip, out_dir=workspace / "limited", cache_dir=workspace / "cache",
        limit=4, progress=False,
    )  # fmt: skip
    assert result.manifest["complete"] is False and result.manifest["queries"] == 4
    assert set(result.manifest["indexes"]) == {"dress", "shirt"}  # 3 dress + 1 shirt query
    assert all(i["reused"] for i in result.manifest["indexes"].values())

    victim = next((workspace / "circo" / "COCO2017_unlabeled" / "unlabeled2017").iterdir())
    victim.rename(victim.with_suffix(".bak"))
    try:
        res = CliRunner().invoke(
            cli,
            ["bench", "run", "circo", "--data-root", str(workspace / "circo"),
             "--pipeline", "clip_fusion", "--encoder", tiny_clip],
        )  # fmt: skip
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert victim.name in res.output and "cir data check circo" in res.output
    finally:
        victim.with_suffix(".bak").rename(victim)


def test_llm_pipeline_run_records_prompts_and_is_served_from_the_cache(workspace, tiny_clip):
    """CIReVL with scripted captioner and LLM: the second run asks no model anything."""
    captioner = {"backend": "scripted", "default": "a photo of a thing", "name": "bench-cap"}
    llm = {"backend": "scripted", "default": "Edited Description: a red thing", "name": "bench-lm"}
    overrides = [
        f"stages.caption.captioner={json.dumps(captioner)}",
        f"stages.recompose.llm={json.dumps(llm)}",
    ]
    runs = []
    for out in ("cirevl1", "cirevl2"):
        runs.append(
            run_benchmark(
                "circo",
                "val",
                data_root=workspace / "circo",
                pipeline="cirevl",
                encoder=tiny_clip,
                out_dir=workspace / out,
                cache_dir=workspace / "cache",
                overrides=overrides,
                progress=False,
            )
        )
    first, second = (r.manifest for r in runs)
    assert [first["stages"][s]["cache_misses"] for s in ("caption", "recompose")] == [3, 3]
    lifecycle = first["model_lifecycle"]
    loaded = [e["model"] for e in lifecycle["events"] if e["action"] == "load"]
    released = [e["model"] for e in lifecycle["events"] if e["action"] == "release"]
    assert {"scripted:bench-cap", "scripted:bench-lm"} <= set(loaded) & set(released)
    assert lifecycle["peak_language_models"] == 1  # the captioner went before the LLM came
    assert "cirevl-circo" in first["prompts"]["recompose"]["prompt"]
    assert first["prompts"] == second["prompts"]
    assert {"scripted:bench-cap", "scripted:bench-lm", tiny_clip} <= set(first["models"])
    assert all(s["cache_misses"] == 0 for s in second["stages"].values())
    assert second["trace_totals"]["cache_hit_rate"] == 1.0
    # cirevl's circo preset asks to drop the reference; CIRCO's protocol keeps it
    assert first["presets"] == ["circo"]
    assert first["pipeline"]["stages"][-1]["params"]["exclude_reference"] is False
    details = (workspace / "cirevl1" / "queries.jsonl").read_text().splitlines()
    assert json.loads(details[0])["targets"] == ["a red thing"]


def test_allow_missing_runs_on_the_images_present_and_says_so(fixtures_root, tiny_clip, tmp_path):
    root = make_miniature("fashioniq", fixtures_root / "fashioniq", tmp_path / "fiq", n_queries=3,
                          distractors=50, splits=("val",))  # fmt: skip
    ds = FashionIQ(root)
    parts = {p.name: p for p in ds.parts("val")}
    dress = parts["dress"].queries
    gone = {
        parts["dress"].gallery[dress[0].reference_id],  # drops dress/0
        parts["dress"].gallery[dress[1].extras["target_id"]],  # drops dress/1 (if not the same)
    }
    used = {i for q in dress for i in (q.reference_id, q.extras["target_id"])}
    spare = next(p for gid, p in parts["shirt"].gallery.items()
                 if gid not in {i for q in parts["shirt"].queries
                                for i in (q.reference_id, q.extras["target_id"])})  # fmt: skip
    gone.add(spare)  # a distractor only: no query dropped for it
    for path in gone:
        path.unlink()
    dropped = sum(1 for q in dress if {q.reference_id, q.extras["target_id"]} & _ids(gone, parts))
    assert used and dropped >= 1

    base = ["bench", "run", "fashioniq", "--data-root", str(root), "--pipeline", "clip_fusion",
            "--encoder", tiny_clip, "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    refused = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "no")])
    assert refused.exit_code == 1 and "is missing" in refused.output

    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "run"), "--allow-missing"])
    assert res.exit_code == 0, res.output
    assert "warning: incomplete data: 3 of" in res.stderr
    out = tmp_path / "run"
    metrics = json.loads((out / "metrics.json").read_text())
    total = sum(len(p.gallery) for p in parts.values())
    assert metrics["missing/gallery_images"] == 3 and metrics["missing/gallery_total"] == total
    assert metrics["missing/queries_dropped"] == dropped
    assert metrics["missing/queries_total"] == 9
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["queries"] == 9 - dropped
    assert manifest["missing"]["by_part"]["shirt"] == {
        "gallery_images": 1, "gallery_total": len(parts["shirt"].gallery),
        "queries_dropped": 0, "queries_total": 3,
    }  # fmt: skip
    assert sorted(manifest["missing"]["examples"]) == sorted(str(p) for p in gone)
    assert manifest["indexes"]["dress"]["images"] == len(parts["dress"].gallery) - 2
    report = (out / "report.md").read_text()
    assert "## Missing images" in report and "not comparable" in report
    assert f"{dropped} of 9 queries were dropped" in report
    lines = (out / "queries.jsonl").read_text().splitlines()
    kept = {json.loads(line)["id"] for line in lines}
    assert len(kept) == 9 - dropped and "dress/0" not in kept
    predictions = json.loads((out / "fashioniq_val_submission.json").read_text())
    assert set(predictions) == kept
    assert not any(str(p.stem) in r for r in predictions.values() for p in gone)


def _ids(paths: set[Path], parts) -> set[str]:
    return {gid for p in parts.values() for gid, path in p.gallery.items() if path in paths}


def test_compare_two_runs_shows_metrics_and_what_differs(workspace, tiny_clip, tmp_path):
    runs = []
    for alpha in ("0.2", "0.8"):
        out = tmp_path / f"alpha{alpha}"
        run_benchmark(
            "cirr", "val", data_root=workspace / "cirr", pipeline="clip_fusion",
            encoder=tiny_clip, out_dir=out, cache_dir=workspace / "cache",
            overrides=[f"stages.fuse.alpha={alpha}"], progress=False,
        )  # fmt: skip
        runs.append(str(out))
    res = CliRunner().invoke(cli, ["bench", "compare", *runs, "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert "| metric | alpha0.2 | alpha0.8 |" in res.output
    assert "`pipeline.stages.fuse.params.alpha`" in res.output
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["differences"]["pipeline.stages.fuse.params.alpha"] == [0.2, 0.8]
    assert data["differences"]["overrides"] == [
        ["stages.fuse.alpha=0.2"],
        ["stages.fuse.alpha=0.8"],
    ]
    first = json.loads((tmp_path / "alpha0.2" / "metrics.json").read_text())
    second = json.loads((tmp_path / "alpha0.8" / "metrics.json").read_text())
    assert data["metrics"]["Recall@1"] == {"alpha0.2": first["Recall@1"],
                                           "alpha0.8": second["Recall@1"]}  # fmt: skip
    assert data["delta_to_first"]["Recall@50"]["alpha0.8"] == pytest.approx(
        second["Recall@50"] - first["Recall@50"], abs=1e-4
    )
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "![metrics](compare.png)" in (tmp_path / "cmp" / "compare.md").read_text()


def test_gallery_captions_declared_by_a_pipeline_are_made_once_and_saved(workspace, tiny_clip):
    """A pipeline whose rule reads gallery captions gets them made by `cir bench run` (saved
    with the cached index, reused by the next run, made again when the spec changes)."""
    from cir.index import GalleryIndex

    pipeline = workspace / "captioned.yaml"
    pipeline.write_text(
        "name: captioned\n"
        "gallery_captions:\n"
        "  captioner: {backend: scripted, default: a small wooden thing, name: gallery-cap}\n"
        "  max_tokens: 16\n"
        "stages:\n"
        "  - {stage: encode_text, params: {output: text}}\n"
        "  - stage: retrieve\n"
        "    params: {query: text, k: 50, rule: weimocir, rule_params: {beta: 0.3}}\n"
    )

    def run(out: str, *overrides: str) -> dict:
        return run_benchmark(
            "circo", "val", data_root=workspace / "circo", pipeline=str(pipeline),
            encoder=tiny_clip, out_dir=workspace / out, cache_dir=workspace / "cache",
            overrides=list(overrides), progress=False,
        ).manifest  # fmt: skip

    def made(manifest: dict) -> dict:
        (info,) = manifest["indexes"].values()
        return info["gallery_captions"]

    first = run("captioned1")
    assert made(first)["reused"] is False and made(first)["images"] > 50
    loads = [e["model"] for e in first["model_lifecycle"]["events"] if e["action"] == "load"]
    assert "scripted:gallery-cap" in loads
    (info,) = first["indexes"].values()
    index = GalleryIndex.load(Path(info["folder"]) / "index")
    tensor, meta = index.sidecar("captions")
    assert tensor.shape[0] == len(index) and meta["captions"][0] == ["a small wooden thing"]
    assert first["pipeline"]["gallery_captions"]["max_tokens"] == 16

    second = run("captioned2")
    assert made(second)["reused"] is True
    assert not any("gallery-cap" in e["model"] for e in second["model_lifecycle"]["events"])

    changed = run(
        "captioned3",
        "gallery_captions.captioner.name=other-cap",
        "gallery_captions.captioner.default=a large metal thing",
    )
    assert made(changed)["reused"] is False
    (info,) = changed["indexes"].values()
    meta = GalleryIndex.load(Path(info["folder"]) / "index").sidecar("captions")[1]
    assert meta["captions"][0] == ["a large metal thing"]

    # captions the user imported are theirs: a run keeps them whatever the section says
    from cir.gallery_captions import set_caption_sidecar
    from cir.models import load_encoder

    folder = Path(info["folder"]) / "index"
    index = GalleryIndex.load(folder, mmap=False)
    rows = [[f"imported {i}"] for i in range(len(index))]
    set_caption_sidecar(index, rows, load_encoder(tiny_clip), source="replay:abc")
    index.save(folder)
    kept = run("captioned4", "gallery_captions.max_tokens=12")
    assert made(kept)["kept"] is True and made(kept)["source"] == "replay:abc"
    meta = GalleryIndex.load(folder).sidecar("captions")[1]
    assert meta["captions"][0] == ["imported 0"]


def test_a_wrong_gallery_captions_section_is_a_clear_error():
    from cir.errors import ConfigError
    from cir.pipeline import Pipeline

    spec = {"name": "x", "stages": [{"stage": "encode_text"}, {"stage": "retrieve"}]}
    with pytest.raises(ConfigError, match="captioner"):
        Pipeline.from_dict({**spec, "gallery_captions": {"prompt": "plain"}})
    with pytest.raises(ConfigError, match="unknown parameter"):
        Pipeline.from_dict({**spec, "gallery_captions": {"captioner": {"backend": "scripted"},
                                                         "colour": "red"}})  # fmt: skip
