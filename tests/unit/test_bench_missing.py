"""``--allow-missing``: absent images are left out and counted, queries that need them dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from cir.bench.datasets import CIRCO, CIRR
from cir.bench.missing import drop_missing_images, missing_metric_entries
from cir.bench.placeholders import make_miniature
from cir.bench.report import write_report
from cir.errors import DataError


@pytest.fixture
def cirr(fixtures_root: Path, tmp_path: Path) -> CIRR:
    return CIRR(make_miniature("cirr", fixtures_root / "cirr", tmp_path / "cirr", n_queries=4))


def test_counts_are_exact_and_test_splits_need_only_the_reference(cirr: CIRR) -> None:
    [part] = cirr.parts("val")
    q0, q1 = part.queries[:2]
    part.gallery[q0.reference_id].unlink()
    part.gallery[q1.extras["target_id"]].unlink()
    kept, missing = drop_missing_images(cirr.parts("val"))
    absent = {q0.reference_id, q1.extras["target_id"]}
    want = [q for q in part.queries if not {q.reference_id, q.extras["target_id"]} & absent]
    assert [q.id for q in kept[0].queries] == [q.id for q in want]
    assert missing.gallery_images == len(absent) and missing.gallery_total == len(part.gallery)
    assert missing.queries_dropped == 4 - len(want) and missing.queries_total == 4
    assert not missing.complete and set(kept[0].gallery) == set(part.gallery) - absent
    assert missing_metric_entries(missing.to_dict())["missing/gallery_images"] == len(absent)
    assert missing_metric_entries(None) == {}

    [test_part] = cirr.parts("test")  # no public target: only references count
    victim = next(gid for gid in test_part.gallery if gid not in
                  {q.reference_id for q in test_part.queries})  # fmt: skip
    test_part.gallery[victim].unlink()
    kept, missing = drop_missing_images(cirr.parts("test"))
    assert missing.queries_dropped == 0 and missing.gallery_images == 1
    assert len(kept[0].queries) == 4


def test_nothing_missing_and_nothing_left(fixtures_root: Path, tmp_path: Path) -> None:
    ds = CIRCO(make_miniature("circo", fixtures_root / "circo", tmp_path / "c", n_queries=2))
    kept, missing = drop_missing_images(ds.parts("val"))
    assert kept[0].queries == ds.parts("val")[0].queries and missing.complete
    assert missing.to_dict()["examples"] == []
    for path in ds.parts("val")[0].gallery.values():
        path.unlink()
    with pytest.raises(DataError, match="no query can be run: all 2 need an absent image"):
        drop_missing_images(ds.parts("val"))


def test_report_labels_incomplete_runs(tmp_path: Path) -> None:
    missing = {"complete": False, "gallery_images": 5, "gallery_total": 100,
               "queries_dropped": 2, "queries_total": 30, "ground_truths_missing": 1,
               "by_part": {"dress": {"gallery_images": 5, "gallery_total": 60,
                                     "queries_dropped": 2, "queries_total": 10},
                           "shirt": {"gallery_images": 0, "gallery_total": 40,
                                     "queries_dropped": 0, "queries_total": 20}},
               "examples": []}  # fmt: skip
    manifest = {"dataset": "fashioniq", "split": "val", "pipeline": {"name": "p"},
                "metrics": {"dress/Recall@10": 12.5, "missing/queries_dropped": 2},
                "missing": missing}  # fmt: skip
    report = write_report(tmp_path, manifest).read_text()
    assert "5 of 100 gallery images were absent; 2 of 30 queries were dropped" in report
    assert "| dress | 5 / 60 | 2 / 10 |" in report and "1 further ground truths" in report
    assert "| missing/queries_dropped | 2 |" in report and "| dress/Recall@10 | 12.50 |" in report
