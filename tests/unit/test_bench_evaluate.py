"""``cir bench evaluate``: prediction files scored with the annotation files only (on the
committed fixtures and, where present, the official files)."""

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
def cirr_files(annotations: Path, tmp_path_factory) -> tuple[list, Path, Path]:
    """Random full-gallery rankings (reference removed) written as the official pair."""
    ds = CIRR(annotations / "cirr")
    queries, names = ds.queries("val"), ds.gallery_names("val")
    rng = random.Random(0)
    full = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for q in queries:
        ranked = [n for n in rng.sample(names, min(400, len(names))) if n != q.reference_id]
        ranked[rng.randrange(60) : 0] = [m for m in q.extras["group_members"] if m not in ranked]
        ranked = [n for n in ranked if n != q.reference_id]
        full[q.id], subset[q.id] = ranked[:50], subset_ranking(ranked, q)
    out = tmp_path_factory.mktemp("cirr_pred")
    return queries, _write(out / "recall.json", full), _write(out / "subset.json", subset)


def test_cirr_files_score_like_the_in_memory_metrics(cirr_files, annotations) -> None:
    queries, recall, subset = cirr_files
    result = evaluate_files("cirr", "val", annotations / "cirr", [recall], subset)
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
    assert result.n_queries == len(queries) and 0 < result.metrics["Recall@50"] < 100
    # the role of each CIRR file comes from its "metric" entry, in any order
    again = evaluate_files("cirr", "val", annotations / "cirr", [subset, recall])
    assert again.metrics == result.metrics


def test_evaluate_command_json_is_one_flat_object(cirr_files, annotations) -> None:
    _, recall, subset = cirr_files
    args = ["bench", "evaluate", "cirr", "--data-root", str(annotations / "cirr")]
    args += ["--predictions", str(recall), "--subset-predictions", str(subset), "--json"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert all(isinstance(v, float) for v in metrics.values())
    assert set(metrics) >= {"Recall@1", "Recall_subset@3"}


def test_fashioniq_files_per_category_merge(annotations, tmp_path) -> None:
    ds = FashionIQ(annotations / "fashioniq")
    queries = ds.queries("val")
    galleries = {c: ds.gallery_names(c, "val") for c in ds.categories}
    files = []
    for cat in ds.categories:
        preds = {}
        for i, q in enumerate(q for q in queries if q.extras["category"] == cat):
            ranked = [g for g in galleries[cat][:51] if g != q.extras["target_id"]][:49]
            preds[q.id] = [*ranked[: i % 50], q.extras["target_id"], *ranked[i % 50 :]]
        files.append(_write(tmp_path / f"{cat}.json", preds))
    one = evaluate_files("fashioniq", "val", annotations / "fashioniq", files[:1])
    assert set(one.metrics) == {
        "dress/Recall@10", "dress/Recall@50", "average/Recall@10", "average/Recall@50",
    }  # fmt: skip
    assert one.metrics["dress/Recall@50"] == 100.0
    # target at rank i % 50 + 1 → Recall@10 is the share of queries with i % 50 < 10
    n = sum(q.extras["category"] == "dress" for q in queries)
    assert one.metrics["dress/Recall@10"] == pytest.approx(
        100 * sum(i % 50 < 10 for i in range(n)) / n
    )
    every = evaluate_files("fashioniq", "val", annotations / "fashioniq", files)
    assert every.metrics["average/Recall@10"] == pytest.approx(
        sum(every.metrics[f"{c}/Recall@10"] for c in ds.categories) / 3
    )
    with pytest.raises(DataError, match="also in an earlier file"):
        evaluate_files("fashioniq", "val", annotations / "fashioniq", [files[0], files[0]])


def test_missing_queries_fail_unless_partial_is_asked(annotations, tmp_path) -> None:
    queries = CIRCO(annotations / "circo").queries("val")
    half = len(queries) // 2
    preds = {q.id: [int(i) for i in q.extras["gt_ids"]] for q in queries[:half]}
    path = _write(tmp_path / "circo.json", preds)
    missing = f"{len(queries) - half} of {len(queries)} queries have no ranking"
    with pytest.raises(DataError, match=missing):
        evaluate_files("circo", "val", annotations / "circo", [path])
    partial = evaluate_files("circo", "val", annotations / "circo", [path], allow_partial=True)
    assert partial.n_queries == half and partial.metrics["mAP@10"] == 100.0
    assert any("only" in w for w in partial.warnings)  # lists shorter than 50 are flagged


def test_invalid_files_and_test_split_are_refused(annotations, tmp_path) -> None:
    queries = CIRCO(annotations / "circo").queries("val")
    preds = {q.id: [str(i) for i in q.extras["gt_ids"]] for q in queries}
    path = _write(tmp_path / "strings.json", preds)
    with pytest.raises(DataError, match="ids must be integers"):
        evaluate_files("circo", "val", annotations / "circo", [path])
    with pytest.raises(ConfigError, match="only 'val' can be scored"):
        evaluate_files("circo", "test", annotations / "circo", [path])
    with pytest.raises(DataError, match="not found"):
        evaluate_files("circo", "val", annotations / "circo", [tmp_path / "nope.json"])
    res = CliRunner().invoke(
        cli,
        ["bench", "evaluate", "circo", "--data-root", str(annotations / "circo"),
         "--predictions", str(path)],
    )  # fmt: skip
    assert res.exit_code == 1 and "Traceback" not in res.output and "integers" in res.output


def test_score_in_memory_matches_files(annotations) -> None:
    queries = CIRCO(annotations / "circo").queries("val")
    oracle = {q.id: q.extras["gt_ids"] for q in queries}
    assert score("circo", queries, oracle)["mAP@5"] == 100.0
