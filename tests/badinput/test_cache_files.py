"""Shared cache files and the cache database as hostile input: every imported value is checked,
imports are streamed and bounded, imported outputs are reported, and damage is a clear error."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save as save_tensors

from cir.cache import CacheEntry, ContentCache, make_key
from cir.cli import cli
from cir.errors import DataError
from cir.index import GalleryIndex
from cir.pipeline import load_pipeline
from cir.types import Query

from .conftest import one_line_error, photos


def _export(tmp_path: Path, lines: list[dict], name: str = "shared.jsonl") -> Path:
    header = {"format": "cir-cache", "version": 1, "entries": len(lines)}
    path = tmp_path / name
    text = "\n".join(json.dumps(x) for x in [header, *lines]) + "\n"
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _line(value, kind="llm", encoding="json", **extra) -> dict:
    parts = {"stage": "recompose", "model": "m", "variables": {"x": str(extra.pop("n", 0))}}
    line = {"key": make_key(parts), "kind": kind, "stage": "recompose", "model": "m"}
    return {**line, "encoding": encoding, "parts": parts, "value": value, "created": 1.0, **extra}


def _tensor(t: torch.Tensor) -> str:
    return base64.b64encode(save_tensors({"value": t})).decode()


BAD_VALUES = {
    "texts not a list": (_line({"texts": "abc"}), "'texts', a list of strings"),
    "texts of numbers": (_line({"texts": [1, 2]}), "'texts', a list of strings"),
    "no texts": (_line({"answer": "x"}), "'texts'"),
    "a text too long": (_line({"texts": ["x" * 70_000]}), "characters"),
    "too many texts": (_line({"texts": ["x"] * 2000}), "more than 1024 texts"),
    "logprobs not numbers": (_line({"texts": ["a"], "logprobs": [{"y": "high"}]}), "logprobs"),
    "embedding as JSON": (_line([0.1, 0.2], kind="embedding"), "base64 safetensors"),
    "embedding of ints": (
        _line(_tensor(torch.arange(4)), kind="embedding", encoding="safetensors"),
        "dtype",
    ),
    "embedding 3-d": (
        _line(_tensor(torch.ones(2, 2, 2)), kind="embedding", encoding="safetensors"),
        "shape",
    ),
    "embedding with NaN": (
        _line(_tensor(torch.tensor([1.0, float("nan")])), kind="embedding", encoding="safetensors"),
        "NaN",
    ),
    "embedding not safetensors": (
        _line(base64.b64encode(b"garbage!" * 4).decode(), kind="embedding", encoding="safetensors"),
        "does not load",
    ),
    "embedding not base64": (
        _line("@@@", kind="embedding", encoding="safetensors"),
        "malformed entry",
    ),
    "unknown encoding": (_line({"texts": ["a"]}, encoding="pickle"), "must be JSON"),
    "odd kind": (_line({"texts": ["a"]}, kind="../../x"), "unknown kind"),
    "created not a time": (_line({"texts": ["a"]}, created="yesterday"), "malformed entry"),
    "created infinite": (_line({"texts": ["a"]}, created=float("inf")), "malformed entry"),
}


@pytest.mark.parametrize(("line", "message"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_wrongly_typed_values_are_refused_and_nothing_is_written(tmp_path, line, message):
    good = _line({"texts": ["fine"]}, n=1)
    path = _export(tmp_path, [good, line])
    cache = ContentCache(tmp_path / "c")
    with pytest.raises(DataError, match="line 3") as err:
        cache.import_file(path)
    assert message in str(err.value) and len(cache) == 0


def test_a_gzip_bomb_is_refused_without_filling_memory_or_disk(tmp_path):
    bomb = tmp_path / "bomb.jsonl.gz"
    header = json.dumps({"format": "cir-cache", "version": 1, "entries": 1}).encode()
    with gzip.open(bomb, "wb", compresslevel=9) as out:
        out.write(header + b"\n")
        for _ in range(80):
            out.write(b"\n" * 2**20)  # 80 MB of nothing
    assert bomb.stat().st_size < 200_000
    cache = ContentCache(tmp_path / "c")
    with pytest.raises(DataError, match="compression bomb"):
        cache.import_file(bomb)
    assert len(cache) == 0 and cache.path.stat().st_size < 1_000_000


def test_one_huge_line_is_refused(tmp_path):
    path = _export(tmp_path, [_line({"texts": ["x" * (9 * 2**20)]})], "big.jsonl.gz")
    with pytest.raises(DataError, match="a line is longer than"):
        ContentCache(tmp_path / "c").import_file(path)


@pytest.fixture(scope="module")
def red_setup(tmp_path_factory, encoder):
    """A gallery index, and a cache holding text_only's embedding of 'make it red'."""
    folder = tmp_path_factory.mktemp("swap")
    index = GalleryIndex.build(photos(folder / "g", n=4), encoder, out=folder / "i",
                               num_workers=0, progress=False)  # fmt: skip
    cache = ContentCache(folder / "mine")
    pipe = load_pipeline("text_only")
    pipe.run([Query("make it red", id="q")], index, cache=cache, progress=False)
    return folder, index, cache


