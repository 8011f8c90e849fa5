"""GeneCIS: the reader (object and attribute tasks, crops), ranking within each template's
candidates, and Recall@K against brute force, on the committed fixtures and, where present,
the official object-task files."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cir.bench.datasets import GeneCIS, get_dataset
from cir.bench.datasets.genecis import TASKS
from cir.bench.datasets.regions import Region, crop_region, dilated_box, parse_box
from cir.bench.evaluate import evaluate_files
from cir.bench.metrics import genecis_metrics
from cir.bench.placeholders import make_miniature
from cir.bench.submission import validate_file
from cir.errors import ConfigError, DataError
from cir.index import GalleryIndex


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mini(fixtures_root: Path, tmp_path_factory) -> Path:
    return make_miniature("genecis", fixtures_root / "genecis",
                          tmp_path_factory.mktemp("genecis") / "data", n_queries=4)  # fmt: skip


# ----------------------------------------------------------------------------- reader
def test_templates_become_queries_ranked_among_their_candidates(annotations: Path) -> None:
    ds = GeneCIS(annotations / "genecis")
    assert set(ds.tasks) >= {"change_object", "focus_object"}  # the files present
    for task in ("change_object", "focus_object"):
        raw = _load(annotations / "genecis" / f"{task}.json")
        queries = ds.queries("val")
        mine = [q for q in queries if q.extras["task"] == task]
        assert [q.id for q in mine] == [f"{task}/{i}" for i in range(len(raw))]
        for q, r in zip(mine, raw, strict=True):
            assert q.text == r["condition"].strip() and q.extras["condition"] == r["condition"]
            assert q.reference_id == str(r["reference"]["val_image_id"])
            target = str(r["target"]["val_image_id"])
            gallery = [str(g["val_image_id"]) for g in r["gallery"]]
            assert q.extras["target_id"] == target
            assert q.extras["candidates"] == list(dict.fromkeys([target, *gallery]))
            assert q.reference_id not in q.extras["candidates"]


def test_attribute_templates_name_regions(fixtures_root: Path, tmp_path: Path) -> None:
    ds = GeneCIS(fixtures_root / "genecis", tasks=["change_attribute"], crop_root=tmp_path)
    raw = _load(fixtures_root / "genecis" / "change_attribute.json")[0]
    q = ds.queries("val")[0]
    box = raw["reference"]["instance_bbox"]
    assert q.reference_id == "_".join([raw["reference"]["image_id"], *(f"{v:g}" for v in box)])
    assert len(q.extras["candidates"]) == 15 and q.extras["target_id"] == q.extras["candidates"][0]


def test_default_tasks_are_the_files_present(fixtures_root: Path, tmp_path: Path) -> None:
    assert GeneCIS(fixtures_root / "genecis").tasks == TASKS
    (tmp_path / "focus_object.json").write_text("[]")
    assert GeneCIS(tmp_path).tasks == ("focus_object",)
    assert GeneCIS(tmp_path / "empty").tasks == TASKS  # so that the missing file is named
    with pytest.raises(DataError, match=r"focus_attribute\.json"):
        GeneCIS(tmp_path / "empty").queries("val")


def test_object_galleries_and_image_files(mini: Path, tmp_path: Path) -> None:
    ds = GeneCIS(mini, tasks=["change_object"], crop_root=tmp_path / "crops")
    [part] = ds.parts("val")
    assert part.name == "change_object" and len(part.queries) == 4
    for q in part.queries:
        assert q.reference_id in part.gallery and set(q.extras["candidates"]) <= set(part.gallery)
    some = part.queries[0].reference_id
    assert part.gallery[some] == mini / "val2017" / f"{int(some):012d}.jpg"
    assert set(ds.image_files("val")) == set(part.gallery.values())
    assert ds.first_missing("val")[0] is None
    assert not (tmp_path / "crops").exists()  # object tasks crop nothing


def test_attribute_parts_write_crops_once(mini: Path, tmp_path: Path) -> None:
    crops = tmp_path / "crops"
    ds = GeneCIS(mini, tasks=["focus_attribute"], crop_root=crops)
    sources = set(ds.image_files("val"))
    assert all(p.parent.name == "VG_100K" for p in sources)
    [part] = ds.parts("val")
    assert all(p.parent == crops and p.is_file() for p in part.gallery.values())
    gid, path = next(iter(part.gallery.items()))
    image_id, *box = gid.split("_")
    original = Image.open(mini / "VG_100K" / f"{image_id}.jpg").convert("RGB")
    crop = Image.open(path)
    assert crop.size[0] == crop.size[1]
    assert np.array_equal(
        np.asarray(crop), np.asarray(crop_region(original, [float(v) for v in box]))
    )
    stamp = path.stat().st_mtime_ns
    ds.parts("val")
    assert path.stat().st_mtime_ns == stamp  # not written again
    ds.use_cache(tmp_path / "cache")  # an explicit crop folder wins over the run's cache
    assert ds.crop_root == crops
    default = GeneCIS(mini, tasks=["focus_attribute"])
    default.use_cache(tmp_path / "cache")
    assert default.crop_root == tmp_path / "cache" / "genecis-crops"


def test_missing_source_images_are_reported_not_cropped(mini: Path, tmp_path: Path) -> None:
    ds = GeneCIS(mini, tasks=["change_attribute"], crop_root=tmp_path)
    victim = sorted(ds.image_files("val"))[0]
    victim.rename(victim.with_suffix(".bak"))
    try:
        assert ds.first_missing("val")[0] == victim
        [part] = ds.parts("val")  # the other crops are written, this one is left absent
        absent = [p for p in part.gallery.values() if not p.is_file()]
        assert absent and all(p.name.startswith(victim.stem + "_") for p in absent)
    finally:
        victim.with_suffix(".bak").rename(victim)


# ----------------------------------------------------------------------------- crops
def _gradient(width: int, height: int) -> Image.Image:
    x = np.arange(width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.arange(height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 7)], -1), "RGB")


def test_dilated_crop_follows_the_authors_rule_by_hand() -> None:
    # box x=30, y=20, w=20, h=10: left 30 - 14 = 16, top 20 - 7 = 13, then 1.7 boxes wide/tall
    assert dilated_box((30, 20, 20, 10), (100, 60)) == pytest.approx((16, 13, 50, 30))
    crop = crop_region(_gradient(100, 60), (30, 20, 20, 10))
    assert crop.size == (34, 34)  # 34 x 17, padded to a square
    pixels = np.asarray(crop)
    assert (pixels[:8] == 0).all() and (pixels[25:] == 0).all()  # (34 - 17) // 2 = 8 above
    assert pixels[8, 0, 0] == 16 and pixels[8, 0, 1] == 13 and pixels[24, 33, 1] == 29
    # near the left border the left edge stops at 0 and the crop still spans 1.7 widths:
    # its right edge passes the box's own (the authors' rule)
    assert dilated_box((5, 20, 20, 10), (100, 60)) == pytest.approx((0, 13, 34, 30))
    # a tall crop (left 28, top 0, right and bottom clamped at 40 and 100) is padded sideways
    assert dilated_box((35, 10, 10, 80), (40, 100)) == pytest.approx((28, 0, 40, 100))
    tall = np.asarray(crop_region(_gradient(40, 100), (35, 10, 10, 80)))
    assert tall.shape == (100, 100, 3) and (tall[:, :44] == 0).all() and tall[0, 44, 0] == 28
    with pytest.raises(DataError, match="outside"):
        crop_region(_gradient(40, 40), (200, 200, 5, 5))


def test_boxes_and_region_ids() -> None:
    assert parse_box([1, 2.5, 3, 4]) == (1.0, 2.5, 3.0, 4.0)
    for bad in ([1, 2, 3], [1, 2, 0, 4], [1, 2, "3", 4], [1, 2, float("nan"), 4], "1,2,3,4"):
        with pytest.raises(ValueError):
            parse_box(bad)
    assert Region("17", (1.0, 2.5, 30.0, 4.0)).id == "17_1_2.5_30_4"


def test_malformed_templates_are_clear_errors(tmp_path: Path) -> None:
    good = {"condition": "dog", "reference": {"val_image_id": 1}, "target": {"val_image_id": 2},
            "gallery": [{"val_image_id": 3}]}  # fmt: skip
    for broken, why in [
        ({**good, "target": {"image_id": 2}}, "val_image_id"),
        ({**good, "reference": {"val_image_id": "../x"}}, "integers"),
        ({**good, "condition": 3}, "condition must be text"),
        ({k: v for k, v in good.items() if k != "gallery"}, "'gallery'"),
    ]:
        _write(tmp_path / "change_object.json", [good, broken])
        with pytest.raises(DataError, match=rf"template 1 is malformed \(.*{re.escape(why)}"):
            GeneCIS(tmp_path, tasks=["change_object"]).queries("val")
    _write(tmp_path / "focus_attribute.json", [{**good, "reference": {"image_id": "5"}}])
    with pytest.raises(DataError, match="image_id and instance_bbox"):
        GeneCIS(tmp_path, tasks=["focus_attribute"]).queries("val")
    with pytest.raises(ConfigError, match="valid: focus_attribute"):
        GeneCIS(tmp_path, tasks=["colour"])
    with pytest.raises(ConfigError, match="genecis has no split 'test'"):
        GeneCIS(tmp_path).queries("test")
    with pytest.raises(ConfigError, match="cirr has no option tasks"):
        get_dataset("cirr", tmp_path, tasks=["change_object"])


def test_per_task_presets_need_one_task(fixtures_root: Path) -> None:
    presets = {"genecis": {}, "genecis/focus_object": {}, "cirr": {}}
    one = GeneCIS(fixtures_root / "genecis", tasks=["focus_object"])
    assert one.preset_scopes(presets) == ["genecis", "genecis/focus_object"]
    both = GeneCIS(fixtures_root / "genecis", tasks=["focus_object", "change_object"])
    with pytest.raises(ConfigError, match=r"per-task GeneCIS presets \(genecis/focus_object\)"):
        both.preset_scopes(presets)
    assert both.preset_scopes({"genecis": {}}) == ["genecis"]
    others = GeneCIS(fixtures_root / "genecis", tasks=["change_object", "change_attribute"])
    assert others.preset_scopes(presets) == ["genecis"]  # no preset for these tasks


# ----------------------------------------------------------------------------- ranking
def test_restricted_search_ranks_the_candidates_like_brute_force(fixtures_root: Path) -> None:
    """The index's restricted search against scoring the 15 candidates and sorting them."""
    ds = GeneCIS(fixtures_root / "genecis", tasks=["focus_object"])
    queries = ds.queries("val")
    ids = sorted({i for q in queries for i in [q.reference_id, *q.extras["candidates"]]})
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(len(ids), 16, generator=gen), dim=-1)
    index = GalleryIndex.from_embeddings(ids, emb, dtype="fp32")
    qv = torch.nn.functional.normalize(torch.randn(len(queries), 16, generator=gen), dim=-1)
    restrict = [q.extras["candidates"] for q in queries]
    rankings = index.search(qv, k=15, restrict=restrict)
    for q, vec, ranking in zip(queries, qv, rankings, strict=True):
        rows = {i: emb[ids.index(i)] for i in q.extras["candidates"]}
        brute = sorted(rows, key=lambda i: -float(rows[i] @ vec))
        assert list(ranking.ids) == brute


