"""Benchmark readers against the official annotation files, with placeholder images."""

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


@pytest.fixture(scope="module")
def minis(benchmarks_root: Path, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("mini")
    return {
        name: make_miniature(name, benchmarks_root / name, out / name, n_queries=3)
        for name in ("circo", "cirr", "fashioniq")
    }


def test_query_counts_and_ids_follow_the_official_files(benchmarks_root: Path) -> None:
    circo = CIRCO(benchmarks_root / "circo")
    assert [len(circo.queries(s)) for s in ("val", "test")] == [220, 800]
    cirr = CIRR(benchmarks_root / "cirr")
    val = cirr.queries("val")
    assert len(val) == 4181 and len(cirr.queries("test")) == 4148
    assert val[0].id == "12060" and val[0].reference_id == "dev-244-0-img0"
    fiq = FashionIQ(benchmarks_root / "fashioniq")
    ids = [q.id for q in fiq.queries("val")]
    assert len(ids) == 2017 + 2038 + 1961 and len(set(ids)) == len(ids)
    assert ids[0] == "dress/0" and ids[2017] == "shirt/0"


def test_extras_carry_what_the_protocols_need(benchmarks_root: Path) -> None:
    q = CIRCO(benchmarks_root / "circo").queries("val")[0]
    raw = json.loads((benchmarks_root / "circo/annotations/val.json").read_text())[0]
    assert q.extras["gt_ids"] == [str(i) for i in raw["gt_img_ids"]]
    assert q.extras["target_id"] == str(raw["target_img_id"]) == q.extras["gt_ids"][0]
    assert q.extras["shared_concept"] == raw["shared_concept"]
    assert "cardinality" in q.extras["semantic_aspects"]
    test_q = CIRCO(benchmarks_root / "circo").queries("test")[0]
    assert "target_id" not in test_q.extras and "gt_ids" not in test_q.extras

    r = CIRR(benchmarks_root / "cirr").queries("val")[1]
    assert len(r.extras["group_members"]) == 6 and r.reference_id in r.extras["group_members"]
    assert r.extras["target_id"] == "dev-430-3-img0"

    f = FashionIQ(benchmarks_root / "fashioniq").queries("val")[0]
    assert f.reference_id == "B005X4PL1G"  # the candidate is the reference
    assert f.extras == {
        "category": "dress",
        "captions": ["is shiny and silver with shorter sleeves", "fit and flare"],
        "target_id": "B0084Y8XIU",
    }


def test_fashioniq_text_rules(benchmarks_root: Path) -> None:
    assert join_captions(["Is red. ", " has long sleeves?"]) == "Is red and has long sleeves"
    assert join_captions(["is red", "short"], capitalize=True) == "Is red and short"
    root = benchmarks_root / "fashioniq"
    test_q = FashionIQ(root, categories=["dress"]).queries("test")[0]  # " yello and more flowing"
    assert test_q.text == "yello and more flowing and short and black"
    first = FashionIQ(root, categories=["dress"], text_rule="first").queries("val")[0]
    assert first.text == "is shiny and silver with shorter sleeves"
    cap = FashionIQ(root, categories=["dress"], text_rule="join_capitalized").queries("val")[0]
    assert cap.text == "Is shiny and silver with shorter sleeves and fit and flare"


def test_circo_text_rules(benchmarks_root: Path) -> None:
    plain = CIRCO(benchmarks_root / "circo").queries("val")[0]
    assert plain.text == "shows two people and has a more colorful background"
    concept = CIRCO(benchmarks_root / "circo", text_rule="concept_caption").queries("val")[0]
    assert concept.text == (
        "a girl with a traditional Chinese umbrella that shows two people and has a more "
        "colorful background"
    )


def test_bad_options_raise_clear_errors(benchmarks_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid rules: join"):
        FashionIQ(benchmarks_root / "fashioniq", text_rule="concat")
    with pytest.raises(ConfigError, match="valid: dress, shirt, toptee"):
        FashionIQ(benchmarks_root / "fashioniq", categories=["shoes"])
    with pytest.raises(ConfigError, match="valid splits: val, test"):
        CIRR(benchmarks_root / "cirr").queries("train")
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
    assert gallery["dev-244-0-img0"] == tmp_path / "dev" / "dev-244-0-img0.png"
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


def test_data_check_command(minis: dict[str, Path], benchmarks_root: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["data", "check", "circo", "--data-root", str(minis["circo"])])
    assert ok.exit_code == 0, ok.output
    assert "image_info_unlabeled2017.json" in ok.output and "files present" in ok.output
    # the real annotation files without images: the first gallery image is missing
    res = runner.invoke(
        cli, ["data", "check", "cirr", "--data-root", str(benchmarks_root / "cirr"), "--json"]
    )
    assert res.exit_code == 1
    report = json.loads(res.output)
    assert report["ok"] is False and report["first_missing_split"] == "val"
    assert report["first_missing"] == str(benchmarks_root / "cirr" / "dev" / "dev-244-0-img0.png")
    assert report["checked"] == 3