def _swapped_export(folder: Path, index, cache) -> Path:
    """An export whose 'make it red' embedding is really gallery image 2's embedding."""
    cache.export(folder / "honest.jsonl")
    header, *lines = (folder / "honest.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    [red] = [e for e in entries if e["parts"].get("text") == "make it red"]
    red["value"] = _tensor(index.embedding(index.ids[2]).float())
    path = folder / "swapped.jsonl"
    path.write_text("\n".join([header, *(json.dumps(e) for e in entries)]) + "\n")
    return path


def test_a_swapped_embedding_is_caught_by_verify(red_setup, tmp_path):
    folder, index, cache = red_setup
    path = _swapped_export(folder, index, cache)
    target = ContentCache(tmp_path / "theirs")
    with pytest.raises(DataError, match="do not match their text"):
        target.import_file(path, verify=8)
    assert len(target) == 0
    result = CliRunner().invoke(
        cli, ["cache", "import", str(path), "--cache-dir", str(tmp_path / "cli"), "--verify"]
    )
    one_line_error(result, "do not match their text")


def test_outputs_from_an_import_are_reported_by_the_run(red_setup, tmp_path):
    folder, index, cache = red_setup
    path = _swapped_export(folder, index, cache)
    target = ContentCache(tmp_path / "theirs")
    report = target.import_file(path)
    assert report.added >= 1 and report.source.startswith("import:")
    load_pipeline("text_only").run([Query("make it red", id="q")], index, cache=target,
                                   progress=False)  # fmt: skip
    assert target.stats.to_dict()["imported"] == {report.source: 1}


def test_an_honest_export_passes_verify(red_setup, tmp_path):
    folder, _, cache = red_setup
    cache.export(folder / "honest2.jsonl")
    report = ContentCache(tmp_path / "t").import_file(folder / "honest2.jsonl", verify=8)
    assert report.verified >= 1


def test_a_damaged_cache_database_is_a_clear_error(tmp_path):
    cache = ContentCache(tmp_path)
    cache.put_many([CacheEntry({"stage": "s", "n": i}, {"texts": ["x" * 500]}) for i in range(200)])
    cache.close()
    data = bytearray(cache.path.read_bytes())
    data[4096 : 4096 * 3] = b"\xa5" * 8192  # scribble over two pages
    cache.path.write_bytes(bytes(data))
    for name in ("cache.sqlite3-wal", "cache.sqlite3-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(DataError, match="damaged"):
        damaged = ContentCache(tmp_path)
        damaged.get_many([CacheEntry({"stage": "s", "n": i}, None).key for i in range(200)])
        list(damaged.entries())
    result = CliRunner().invoke(cli, ["cache", "info", "--cache-dir", str(tmp_path)])
    one_line_error(result, "damaged")
