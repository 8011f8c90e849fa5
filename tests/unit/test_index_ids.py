"""IdTable: compact ids by position and positions by id."""

from __future__ import annotations

from cir.index.ids import IdTable


def test_positions_and_ids_round_trip():
    ids = [f"folder/{i:05d}.jpg" for i in range(3000)] + ["ünïcode/фото.png", "x", ""]
    table = IdTable(ids)
    assert len(table) == len(ids) and table.tolist() == ids
    assert all(table.find(i) == n for n, i in enumerate(ids))
    assert table[3000] == "ünïcode/фото.png" and table.take([2, 0]) == [ids[2], ids[0]]
    assert table.find("missing") == -1 and "missing" not in table and 3 not in table
    assert table.lookup(["x", "nope", "folder/00007.jpg"]) == {"x": 3001, "folder/00007.jpg": 7}


def test_is_much_smaller_than_python_containers():
    ids = [f"img{i:07d}" for i in range(100_000)]
    table = IdTable(ids)
    assert table.nbytes() < 36 * len(ids)  # a list plus a dict of these ids takes ~200 bytes each


def test_empty_table():
    table = IdTable([])
    assert len(table) == 0 and table.tolist() == [] and table.find("a") == -1
