"""``cir bench evaluate``: prediction files scored with the annotation files only."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from cir.bench.datasets import CIRCO, CIRR, FashionIQ
from cir.bench.evaluate import evaluate_files, score
from cir.bench.metrics import cirr_metrics, subset_ranking
from cir.cli import cli
from cir.errors import ConfigError, DataError


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture(scope="module")
def cirr_files(benchmarks_root: Path, tmp_path_factory) -> tuple[list, Path, Path]:
    """Random full-gallery rankings (reference removed) written as the official pair."""
    ds = CIRR(benchmarks_root / "cirr")
    queries, names = ds.queries("val"), ds.gallery_names("val")
    rng = random.Random(0)
    full = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for q in queries:
        ranked = [n for n in rng.sample(names, 400) if n != q.reference_id]
        ranked[rng.randrange(60) : 0] = [m for m in q.extras["group_members"] if m not in ranked]
        ranked = [n for n in ranked if n != q.reference_id]
        full[q.id], subset[q.id] = ranked[:50], subset_ranking(ranked, q)
    out = tmp_path_factory.mktemp("cirr_pred")
    return queries, _write(out / "recall.json", full), _write(out / "subset.json", subset)


def test_cirr_files_score_like_the_in_memory_metrics(cirr_files, benchmarks_root) -> None:
    queries, recall, subset = cirr_files
    result = evaluate_files("cirr", "val", benchmarks_root / "cirr", [recall], subset)
    want = cirr_metrics(
        queries,
        {k: v for k, v in json.loads(recall.read_text()).items() if k not in ("version", "metric")},
        json.loads(subset.read_text()),
    )
    assert result.metrics == pytest.approx(want)
    assert list(result.metrics) == [
        "Recall@1", "Recall@5", "Recall@10", "Recall@50",
        "Recall_subset@1", "Recall_subset@2", "Recall_subset@3",
    ]  # fmt: skip
    assert result.n_queries == 4181 and 0 < result.metrics["Recall@50"] < 100
    # the role of each CIRR file comes from its "metric" entry, in any order
    again = evaluate_files("cirr", "val", benchmarks_root / "cirr", [subset, recall])
    assert again.metrics == result.metrics


def test_evaluate_command_json_is_one_flat_object(cirr_files, benchmarks_root) -> None:
    _, recall, subset = cirr_files
    args = ["bench", "evaluate", "cirr", "--data-root", str(benchmarks_root / "cirr")]
    args += ["--predictions", str(recall), "--subset-predictions", str(subset), "--json"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert all(isinstance(v, float) for v in metrics.values())
    assert set(metrics) >= {"Recall@1", "Recall_subset@3"}


def test_fashioniq_files_per_category_merge(benchmarks_root, tmp_path) -> None:
    ds = FashionIQ(benchmarks_root / "fashioniq")
    queries = ds.queries("val")
    galleries = {c: ds.gallery_names(c, "val") for c in ds.categories}
    files = []
    for cat in ds.categories:
        preds = {}
        for i, q in enumerate(q for q in queries if q.extras["category"] == cat):
            ranked = [g for g in galleries[cat][:51] if g != q.extras["target_id"]][:49]
            preds[q.id] = [*ranked[: i % 50], q.extras["target_id"], *ranked[i % 50 :]]
        files.append(_write(tmp_path / f"{cat}.json", preds))
    one = evaluate_files("fashioniq", "val", benchmarks_root / "fashioniq", files[:1])
    assert set(one.metrics) == {
        "dress/Recall@10", "dress/Recall@50", "average/Recall@10", "average/Recall@50",
    }  # fmt: skip
    assert one.metrics["dress/Recall@50"] == 100.0
    # target at rank i % 50 + 1 → Recall@10 is the share of queries with i % 50 < 10
    n = sum(q.extras["category"] == "dress" for q in queries)
    assert one.metrics["dress/Recall@10"] == pytest.approx(
        100 * sum(i % 50 < 10 for i in range(n)) / n
    )
    every = evaluate_files("fashioniq", "val", benchmarks_root / "fashioniq", files)
    assert every.metrics["average/Recall@10"] == pytest.approx(
        sum(every.metrics[f"{c}/Recall@10"] for c in ds.categories) / 3
    )
    with pytest.raises(DataError, match="also in an earlier file"):
        evaluate_files("fashioniq", "val", benchmarks_root / "fashioniq", [files[0], files[0]])


def test_missing_queries_fail_unless_partial_is_asked(benchmarks_root, tmp_path) -> None:
    queries = CIRCO(benchmarks_root / "circo").queries("val")
    preds = {q.id: [int(i) for i in q.extras["gt_ids"]] for q in queries[:100]}
    path = _write(tmp_path / "circo.json", preds)
    with pytest.raises(DataError, match="120 of 220 queries have no ranking"):
        evaluate_files("circo", "val", benchmarks_root / "circo", [path])
    partial = evaluate_files("circo", "val", benchmarks_root / "circo", [path], allow_partial=True)
    assert partial.n_queries == 100 and partial.metrics["mAP@10"] == 100.0
    assert any("only" in w for w in partial.warnings)  # lists shorter than 50 are flagged


def test_invalid_files_and_test_split_are_refused(benchmarks_root, tmp_path) -> None:
    queries = CIRCO(benchmarks_root / "circo").queries("val")
    preds = {q.id: [str(i) for i in q.extras["gt_ids"]] for q in queries}
    path = _write(tmp_path / "strings.json", preds)
    with pytest.raises(DataError, match="ids must be integers"):
        evaluate_files("circo", "val", benchmarks_root / "circo", [path])
    with pytest.raises(ConfigError, match="only 'val' can be scored"):
        evaluate_files("circo", "test", benchmarks_root / "circo", [path])
    with pytest.raises(DataError, match="not found"):
        evaluate_files("circo", "val", benchmarks_root / "circo", [tmp_path / "nope.json"])
    res = CliRunner().invoke(
        cli,
        ["bench", "evaluate", "circo", "--data-root", str(benchmarks_root / "circo"),
         "--predictions", str(path)],
    )  # fmt: skip
    assert res.exit_code == 1 and "Traceback" not in res.output and "integers" in res.output


def test_score_in_memory_matches_files(benchmarks_root) -> None:
    queries = CIRCO(benchmarks_root / "circo").queries("val")
    oracle = {q.id: q.extras["gt_ids"] for q in queries}
    assert score("circo", queries, oracle)["mAP@5"] == 100.0
