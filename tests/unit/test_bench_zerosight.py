"""ZeroSight: the reader of its queries file, and mAP@K / PNR-mAP@K against hand-computed
values and a brute force written here from the authors' evaluation script."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from cir.bench.datasets import ZeroSight
from cir.bench.datasets.zerosight import image_id
from cir.bench.evaluate import evaluate_files
from cir.bench.metrics import pnr_weights, zerosight_metrics
from cir.bench.placeholders import make_miniature
from cir.bench.submission import validate_file
from cir.errors import DataError


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mini(fixtures_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zs") / "data"
    return make_miniature("zerosight", fixtures_root / "zerosight", out, n_queries=10,
                          distractors=60)  # fmt: skip


# ----------------------------------------------------------------------------- reader
def test_queries_follow_the_file(fixtures_root: Path) -> None:
    root = fixtures_root / "zerosight"
    raw = json.loads((root / "queries.json").read_text())
    queries = ZeroSight(root).queries("val")
    for q, r in zip(queries, raw, strict=True):
        assert q.id == str(r["id"]) and q.text == r["relativeCap"].strip()
        assert q.reference_id == r["referenceImg"].removesuffix(".jpg")
        assert q.extras["gt_ids"] == [g.removesuffix(".jpg") for g in r["groundtruths"]]
        assert q.extras["negative_ids"] == [n.removesuffix(".jpg") for n in r["negativeInstances"]]


def test_image_ids() -> None:
    assert image_id("9761.jpg") == "9761" and image_id(9761) == "9761"
    assert image_id("images/0007/frame_0003.PNG") == "0007/frame_0003"
    assert image_id("./0007\\frame_0003.jpg") == "0007/frame_0003"
    assert image_id("clip_12") == "clip_12"
    for bad in ("/data/images/1.jpg", "../1.jpg", "", None, 1.5, "images"):
        with pytest.raises(ValueError):
            image_id(bad)


def test_other_field_names_and_malformed_queries(tmp_path: Path) -> None:
    circo_style = {"id": 4, "reference_img_id": 12, "relative_caption": " is red ",
                   "groundtruths": [13, 14], "negativeInstances": []}  # fmt: skip
    _write(tmp_path / "queries.json", [circo_style])
    [q] = ZeroSight(tmp_path).queries("val")
    assert (q.id, q.reference_id, q.text, q.extras["gt_ids"]) == ("4", "12", "is red", ["13", "14"])
    for broken, why in [
        ({**circo_style, "groundtruths": []}, "groundtruths is empty"),
        ({**circo_style, "negativeInstances": "13"}, "negativeInstances must be a list"),
        ({k: v for k, v in circo_style.items() if k != "relative_caption"}, "'relativeCap'"),
        ({**circo_style, "groundtruths": ["../../x.jpg"]}, "may not contain"),
        ({**circo_style, "id": [1]}, "id must be"),
    ]:
        _write(tmp_path / "queries.json", [broken])
        with pytest.raises(DataError, match=f"query 0 is malformed .*{why}"):
            ZeroSight(tmp_path).queries("val")
    _write(tmp_path / "queries.json", [circo_style, circo_style])
    with pytest.raises(DataError, match="query id '4' appears twice"):
        ZeroSight(tmp_path).queries("val")
    _write(tmp_path / "test.json", [circo_style])
    assert len(ZeroSight(tmp_path, queries_file="test.json").queries("val")) == 1


def test_the_gallery_is_every_image_below_images(mini: Path) -> None:
    ds = ZeroSight(mini)
    [part] = ds.parts("val")
    files = sorted(p for p in (mini / "images").rglob("*.jpg"))
    assert sorted(part.gallery.values()) == files and len(files) >= 60
    for q in part.queries:
        assert {q.reference_id, *q.extras["gt_ids"], *q.extras["negative_ids"]} <= set(part.gallery)
    assert part.gallery["distractors/d0003"] == mini / "images" / "distractors" / "d0003.jpg"
    assert ds.first_missing("val")[0] is None


# ----------------------------------------------------------------------------- metrics
def brute_zerosight(ranked, truths, negatives, k):
    """evaluate.py for one query, one K, written as loops: the precision at each rank holding a
    ground truth; the weight of rank i > 0 is 1 + mean(p / i) over the negatives' ranks p < i
    (1 without one), rank 0 weighs 0; both sums over min(#ground truths as listed, K)."""
    ap = pnr = 0.0
    for i in range(min(k, len(ranked))):
        if ranked[i] not in truths:
            continue
        precision = sum(1 for r in ranked[: i + 1] if r in truths) / (i + 1)
        earlier = [p for p in range(i) if ranked[p] in negatives]
        weight = (
            0.0 if i == 0 else (1 + sum(p / i for p in earlier) / len(earlier) if earlier else 1.0)
        )
        ap += precision
        pnr += precision * weight
    return ap / min(len(truths), k), pnr / min(len(truths), k)


def test_pnr_weights_by_hand() -> None:
    negative = np.array([0, 1, 0, 1, 0, 0], dtype=bool)
    expected = [0.0, 1.0, 1 + 1 / 2, 1 + 1 / 3, 1 + (1 / 4 + 3 / 4) / 2, 1 + (1 / 5 + 3 / 5) / 2]
    assert pnr_weights(negative) == pytest.approx(expected)
    assert pnr_weights(np.array([True, False])) == pytest.approx([0.0, 1.0])
    assert len(pnr_weights(np.array([], dtype=bool))) == 0


def test_metrics_by_hand(fixtures_root: Path) -> None:
    [q] = ZeroSight(fixtures_root / "zerosight").queries("val")[:1]
    g, n = q.extras["gt_ids"], q.extras["negative_ids"]
    # ground truth at ranks 1 and 3 (from 0), a negative at rank 0 and 2
    ranked = [n[0], g[0], n[1], g[1]]
    got = zerosight_metrics({q.id: ranked}, [q], ks=(5,))
    ap = (1 / 2 + 2 / 4) / min(len(g), 5)
    pnr = (1 / 2 * (1 + 0 / 1) + 2 / 4 * (1 + (0 / 3 + 2 / 3) / 2)) / min(len(g), 5)
    assert got == pytest.approx({"mAP@5": 100 * ap, "PNR_mAP@5": 100 * pnr})


def test_metrics_against_brute_force(mini: Path) -> None:
    [part] = ZeroSight(mini).parts("val")
    rng = random.Random(11)
    ids = list(part.gallery)
    rankings = {}
    for q in part.queries:  # rankings that mix ground truths, negatives and other images
        pool = q.extras["gt_ids"] + q.extras["negative_ids"] + rng.sample(ids, 40)
        rankings[q.id] = list(dict.fromkeys(rng.sample(pool, len(pool))))[:50]
    got = zerosight_metrics(rankings, part.queries)
    for k in (5, 10, 25, 50):
        pairs = [brute_zerosight(rankings[q.id], q.extras["gt_ids"], q.extras["negative_ids"], k)
                 for q in part.queries]  # fmt: skip
        assert got[f"mAP@{k}"] == pytest.approx(100 * np.mean([a for a, _ in pairs]))
        assert got[f"PNR_mAP@{k}"] == pytest.approx(100 * np.mean([p for _, p in pairs]))
    assert got["PNR_mAP@50"] != got["mAP@50"]


def test_predictions_files(mini: Path, tmp_path: Path) -> None:
    [part] = ZeroSight(mini).parts("val")
    rng = random.Random(2)
    preds = {q.id: rng.sample(list(part.gallery), 50) for q in part.queries}
    result = evaluate_files("zerosight", "val", mini, [_write(tmp_path / "p.json", preds)])
    assert result.metrics == pytest.approx(zerosight_metrics(preds, part.queries))
    assert validate_file("zerosight", "val", mini, tmp_path / "p.json").ok
    preds["0"] = [*preds["0"][:49], "not/an/image"]
    report = validate_file("zerosight", "val", mini, _write(tmp_path / "bad.json", preds))
    assert not report.ok and "not allowed here" in report.summary()
    bare = tmp_path / "no-images"
    _write(bare / "queries.json", json.loads((mini / "queries.json").read_text()))
    report = validate_file("zerosight", "val", bare, tmp_path / "p.json")
    assert "image ids not checked: no images/ folder" in report.summary()
