"""``cir bench compare`` on hand-written run manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cir.bench.compare import compare_runs, flatten
from cir.cli import cli
from cir.errors import ConfigError, DataError


def _run(folder: Path, metrics: dict, **extra) -> Path:
    folder.mkdir(parents=True)
    manifest = {
        "dataset": "fashioniq", "split": "val", "preset": "fashioniq", "queries": 9,
        "complete": True, "models": ["ViT-L-14/openai"], "prompts": {},
        "pipeline": {"name": "clip_fusion", "stages": [
            {"stage": "fuse", "params": {"alpha": 0.5}},
            {"stage": "retrieve", "name": "final", "params": {"k": 50}}]},
        "metrics": metrics, "packages": {"torch": "2.1"},
    } | extra  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_table_deltas_and_differences(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", {"dress/Recall@10": 10.0, "average/Recall@10": 12.0})
    stages = [
        {"stage": "retrieve", "name": "final", "params": {"k": 50}},
        {"stage": "fuse", "params": {"alpha": 0.7}},
    ]
    missing = {"complete": False, "gallery_images": 4, "queries_dropped": 1, "examples": ["x"]}
    b = _run(
        tmp_path / "b",
        {"dress/Recall@10": 15.5},
        pipeline={"name": "weimocir", "stages": stages},
        models=["ViT-B-32/openai"],
        missing=missing,
    )
    cmp = compare_runs([a, b])
    assert cmp.metrics == ["dress/Recall@10", "average/Recall@10"]
    assert cmp.delta(cmp.runs[1], "dress/Recall@10") == 5.5
    assert cmp.delta(cmp.runs[1], "average/Recall@10") is None
    # stages are matched by instance name: only alpha differs, not the order
    assert cmp.differences["pipeline.stages.fuse.params.alpha"] == [0.5, 0.7]
    assert "pipeline.stages.final.params.k" not in cmp.differences
    assert cmp.differences["pipeline.name"] == ["clip_fusion", "weimocir"]
    assert cmp.differences["models"] == [["ViT-L-14/openai"], ["ViT-B-32/openai"]]
    assert "missing.examples" not in cmp.differences and "packages.torch" not in cmp.differences
    assert any("`b` ran on incomplete data (4 gallery images" in w for w in cmp.warnings)
    md = cmp.markdown()
    assert "| dress/Recall@10 | 10.00 | 15.50 (+5.50) |" in md
    assert "| average/Recall@10 | 12.00 | - |" in md
    assert "**Warning:** `b` ran on incomplete data" in md


def test_same_manifests_differ_in_nothing_and_labels_stay_unique(tmp_path: Path) -> None:
    a = _run(tmp_path / "x" / "run", {"Recall@1": 1.0})
    b = _run(tmp_path / "y" / "run", {"Recall@1": 1.0}, dataset="cirr")
    cmp = compare_runs([a, b])
    assert [r.label for r in cmp.runs] == ["run", "run#2"]
    assert cmp.differences == {"dataset": ["fashioniq", "cirr"]}
    assert "different benchmarks or splits" in cmp.warnings[0]
    assert flatten({"a": {"b": 1}, "c": [1, 2]}) == {"a.b": 1, "c": [1, 2]}


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", {})
    with pytest.raises(ConfigError, match="at least two"):
        compare_runs([a])
    with pytest.raises(DataError, match="not a run folder"):
        compare_runs([a, tmp_path / "nope"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{oops")
    res = CliRunner().invoke(cli, ["bench", "compare", str(a), str(tmp_path / "bad")])
    assert res.exit_code == 1 and "not valid JSON" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["bench", "compare", str(a), str(a), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["differences"] == {}
