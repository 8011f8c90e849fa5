"""Submission writers validate before writing; the validator catches what servers reject (on the
committed fixtures and, where present, the official files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cir.bench.datasets import CIRCO, CIRR, FashionIQ
from cir.bench.metrics import subset_ranking
from cir.bench.submission import validate_file, write_submission
from cir.cli import cli
from cir.errors import DataError


@pytest.fixture(scope="module")
def cirr_test(annotations: Path):
    ds = CIRR(annotations / "cirr")
    queries, names = ds.queries("test"), ds.gallery_names("test")
    full, subset = {}, {}
    for i, q in enumerate(queries):
        ranked = [q.extras["group_members"][j] for j in (1, 2, 3, 4, 5, 0)]
        ranked += [names[(i + j) % len(names)] for j in range(60)]
        ranked = [r for r in dict.fromkeys(ranked) if r != q.reference_id]
        full[q.id], subset[q.id] = ranked, subset_ranking(ranked, q)
    return queries, full, subset, set(names)


def test_cirr_writer_makes_two_valid_files(cirr_test, annotations, tmp_path) -> None:
    queries, full, subset, _names = cirr_test
    paths = write_submission("cirr", "test", full, queries, tmp_path, subset_rankings=subset)
    assert [p.name for p in paths] == ["cirr_test_recall.json", "cirr_test_recall_subset.json"]
    recall = json.loads(paths[0].read_text())
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    assert len(recall) == len(queries) + 2 and all(len(recall[q.id]) == 50 for q in queries)
    assert json.loads(paths[1].read_text())["metric"] == "recall_subset"
    for path in paths:
        report = validate_file("cirr", "test", annotations / "cirr", path)
        assert report.ok and not report.warnings, report.summary()
        assert path.stat().st_size < 5 * 1024 * 1024


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda r, q: r.pop(q[0].id), r"1 query id\(s\) missing"),
        (lambda r, q: r[q[0].id].__setitem__(1, r[q[0].id][0]), "duplicate id"),
        (lambda r, q: r.__setitem__(q[0].id, r[q[0].id][:10]), "must be exactly 50"),
        (lambda r, q: r[q[0].id].__setitem__(0, "dev-1-1-img1"), "not allowed here"),
    ],
)
def test_cirr_writer_refuses_bad_rankings(cirr_test, tmp_path, break_it, message) -> None:
    queries, full, subset, names = cirr_test
    broken = {k: list(v) for k, v in full.items()}
    break_it(broken, queries)
    with pytest.raises(DataError, match=message):
        write_submission(
            "cirr", "test", broken, queries, tmp_path, subset_rankings=subset, gallery=names
        )
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the valid file


def test_circo_writer_uses_integer_ids(annotations, tmp_path) -> None:
    queries = CIRCO(annotations / "circo").queries("test")
    info = annotations / "circo/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"
    checked = info.is_file()  # the official copy has no COCO image list: ids cannot be checked
    ids = [str(im["id"]) for im in json.loads(info.read_text())["images"]] if checked else []
    ids = ids[:60] or [str(100 + i) for i in range(60)]
    rankings = {q.id: ids for q in queries}
    [path] = write_submission("circo", "test", rankings, queries, tmp_path)
    data = json.loads(path.read_text())
    assert set(data) == {q.id for q in queries}
    first = data[queries[0].id]
    assert first[:2] == [int(ids[0]), int(ids[1])] and len(first) == 50
    report = validate_file("circo", "test", annotations / "circo", path)
    assert report.ok
    assert any("image ids not checked" in w for w in report.warnings) is not checked


def test_fashioniq_writer_one_file_all_categories(annotations, tmp_path) -> None:
    ds = FashionIQ(annotations / "fashioniq")
    queries = ds.queries("test")
    galleries = {c: ds.gallery_names(c, "test") for c in ds.categories}
    rankings = {q.id: galleries[q.extras["category"]][:50] for q in queries}
    [path] = write_submission("fashioniq", "test", rankings, queries, tmp_path)
    assert validate_file("fashioniq", "test", annotations / "fashioniq", path).ok
    with pytest.raises(DataError, match="not allowed here"):
        wrong = dict(rankings, **{"dress/0": galleries["shirt"][:50]})
        write_submission(
            "fashioniq",
            "test",
            wrong,
            queries,
            tmp_path / "x",
            gallery={c: set(g) for c, g in galleries.items()},
        )


def test_validator_catches_what_the_servers_reject(cirr_test, annotations, tmp_path) -> None:
    queries, full, subset, _names = cirr_test
    root = annotations / "cirr"
    first, second = queries[0].id, queries[1].id
    body = ",".join(f'"{k}": {json.dumps(v[:50])}' for k, v in full.items())
    dup = tmp_path / "dup.json"
    dup.write_text('{"version": "rc2", "metric": "recall", ' + body + f', "{first}": []' + "}")
    assert "appears more than once" in " ".join(validate_file("cirr", "test", root, dup).errors)

    bad = {"version": "rc1", "metric": "recall_subset"} | {k: v[:3] for k, v in subset.items()}
    bad[first] = [queries[0].reference_id, *bad[first][:2]]  # the reference is no candidate
    bad[second] = [1, 2, 3]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    errors = " | ".join(validate_file("cirr", "test", root, path).errors)
    assert '"version" must be "rc2"' in errors
    assert f"query {first!r}: 1 id(s) not allowed here" in errors
    assert f"query {second!r}: ids must be strings" in errors

    big = {"version": "rc2", "metric": "recall"} | {k: v[:50] for k, v in full.items()}
    big["padding"] = "x" * (5 * 1024 * 1024)
    path.write_text(json.dumps(big))
    errors = " | ".join(validate_file("cirr", "test", root, path).errors)
    assert "5 MB limit" in errors and "unknown query id" in errors


def test_validate_command(cirr_test, annotations, tmp_path) -> None:
    queries, full, subset, _names = cirr_test
    paths = write_submission("cirr", "test", full, queries, tmp_path, subset_rankings=subset)
    args = [
        "bench",
        "validate",
        "cirr",
        *map(str, paths),
        "--data-root",
        str(annotations / "cirr"),
    ]
    runner = CliRunner()
    res = runner.invoke(cli, [*args, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) | {"files": None} == {
        "ok": True,
        "files": None,
        "kinds": ["cirr/recall", "cirr/recall_subset"],
        "errors": [],
        "warnings": [],
    }
    data = json.loads(paths[1].read_text())
    data.pop(queries[5].id)
    paths[1].write_text(json.dumps(data))
    res = runner.invoke(cli, args)
    assert res.exit_code == 1 and "1 query id(s) missing" in res.output
