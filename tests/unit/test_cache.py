"""The content cache: keys, values, statistics, concurrency, interrupted writes, export/import."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from cir.cache import (
    CacheEntry,
    ContentCache,
    default_cache_dir,
    fingerprint_image,
    make_key,
    model_revision,
)
from cir.errors import DataError


def _entry(i: int, stage: str = "recompose", kind: str = "llm") -> CacheEntry:
    parts = {"stage": stage, "model": "m", "variables": {"i": i}}
    return CacheEntry(parts, {"texts": [f"answer {i}"]}, kind=kind)


def test_keys_depend_on_every_part_and_not_on_order() -> None:
    base = {"stage": "s", "model": "m", "prompt": "p", "sampling": {"t": 0}, "text": "x"}
    assert make_key(base) == make_key(dict(reversed(list(base.items()))))
    for name in base:
        changed = {**base, name: "other"}
        assert make_key(changed) != make_key(base), name


def test_json_and_tensor_values_round_trip_with_stats(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path)
    vector = torch.randn(3, 8)
    key_text = cache.put(_entry(1))
    key_vec = cache.put(CacheEntry({"stage": "encode_text", "text": "a"}, vector, "embedding"))
    assert cache.get(key_text) == {"texts": ["answer 1"]}
    assert torch.equal(cache.get(key_vec), vector)
    assert cache.get("0" * 64, default="none") == "none"
    assert cache.get_many([key_text, "f" * 64]) == {key_text: {"texts": ["answer 1"]}}
    assert (cache.stats.hits, cache.stats.misses, cache.stats.writes) == (3, 2, 2)
    assert cache.stats.hit_rate == pytest.approx(0.6)
    reopened = ContentCache(tmp_path / "cache.sqlite3")
    assert len(reopened) == 2 and key_vec in reopened
    with pytest.raises(TypeError, match="JSON values or tensors"):
        cache.put(CacheEntry({"stage": "x"}, object()))


def test_location_comes_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CIR_CACHE_DIR", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    assert ContentCache().path == tmp_path / "env-cache" / "cache.sqlite3"
    monkeypatch.delenv("CIR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "cir"


def test_info_and_clear_by_stage(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path)
    cache.put_many([_entry(i) for i in range(3)] + [_entry(9, "caption", "caption")])
    info = cache.info()
    assert info["entries"] == 4 and info["file_bytes"] > 0
    groups = {(g["stage"], g["kind"]): g["entries"] for g in info["groups"]}
    assert groups == {("recompose", "llm"): 3, ("caption", "caption"): 1}
    assert cache.clear(stage="caption") == 1
    assert len(cache) == 3
    assert cache.clear() == 3 and len(cache) == 0


def test_threads_share_one_cache(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path)

    def write(start: int) -> None:
        for i in range(start, start + 40):
            cache.put(_entry(i))
            assert cache.get(_entry(i).key) == {"texts": [f"answer {i}"]}

    threads = [threading.Thread(target=write, args=(n * 100,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 160


def _write_batches(folder: str, tag: str, batches: int, size: int) -> None:
    """A writer process: ``batches`` transactions of ``size`` entries each."""
    cache = ContentCache(folder)
    for b in range(batches):
        cache.put_many(
            CacheEntry({"stage": "s", "tag": tag, "b": b, "i": i}, {"texts": ["x" * 200]})
            for i in range(size)
        )


_FORK = multiprocessing.get_context("fork")  # children start without re-importing torch


def test_processes_write_concurrently(tmp_path: Path) -> None:
    procs = [
        _FORK.Process(target=_write_batches, args=(str(tmp_path), tag, 20, 25))
        for tag in ("a", "b", "c")
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(ContentCache(tmp_path)) == 3 * 20 * 25


def test_a_killed_writer_leaves_whole_batches_only(tmp_path: Path) -> None:
    proc = _FORK.Process(target=_write_batches, args=(str(tmp_path), "k", 100000, 50))
    proc.start()
    deadline = time.time() + 30
    while time.time() < deadline and len(ContentCache(tmp_path)) < 200:
        time.sleep(0.02)
    proc.kill()
    proc.join(timeout=10)
    assert proc.exitcode == -signal.SIGKILL
    cache = ContentCache(tmp_path)
    count = len(cache)
    assert count >= 200 and count % 50 == 0  # every batch all or nothing
    check = sqlite3.connect(cache.path).execute("PRAGMA integrity_check").fetchone()[0]
    assert check == "ok"
    assert all(e["value"] == {"texts": ["x" * 200]} for e in cache.entries())
    cache.put(_entry(1))  # still writable
    assert _entry(1).key in cache


@pytest.mark.parametrize("name", ["share.jsonl", "share.jsonl.gz"])
def test_export_import_round_trip(tmp_path: Path, name: str) -> None:
    source = ContentCache(tmp_path / "a")
    vector = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    source.put_many([_entry(i) for i in range(3)])
    source.put(CacheEntry({"stage": "encode_text", "text": "t"}, vector, "embedding"))
    path = tmp_path / name
    assert source.export(path) == 4
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt") as f:
        header = json.loads(f.readline())
    assert header["format"] == "cir-cache" and header["entries"] == 4
    target = ContentCache(tmp_path / "b")
    assert target.import_file(path) == 4
    assert target.import_file(path) == 0  # already there
    for entry in source.entries():
        value = target.get(entry["key"])
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, vector)
        else:
            assert value == entry["value"]
    assert source.export(tmp_path / "only.jsonl", stage="encode_text") == 1


def test_import_refuses_damaged_files(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "a")
    cache.put_many([_entry(i) for i in range(2)])
    good = tmp_path / "good.jsonl"
    cache.export(good)
    header, first, second = good.read_text().splitlines()
    tampered = json.loads(first)
    tampered["value"] = {"texts": ["changed"]}
    tampered["parts"]["variables"]["i"] = 99
    cases = {
        "key does not match": "\n".join([header, json.dumps(tampered), second]),
        "header promises 2": "\n".join([header, first]),
        "not a cir cache export": "\n".join(['{"format": "other"}', first]),
        "not a JSON object": "\n".join([header, first, "{broken"]),
    }
    target = ContentCache(tmp_path / "b")
    for message, text in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(DataError, match=message):
            target.import_file(bad)
    assert len(target) == 0  # nothing written from a refused file
    with pytest.raises(DataError, match="does not exist"):
        target.import_file(tmp_path / "missing.jsonl")


def test_fingerprint_image(tmp_path: Path) -> None:
    image = Image.new("RGB", (8, 8), (200, 10, 10))
    path = tmp_path / "a.png"
    image.save(path)
    first = fingerprint_image(path)
    assert first == fingerprint_image(str(path)) and len(first) == 64
    assert fingerprint_image(image) == fingerprint_image(image.copy())
    changed = image.copy()
    changed.putpixel((0, 0), (0, 0, 0))
    assert fingerprint_image(changed) != fingerprint_image(image)
    time.sleep(0.01)
    changed.save(path)
    assert fingerprint_image(path) != first  # the file changed: a new hash
    with pytest.raises(DataError, match="cannot read image"):
        fingerprint_image(tmp_path / "missing.png")


def test_model_revision_tracks_local_files(tmp_path: Path) -> None:
    assert model_revision("org/some-hub-model") is None
    assert model_revision("") is None
    (tmp_path / "weights.bin").write_bytes(b"1")
    before = model_revision(str(tmp_path))
    assert before == model_revision(f"local-dir:{tmp_path}")
    (tmp_path / "weights.bin").write_bytes(b"12")
    assert model_revision(str(tmp_path)) != before


def test_cli_info_export_import_clear(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cir.cli import cli

    source = ContentCache(tmp_path / "a")
    source.put_many([_entry(i) for i in range(3)] + [_entry(7, "caption", "caption")])
    runner = CliRunner()
    a, b = ["--cache-dir", str(tmp_path / "a")], ["--cache-dir", str(tmp_path / "b")]
    info = runner.invoke(cli, ["cache", "info", "--json", *a])
    assert info.exit_code == 0 and json.loads(info.output)["entries"] == 4
    shared = str(tmp_path / "captions.jsonl.gz")
    out = runner.invoke(cli, ["cache", "export", shared, "--stage", "caption", *a])
    assert out.exit_code == 0 and "exported 1 entries" in out.output
    out = runner.invoke(cli, ["cache", "import", shared, *b])
    assert out.exit_code == 0 and "imported 1 new entries" in out.output
    assert ContentCache(tmp_path / "b").get(_entry(7, "caption").key) == {"texts": ["answer 7"]}
    out = runner.invoke(cli, ["cache", "clear", "--stage", "recompose", "--yes", *a])
    assert out.exit_code == 0 and "removed 3 entries" in out.output
    bad = runner.invoke(cli, ["cache", "import", str(tmp_path / "none.jsonl"), *b])
    assert bad.exit_code != 0 and "does not exist" in bad.output
    assert "Traceback" not in bad.output


def test_a_cache_from_a_newer_schema_is_refused_with_a_clear_message(tmp_path):
    import sqlite3

    from cir.cache import SCHEMA_VERSION, ContentCache
    from cir.errors import DataError

    path = tmp_path / "cache.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(DataError, match="newer cir"):
        ContentCache(path)


def test_an_eight_column_cache_is_brought_up_to_date(tmp_path):
    import sqlite3

    from cir.cache import ContentCache

    path = tmp_path / "cache.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE entries (key TEXT PRIMARY KEY, kind TEXT NOT NULL, stage TEXT NOT NULL,"
            " model TEXT NOT NULL, encoding TEXT NOT NULL, value BLOB NOT NULL,"
            " parts TEXT NOT NULL, created REAL NOT NULL)"
        )
    cache = ContentCache(path)
    key = cache.put(CacheEntry({"stage": "caption", "model": "m"}, {"texts": ["a red dress"]}))
    assert cache.get(key) == {"texts": ["a red dress"]}
