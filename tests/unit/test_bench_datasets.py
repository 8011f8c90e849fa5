"""Benchmark readers on annotation files in the official formats, with placeholder images.

Each test runs on the committed fixtures and, where they are present, on the official files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cir.bench import BENCHMARKS
from cir.bench.datasets import CIRCO, CIRR, DATASETS, FashionIQ, get_dataset
from cir.bench.datasets.fashioniq import join_captions
from cir.bench.placeholders import make_miniature, placeholder_image
from cir.cli import cli
from cir.errors import ConfigError, DataError


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def minis(annotations: Path, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("mini")
    return {
        name: make_miniature(name, annotations / name, out / name, n_queries=3)
        for name in ("circo", "cirr", "fashioniq")
    }


def test_query_counts_and_ids_follow_the_annotation_files(annotations: Path) -> None:
    for split in ("val", "test"):
        raw = _load(annotations / "circo" / "annotations" / f"{split}.json")
        queries = CIRCO(annotations / "circo").queries(split)
        assert [q.id for q in queries] == [str(r["id"]) for r in raw]
    raw = _load(annotations / "cirr/captions/cap.rc2.val.json")
    val = CIRR(annotations / "cirr").queries("val")
    assert [(q.id, q.reference_id) for q in val] == [
        (str(r["pairid"]), r["reference"]) for r in raw
    ]
    fiq = FashionIQ(annotations / "fashioniq")
    ids = [q.id for q in fiq.queries("val")]
    sizes = [
        len(_load(annotations / f"fashioniq/captions/cap.{c}.val.json")) for c in fiq.categories
    ]
    assert len(ids) == sum(sizes) and len(set(ids)) == len(ids)
    assert ids[0] == "dress/0" and ids[sizes[0]] == "shirt/0"


def test_extras_carry_what_the_protocols_need(annotations: Path) -> None:
    raw = _load(annotations / "circo/annotations/val.json")[0]
    q = CIRCO(annotations / "circo").queries("val")[0]
    assert q.extras["gt_ids"] == [str(i) for i in raw["gt_img_ids"]]
    assert q.extras["target_id"] == str(raw["target_img_id"]) == q.extras["gt_ids"][0]
    assert q.extras["shared_concept"] == raw["shared_concept"]
    assert q.extras["semantic_aspects"] == raw["semantic_aspects"]
    test_q = CIRCO(annotations / "circo").queries("test")[0]
    assert "target_id" not in test_q.extras and "gt_ids" not in test_q.extras

    raw = _load(annotations / "cirr/captions/cap.rc2.val.json")[1]
    r = CIRR(annotations / "cirr").queries("val")[1]
    assert len(r.extras["group_members"]) == 6 and r.reference_id in r.extras["group_members"]
    assert r.extras["target_id"] == raw["target_hard"]
    assert "target_id" not in CIRR(annotations / "cirr").queries("test")[0].extras

    raw = _load(annotations / "fashioniq/captions/cap.dress.val.json")[0]
    f = FashionIQ(annotations / "fashioniq").queries("val")[0]
    assert f.reference_id == raw["candidate"]  # the candidate is the reference
    assert f.extras == {
        "category": "dress",
        "captions": raw["captions"],
        "target_id": raw["target"],
    }


def test_fashioniq_text_rules(fixtures_root: Path) -> None:
    assert join_captions(["Is red. ", " has long sleeves?"]) == "Is red and has long sleeves"
    assert join_captions(["is red", "short"], capitalize=True) == "Is red and short"
    root = (
        fixtures_root / "fashioniq"
    )  # first dress query: [" is red. and shorter ", "has no sleeves?"]
    join = FashionIQ(root, categories=["dress"]).queries("val")[0]
    assert join.text == "is red. and shorter and has no sleeves"
    first = FashionIQ(root, categories=["dress"], text_rule="first").queries("val")[0]
    assert first.text == "is red. and shorter"
    cap = FashionIQ(root, categories=["dress"], text_rule="join_capitalized").queries("val")[0]
    assert cap.text == "Is red. and shorter and has no sleeves"


def test_circo_text_rules(fixtures_root: Path) -> None:
    plain = CIRCO(fixtures_root / "circo").queries("val")[0]
    assert plain.text == "has two of them and a blue sky"
    concept = CIRCO(fixtures_root / "circo", text_rule="concept_caption").queries("val")[0]
    assert concept.text == "a kite over a beach that has two of them and a blue sky"


def test_bad_options_raise_clear_errors(fixtures_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid rules: join"):
        FashionIQ(fixtures_root / "fashioniq", text_rule="glue")
    with pytest.raises(ConfigError, match="valid: dress, shirt, toptee"):
        FashionIQ(fixtures_root / "fashioniq", categories=["shoes"])
    with pytest.raises(ConfigError, match="valid splits: val, test"):
        CIRR(fixtures_root / "cirr").queries("train")
    with pytest.raises(ConfigError, match="valid: circo, cirr, fashioniq"):
        get_dataset("coco", tmp_path)
    with pytest.raises(DataError, match=r"(?s)cap\.rc2\.val\.json.*cir data check"):
        CIRR(tmp_path).queries("val")


def test_protocols() -> None:
    assert tuple(DATASETS) == BENCHMARKS
    assert CIRR.protocol.exclude_reference and CIRR.protocol.subset_k == 3
    assert not CIRCO.protocol.exclude_reference and CIRCO.protocol.subset_k == 0
    assert not FashionIQ.protocol.exclude_reference
    assert {p.k for p in (CIRR.protocol, CIRCO.protocol, FashionIQ.protocol)} == {50}


def test_galleries_resolve_official_image_paths(minis: dict[str, Path], tmp_path: Path) -> None:
    cirr = CIRR(minis["cirr"], image_root=tmp_path)
    gallery = cirr.parts("val")[0].gallery
    name, rel = next(iter(_load(minis["cirr"] / "image_splits/split.rc2.val.json").items()))
    assert gallery[name] == tmp_path / rel
    [part] = CIRCO(minis["circo"]).parts("val")
    ref = part.queries[0].reference_id
    assert part.gallery[ref].name == f"{int(ref):012d}.jpg"
    assert all(q.reference is None for q in part.queries)  # references come from the index
    parts = FashionIQ(minis["fashioniq"]).parts("val")
    assert [p.name for p in parts] == ["dress", "shirt", "toptee"]
    for p in parts:
        assert all(
            q.reference_id in p.gallery and q.extras["target_id"] in p.gallery for q in p.queries
        )
        assert all(q.extras["category"] == p.name for q in p.queries)


def test_fashioniq_finds_images_whatever_their_extension(minis: dict[str, Path]) -> None:
    ds = FashionIQ(minis["fashioniq"], categories=["dress"])
    name = ds.gallery_names("dress", "val")[0]
    png = minis["fashioniq"] / "images" / f"{name}.png"
    jpg = png.with_suffix(".jpg")
    png.rename(jpg)
    try:
        assert ds.parts("val")[0].gallery[name] == jpg
        assert ds.first_missing("val")[0] is None
    finally:
        jpg.rename(png)


def test_first_missing_reports_annotations_then_images(minis: dict[str, Path]) -> None:
    ds = CIRR(minis["cirr"])
    assert ds.first_missing("val")[0] is None
    victim = sorted(ds.parts("val")[0].gallery.values())[0]
    victim.unlink()
    try:
        assert ds.first_missing("val")[0] == victim
    finally:
        placeholder_image(victim.stem).save(victim)
    caption_file = ds.captions_file("test")
    moved = caption_file.with_suffix(".bak")
    caption_file.rename(moved)
    try:
        assert ds.first_missing("test") == (caption_file, 1)
    finally:
        moved.rename(caption_file)


def test_data_check_command(minis: dict[str, Path], annotations: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["data", "check", "circo", "--data-root", str(minis["circo"])])
    assert ok.exit_code == 0, ok.output
    assert "image_info_unlabeled2017.json" in ok.output and "files present" in ok.output
    # annotation files without images: the first gallery image of the split file is missing
    res = runner.invoke(
        cli, ["data", "check", "cirr", "--data-root", str(annotations / "cirr"), "--json"]
    )
    assert res.exit_code == 1
    report = json.loads(res.output)
    assert report["ok"] is False and report["first_missing_split"] == "val"
    first = next(iter(_load(annotations / "cirr/image_splits/split.rc2.val.json").values()))
    assert report["first_missing"] == str(annotations / "cirr" / first)
    assert report["checked"] == 3