def brute_recall(rankings: dict, queries, ks=(1, 2, 3)) -> dict[str, float]:
    """Per task, the share of templates whose target is among the first K; then the mean."""
    tasks = sorted({q.extras["task"] for q in queries}, key=TASKS.index)
    out = {}
    for task in tasks:
        mine = [q for q in queries if q.extras["task"] == task]
        for k in ks:
            hits = sum(1 for q in mine if q.extras["target_id"] in rankings[q.id][:k])
            out[f"{task}/Recall@{k}"] = 100.0 * hits / len(mine)
    for k in ks:
        out[f"average/Recall@{k}"] = sum(out[f"{t}/Recall@{k}"] for t in tasks) / len(tasks)
    return out


def test_recall_against_brute_force(annotations: Path) -> None:
    queries = GeneCIS(annotations / "genecis").queries("val")
    rng = random.Random(3)
    rankings = {q.id: rng.sample(q.extras["candidates"], len(q.extras["candidates"]))
                for q in queries}  # fmt: skip
    got = genecis_metrics(rankings, queries)
    assert got == pytest.approx(brute_recall(rankings, queries))
    assert list(got)[-3:] == ["average/Recall@1", "average/Recall@2", "average/Recall@3"]
    perfect = {q.id: [q.extras["target_id"]] for q in queries}
    assert set(genecis_metrics(perfect, queries).values()) == {100.0}


