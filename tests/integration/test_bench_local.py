"""``cir bench run|evaluate`` and ``cir data check`` on GeneCIS, i-CIR and ZeroSight miniatures:
the committed fixtures in the official formats, generated images, a tiny open_clip model loaded
through the real code, the real index and pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cir.bench.datasets import ICIR, GeneCIS, ZeroSight
from cir.bench.placeholders import make_miniature
from cir.bench.runner import run_benchmark
from cir.cli import cli
from cir.errors import ConfigError


@pytest.fixture(scope="module")
def workspace(fixtures_root: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("local")
    make_miniature("genecis", fixtures_root / "genecis", root / "genecis", n_queries=3)
    make_miniature("icir", fixtures_root / "icir", root / "icir", n_queries=8)  # 2 instances
    make_miniature("zerosight", fixtures_root / "zerosight", root / "zerosight", n_queries=4,
                   distractors=50)  # fmt: skip
    return root


def _invoke(args: list[str], code: int = 0):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == code, res.output
    return res


def _run(workspace: Path, clip: str, dataset: str, out: str, *extra: str) -> dict:
    args = [
        "bench", "run", dataset, "--data-root", str(workspace / dataset), "--encoder", clip,
        "--out", str(workspace / out), "--cache-dir", str(workspace / "cache"), "--json", *extra,
    ]  # fmt: skip
    return json.loads(_invoke(args).stdout)


def _evaluate(workspace: Path, dataset: str, predictions: Path) -> dict:
    args = ["bench", "evaluate", dataset, "--data-root", str(workspace / dataset),
            "--predictions", str(predictions), "--json"]  # fmt: skip
    return json.loads(_invoke(args).stdout)


def test_genecis_object_task(workspace: Path, tiny_clip: str) -> None:
    result = _run(workspace, tiny_clip, "genecis", "gc_obj", "--task", "change_object",
                  "--pipeline", "clip_fusion")  # fmt: skip
    out = workspace / "gc_obj"
    assert result["queries"] == 3 and "change_object/Recall@1" in result
    assert "average/Recall@1" in result and not any(k.startswith("focus") for k in result)
    predictions = json.loads((out / "genecis_val_predictions.json").read_text())
    for q in GeneCIS(workspace / "genecis", tasks=["change_object"]).queries("val"):
        assert sorted(predictions[q.id]) == sorted(q.extras["candidates"])  # all 15, ranked
    metrics = json.loads((out / "metrics.json").read_text())
    assert _evaluate(workspace, "genecis", out / "genecis_val_predictions.json") == metrics
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["protocol"]["restrict_key"] == "candidates"
    assert manifest["pipeline"]["stages"][-1]["params"]["restrict_key"] == "candidates"
    assert list(manifest["indexes"]) == ["change_object"]
    assert "| change_object/Recall@1 |" in (out / "report.md").read_text()


def test_genecis_attribute_task_ranks_crops(workspace: Path, tiny_clip: str) -> None:
    result = run_benchmark(
        "genecis", "val", data_root=workspace / "genecis", pipeline="clip_fusion",
        encoder=tiny_clip, tasks=["focus_attribute"], out_dir=workspace / "gc_attr",
        cache_dir=workspace / "cache", progress=False,
    )  # fmt: skip
    assert set(result.metrics) >= {"focus_attribute/Recall@3", "average/Recall@3"}
    crops = workspace / "cache" / "genecis-crops"
    [part] = GeneCIS(workspace / "genecis", tasks=["focus_attribute"], crop_root=crops).parts("val")
    assert all(p.parent == crops and p.is_file() for p in part.gallery.values())
    assert result.manifest["indexes"]["focus_attribute"]["images"] == len(part.gallery)
    predictions = json.loads((workspace / "gc_attr" / "genecis_val_predictions.json").read_text())
    for q in part.queries:
        assert sorted(predictions[q.id]) == sorted(q.extras["candidates"])


def test_genecis_data_check_and_task_errors(workspace: Path, tiny_clip: str) -> None:
    root = workspace / "genecis"
    ok = _invoke(["data", "check", "genecis", "--data-root", str(root)])
    assert "focus_attribute.json" in ok.output and "files present" in ok.output
    victim = sorted((root / "VG_100K").iterdir())[0]
    victim.rename(victim.with_suffix(".bak"))
    try:
        res = _invoke(["data", "check", "genecis", "--data-root", str(root), "--json"], code=1)
        assert json.loads(res.output)["first_missing"] == str(victim)
    finally:
        victim.with_suffix(".bak").rename(victim)
    res = _invoke(["bench", "run", "cirr", "--data-root", str(root), "--task", "change_object",
                   "--pipeline", "clip_fusion", "--encoder", tiny_clip], code=1)  # fmt: skip
    assert "cirr has no option tasks" in res.output and "Traceback" not in res.output


def test_icir_basic_ranks_each_instance_database(workspace: Path, tiny_clip: str) -> None:
    result = _run(
        workspace, tiny_clip, "icir", "icir_basic", "--pipeline", "basic",
        "--set", "stages.basic.image_mean=null",  # the LAION mean is ViT-L/14's
    )  # fmt: skip
    out = workspace / "icir_basic"
    parts = ICIR(workspace / "icir").parts("val")
    assert result["queries"] == sum(len(p.queries) for p in parts) == 8
    assert {"mAP", "macro_mAP", "min_mAP"} <= set(result) and 0 < result["mAP"] <= 100
    predictions = json.loads((out / "icir_val_predictions.json").read_text())
    for part in parts:
        for q in part.queries:  # the whole database of the instance, each image once
            assert sorted(predictions[q.id]) == sorted(part.gallery)
    metrics = json.loads((out / "metrics.json").read_text())
    assert _evaluate(workspace, "icir", out / "icir_val_predictions.json") == metrics
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["indexes"]) == [p.name for p in parts]
    assert manifest["protocol"]["rank_all"] is True
    assert manifest["stages"]["encode_image"]["cache_misses"] == 8  # query images by path


def test_icir_allow_missing_drops_queries_whose_image_is_absent(workspace, tiny_clip) -> None:
    parts = ICIR(workspace / "icir").parts("val")
    image = parts[0].queries[0].reference
    uses = sum(q.reference == image for p in parts for q in p.queries)
    image.rename(image.with_suffix(".bak"))
    try:
        result = run_benchmark(
            "icir", "val", data_root=workspace / "icir", pipeline="basic", encoder=tiny_clip,
            out_dir=workspace / "icir_missing", cache_dir=workspace / "cache", progress=False,
            allow_missing=True, overrides=["stages.basic.image_mean=null"],
        )  # fmt: skip
    finally:
        image.with_suffix(".bak").rename(image)
    assert result.metrics["missing/queries_dropped"] == uses > 0
    assert result.manifest["queries"] == 8 - uses


def test_zerosight_run_and_evaluate(workspace: Path, tiny_clip: str) -> None:
    result = _run(workspace, tiny_clip, "zerosight", "zs", "--pipeline", "clip_fusion")
    assert result["queries"] == 4 and {"mAP@50", "PNR_mAP@50"} <= set(result)
    out = workspace / "zs"
    predictions = json.loads((out / "zerosight_val_predictions.json").read_text())
    gallery = ZeroSight(workspace / "zerosight").parts("val")[0].gallery
    assert all(len(r) == 50 and set(r) <= set(gallery) for r in predictions.values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert _evaluate(workspace, "zerosight", out / "zerosight_val_predictions.json") == metrics
    assert (out / "recall_at_k.png").is_file()  # mAP@K and PNR_mAP@K against K


def test_cirevl_on_genecis_applies_its_per_task_presets(workspace: Path, tiny_clip: str) -> None:
    """CIReVL with a scripted captioner and LLM: each task gets the authors' setting."""
    captioner = {"backend": "scripted", "default": "a photo of a thing", "name": "gc-cap"}
    llm = {"backend": "scripted", "default": "Edited Description: a red thing", "name": "gc-lm"}
    overrides = [f"stages.caption.captioner={json.dumps(captioner)}",
                 f"stages.recompose.llm={json.dumps(llm)}"]  # fmt: skip

    def run(tasks, out, preset=None):
        return run_benchmark(
            "genecis", "val", data_root=workspace / "genecis", pipeline="cirevl",
            encoder=tiny_clip, tasks=tasks, overrides=overrides, preset=preset,
            out_dir=workspace / out, cache_dir=workspace / "cache", progress=False,
        ).manifest  # fmt: skip

    attribute = run(["focus_attribute"], "cirevl_fa")
    assert attribute["presets"] == ["genecis", "genecis/focus_attribute"]
    retrieve = attribute["pipeline"]["stages"][-1]["params"]
    assert retrieve["rule"] == "reference_mix" and retrieve["restrict_key"] == "candidates"
    assert attribute["stages"]["retrieve"]["fallback_rate"] == 0  # every reference is a crop
    assert "cirevl-genecis" in attribute["prompts"]["recompose"]["prompt"]
    details = (workspace / "cirevl_fa" / "queries.jsonl").read_text().splitlines()
    assert json.loads(details[0])["targets"] == ["a red thing"]

    focus = run(["focus_object"], "cirevl_fo")
    assert focus["presets"] == ["genecis", "genecis/focus_object"]
    assert "cirevl-genecis-focus" in focus["prompts"]["recompose"]["prompt"]
    assert focus["pipeline"]["stages"][-1]["params"]["rule"] == "dot"

    with pytest.raises(ConfigError, match="run one task at a time with --task"):
        run(["focus_object", "change_object"], "cirevl_two")
    both = run(["focus_object", "change_object"], "cirevl_shared", preset="genecis")
    assert both["presets"] == ["genecis"] and both["queries"] == 6
