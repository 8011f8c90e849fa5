"""cir against the official annotation files themselves (skipped, with the reason, where they
are absent: set ``CIR_BENCHMARKS_ROOT`` or keep ``shared/benchmarks`` beside the repository)."""

from __future__ import annotations

from pathlib import Path

from cir.bench.datasets import CIRCO, CIRR, FashionIQ


def test_query_counts_and_first_entries(benchmarks_root: Path) -> None:
    circo = CIRCO(benchmarks_root / "circo")
    assert [len(circo.queries(s)) for s in ("val", "test")] == [220, 800]
    cirr = CIRR(benchmarks_root / "cirr")
    val = cirr.queries("val")
    assert len(val) == 4181 and len(cirr.queries("test")) == 4148
    assert val[0].id == "12060" and val[0].reference_id == "dev-244-0-img0"
    assert val[1].extras["target_id"] == "dev-430-3-img0"
    assert len(cirr.gallery_names("val")) == 2297
    fiq = FashionIQ(benchmarks_root / "fashioniq")
    ids = [q.id for q in fiq.queries("val")]
    assert len(ids) == 2017 + 2038 + 1961 and ids[2017] == "shirt/0"
    assert len(fiq.gallery_names("dress", "val")) == 3817


def test_text_rules_on_known_entries(benchmarks_root: Path) -> None:
    root = benchmarks_root / "fashioniq"
    test_q = FashionIQ(root, categories=["dress"]).queries("test")[0]  # " yello and more flowing"
    assert test_q.text == "yello and more flowing and short and black"
    val_q = FashionIQ(root, categories=["dress"]).queries("val")[0]
    assert val_q.reference_id == "B005X4PL1G" and val_q.extras["target_id"] == "B0084Y8XIU"
    plain = CIRCO(benchmarks_root / "circo").queries("val")[0]
    assert plain.text == "shows two people and has a more colorful background"
    concept = CIRCO(benchmarks_root / "circo", text_rule="concept_caption").queries("val")[0]
    assert concept.text.startswith("a girl with a traditional Chinese umbrella that shows")


def test_pinned_hashes_of_the_download_sources_match_the_official_files(benchmarks_root):
    from cir.bench.download import shipped_sources
    from cir.bench.manifest import file_sha256

    checked = 0
    for dataset, by_name in shipped_sources().items():
        for source in by_name.values():
            for item in source.items:
                path = benchmarks_root / dataset / (item.to or "")
                if item.sha256 and item.to and path.is_file():
                    assert file_sha256(path) == item.sha256, (source.name, item.to)
                    checked += 1
    assert checked >= 12  # CIRCO 2, CIRR 4 (twice: official and hub), GeneCIS 2


def test_genecis_object_tasks(benchmarks_root: Path) -> None:
    from cir.bench.datasets import GeneCIS

    ds = GeneCIS(benchmarks_root / "genecis", tasks=["change_object", "focus_object"])
    queries = ds.queries("val")
    assert len(queries) == 2 * 1960
    first = queries[0]
    assert (first.id, first.text, first.reference_id) == ("change_object/0", "wall", "189213")
    assert first.extras["target_id"] == "153527" and len(first.extras["candidates"]) == 15
    # one template lists its target among its distractors too: each image is ranked once
    short = [q.id for q in queries if len(q.extras["candidates"]) != 15]
    assert short == ["change_object/19"]
    assert queries[1960].id == "focus_object/0" and queries[1960].text == "cardboard"