def test_predictions_files_are_scored_and_checked(fixtures_root: Path, tmp_path: Path) -> None:
    root = fixtures_root / "genecis"
    queries = GeneCIS(root).queries("val")
    rng = random.Random(5)
    preds = {q.id: rng.sample(q.extras["candidates"], 3) for q in queries}
    objects = {k: v for k, v in preds.items() if k.startswith(("focus_object", "change_object"))}
    result = evaluate_files("genecis", "val", root, [_write(tmp_path / "p.json", objects)])
    scored = [q for q in queries if q.id in objects]
    assert result.n_queries == len(scored) == 20  # the tasks present in the file
    assert result.metrics == pytest.approx(brute_recall(preds, scored))
    assert validate_file("genecis", "val", root, tmp_path / "p.json").ok
    objects["focus_object/0"] = [queries[0].reference_id]  # the reference is no candidate
    report = validate_file("genecis", "val", root, _write(tmp_path / "bad.json", objects))
    assert not report.ok and "not allowed here" in report.summary()
    objects["focus_object/0"] = preds["focus_object/0"]
    objects.pop("change_object/3")
    with pytest.raises(DataError, match="1 of 20 queries have no ranking"):
        evaluate_files("genecis", "val", root, [_write(tmp_path / "part.json", objects)])
