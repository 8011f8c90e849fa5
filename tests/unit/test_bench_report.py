"""Protocol overrides, manifest helpers and report plots, without models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cir.bench.datasets import CIRCO, CIRR, FashionIQ
from cir.bench.manifest import StageTotals, file_sha256, model_ids, package_versions
from cir.bench.report import aspect_values, recall_series, write_report
from cir.bench.runner import protocol_overrides
from cir.errors import ConfigError
from cir.pipeline import Pipeline
from cir.types import Query, QueryState, StageRecord

SPEC = {
    "name": "two_retrievals",
    "stages": [
        {"stage": "encode_text", "params": {"model": "ViT-B-32/openai", "output": "query"}},
        {"stage": "retrieve", "name": "first", "params": {"query": "query", "k": 100}},
        {"stage": "retrieve", "name": "last", "params": {"query": "query", "k": 10}},
    ],
}


def test_protocol_overrides_reach_every_retrieve_stage() -> None:
    pipe = Pipeline.from_dict(SPEC)
    assert protocol_overrides(pipe, CIRR.protocol, 2297) == [
        "stages.first.exclude_reference=true",
        "stages.first.k=2297",
        "stages.last.exclude_reference=true",
        "stages.last.k=2297",
    ]
    assert protocol_overrides(pipe, CIRCO.protocol, 123403) == [
        "stages.first.exclude_reference=false",
        "stages.last.exclude_reference=false",
        "stages.last.k=50",
    ]
    applied = Pipeline.from_dict(SPEC, protocol_overrides(pipe, FashionIQ.protocol, 3817))
    assert [s.params.k for s in applied.stages[1:]] == [100, 50]
    no_retrieve = Pipeline.from_dict({"name": "x", "stages": SPEC["stages"][:1]})
    with pytest.raises(ConfigError, match="no retrieve stage"):
        protocol_overrides(no_retrieve, CIRR.protocol, 10)


def test_stage_totals_rates() -> None:
    states = []
    for i in range(4):
        s = QueryState(Query("t", id=f"q{i}"))
        s.trace.append(StageRecord("recompose", "recompose", 0.5, i % 2, 1 - i % 2, int(i == 0)))
        states.append(s)
    totals = StageTotals()
    totals.add(states)
    row = totals.to_dict()["recompose"]
    assert row["cache_hit_rate"] == 0.5 and row["fallback_rate"] == 0.25
    assert row["seconds"] == 2.0 and row["seconds_per_query"] == 0.5
    assert totals.totals()["fallbacks"] == 1


def test_model_ids_and_hashes(tmp_path: Path) -> None:
    spec = {
        "stages": [
            {"params": {"llm": {"backend": "vllm", "model": "Qwen/Qwen2.5-7B"}}},
            {"params": {"captioner": {"model": "blip"}, "model": "ViT-L-14"}},
        ]
    }
    assert model_ids(spec) == ["vllm:Qwen/Qwen2.5-7B", "blip", "ViT-L-14"]
    (tmp_path / "a").write_bytes(b"abc")
    assert file_sha256(tmp_path / "a").startswith("ba7816bf")
    assert "torch" in package_versions() and "not-a-package" not in package_versions(["x-y-z"])


def test_report_series_and_plots(tmp_path: Path) -> None:
    metrics = {
        "mAP@5": 10.0, "mAP@10": 12.0, "Recall@5": 20.0, "Recall@10": 30.0,
        "semantic_mAP@10/negation": 5.0, "semantic_mAP@10/cardinality": 7.5,
    }  # fmt: skip
    assert recall_series(metrics) == {"mAP": [(5, 10.0), (10, 12.0)],
                                      "Recall": [(5, 20.0), (10, 30.0)]}  # fmt: skip
    assert recall_series({"dress/Recall@50": 1.0}) == {"dress/Recall": [(50, 1.0)]}
    assert aspect_values(metrics) == {"negation": 5.0, "cardinality": 7.5}
    manifest = {
        "dataset": "circo", "split": "val", "pipeline": {"name": "p"}, "queries": 220,
        "metrics": metrics, "models": ["m"],
        "stages": {"retrieve": {"stage": "retrieve", "seconds": 1.0, "seconds_per_query": 0.01,
                                "cache_hit_rate": None, "fallback_rate": 0.0}},
    }  # fmt: skip
    report = write_report(tmp_path, manifest).read_text()
    assert "| semantic_mAP@10/negation | 5.00 |" in report
    for png in ("recall_at_k.png", "semantic_map10.png"):
        assert f"![{png}]({png})" in report
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    test_run = write_report(test_dir, manifest | {"split": "test", "metrics": {}}).read_text()
    assert "No metrics" in test_run and not (test_dir / "recall_at_k.png").exists()
    json.dumps(manifest)  # the manifest stays JSON-ready
