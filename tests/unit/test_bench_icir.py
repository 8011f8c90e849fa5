"""i-CIR: the reader of its two CSV files, and the trapezoidal average precision against
hand-computed values and a brute force written here from the authors' definition."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from cir.bench.datasets import ICIR
from cir.bench.evaluate import evaluate_files
from cir.bench.metrics import icir_average_precision, icir_metrics
from cir.bench.submission import validate_file
from cir.errors import DataError


def _rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return [r for r in csv.reader(f) if r]


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def root(fixtures_root: Path) -> Path:
    return fixtures_root / "icir"


# ----------------------------------------------------------------------------- reader
def test_rows_become_queries_with_their_positives(root: Path) -> None:
    queries = ICIR(root).queries("val")
    rows, database = _rows(root / "query_files.csv"), _rows(root / "database_files.csv")
    assert [q.id for q in queries] == [str(i) for i in range(len(rows))]
    for q, (path, text, instance) in zip(queries, rows, strict=True):
        assert q.text == text and q.extras["instance"] == instance
        assert q.reference == root / path.removeprefix("icir/") and q.reference_id is None
        positives = [p for p, t, i in database if i == instance and t == text]
        assert q.extras["gt_ids"] == [p.removeprefix("icir/database/") for p in positives]
        assert q.extras["gt_ids"] and all("/hn/" not in g for g in q.extras["gt_ids"])


def test_each_instance_is_a_part_ranking_its_database(root: Path) -> None:
    ds = ICIR(root)
    parts = ds.parts("val")
    database = _rows(root / "database_files.csv")
    assert [p.name for p in parts] == ["brass_lantern", "stone_bridge", "red_kayak"]
    for part in parts:
        mine = [p for p, _, i in database if i == part.name]
        assert list(part.gallery) == [p.removeprefix("icir/database/") for p in mine]
        assert all(path == root / "database" / gid for gid, path in part.gallery.items())
        assert all(q.extras["instance"] == part.name for q in part.queries)
        assert all(set(q.extras["gt_ids"]) <= set(part.gallery) for q in part.queries)
    files = list(ds.image_files("val"))
    assert len(files) == len(set(files)) == 6 + len(database)  # two query images per instance
    assert ICIR.protocol.rank_all and not ICIR.protocol.exclude_reference


def test_headers_quotes_and_a_data_root_outside_the_paths(root: Path, tmp_path: Path) -> None:
    """A header row is skipped; paths may start at query/ or database/ directly."""
    lines = (root / "query_files.csv").read_text().splitlines()
    rewritten = ["path,text,instance"] + [line.removeprefix("icir/") for line in lines]
    rewritten[1] = rewritten[1].replace(",on a poster,", ',"on a poster",')
    (tmp_path / "query_files.csv").write_text("\n".join(rewritten) + "\n")
    (tmp_path / "database_files.csv").write_text((root / "database_files.csv").read_text())
    again = ICIR(tmp_path).queries("val")
    first = ICIR(root).queries("val")
    assert [(q.text, q.extras) for q in again] == [(q.text, q.extras) for q in first]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("icir/query/x/x1.jpg,at night", "2 fields"),
        ("/etc/query/x/x1.jpg,at night,x", "must be relative"),
        ("icir/query/../../x1.jpg,at night,x", r"may not contain '\.\.'"),
        ("icir/photos/x/x1.jpg,at night,x", "not an image path through query/"),
        ("icir/query/x/x1.txt,at night,x", "not an image path"),
        ("icir/query/x/x1.jpg,at night, ", "empty instance"),
    ],
)
def test_malformed_rows_name_their_line(root: Path, tmp_path: Path, line: str, why: str) -> None:
    good = (root / "query_files.csv").read_text().splitlines()[0]
    (tmp_path / "query_files.csv").write_text(f"{good}\n{line}\n")
    (tmp_path / "database_files.csv").write_text((root / "database_files.csv").read_text())
    with pytest.raises(DataError, match=rf"query_files\.csv, line 2: .*{why}"):
        ICIR(tmp_path).queries("val")


def test_an_instance_without_database_is_refused(root: Path, tmp_path: Path) -> None:
    (tmp_path / "query_files.csv").write_text("icir/query/owl/owl_image_query1.jpg,at night,owl\n")
    (tmp_path / "database_files.csv").write_text((root / "database_files.csv").read_text())
    with pytest.raises(DataError, match=r"no image for instance\(s\) \['owl'\]"):
        ICIR(tmp_path).parts("val")
    with pytest.raises(DataError, match=r"(?s)database_files\.csv.*cir data check icir"):
        ICIR(tmp_path / "nowhere").queries("val")


# ----------------------------------------------------------------------------- metric
def brute_ap(ranked: list[str], positives: list[str]) -> float:
    """The authors' loop, over the full ranking: the positions of the positives, and for the
    j-th one the mean of the precision just before it and at it, times 1 / (#positives + 1e-5)."""
    positions = [r for r, gid in enumerate(ranked) if gid in positives]
    step = 1.0 / (len(set(positives)) + 1e-5)
    total = 0.0
    for j, rank in enumerate(positions):
        before = 1.0 if rank == 0 else j / rank
        at = (j + 1) / (rank + 1)
        total += (before + at) * step / 2.0
    return total


def test_average_precision_by_hand() -> None:
    # positives at ranks 0 and 2: (1 + 1)/2 and (1/2 + 2/3)/2, over 2 + 1e-5
    assert icir_average_precision(["a", "x", "b", "y"], ["a", "b"]) == pytest.approx(
        (1.0 + (1 / 2 + 2 / 3) / 2) / (2 + 1e-5), abs=1e-15
    )
    # a single positive at rank 3: (0/3 + 1/4)/2 = 0.125
    assert icir_average_precision(["x", "y", "z", "a"], ["a"]) == pytest.approx(
        0.125 / (1 + 1e-5), abs=1e-15
    )
    assert icir_average_precision(["a", "b"], ["a", "b"]) == pytest.approx(2 / (2 + 1e-5))
    # a positive the ranking leaves out adds nothing (still counted in the denominator)
    assert icir_average_precision(["a", "x"], ["a", "b"]) == pytest.approx(1 / (2 + 1e-5))
    assert icir_average_precision(["x"], []) == 0.0


def test_average_precision_and_instance_means_against_brute_force(root: Path) -> None:
    parts = ICIR(root).parts("val")
    rng = random.Random(7)
    rankings = {q.id: rng.sample(list(p.gallery), len(p.gallery)) for p in parts for q in p.queries}
    queries = [q for p in parts for q in p.queries]
    got = icir_metrics(rankings, queries)
    aps = {q.id: brute_ap(rankings[q.id], q.extras["gt_ids"]) for q in queries}
    per_instance = [[aps[q.id] for q in p.queries] for p in parts]
    assert got["mAP"] == pytest.approx(100 * sum(aps.values()) / len(aps))
    assert got["macro_mAP"] == pytest.approx(
        100 * sum(sum(a) / len(a) for a in per_instance) / len(per_instance)
    )
    assert got["min_mAP"] == pytest.approx(100 * sum(min(a) for a in per_instance) / len(parts))
    for _ in range(50):
        ranked = rng.sample([f"i{n}" for n in range(40)], 40)
        positives = rng.sample(ranked, rng.randint(1, 9))
        assert icir_average_precision(ranked, positives) == pytest.approx(
            brute_ap(ranked, positives), abs=1e-12
        )


def test_predictions_files_rank_whole_databases(root: Path, tmp_path: Path) -> None:
    parts = ICIR(root).parts("val")
    rng = random.Random(1)
    full = {q.id: rng.sample(list(p.gallery), len(p.gallery)) for p in parts for q in p.queries}
    result = evaluate_files("icir", "val", root, [_write(tmp_path / "full.json", full)])
    assert result.metrics == pytest.approx(
        icir_metrics(full, [q for p in parts for q in p.queries])
    )
    assert not result.warnings and validate_file("icir", "val", root, tmp_path / "full.json").ok
    short = {k: v[:3] for k, v in full.items()}
    result = evaluate_files("icir", "val", root, [_write(tmp_path / "short.json", short)])
    assert any("do not list their instance's whole database" in w for w in result.warnings)
    report = validate_file("icir", "val", root, tmp_path / "short.json")
    assert not report.ok  # a file to hand over must rank every database image
    other = dict(full)
    other["0"] = list(parts[1].gallery)  # another instance's database
    report = validate_file("icir", "val", root, _write(tmp_path / "other.json", other))
    assert "not allowed here" in report.summary()
