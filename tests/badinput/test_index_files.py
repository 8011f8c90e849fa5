"""Damaged or hostile index files: each is a one-line DataError on load and from the CLI.

Each case edits one file of a freshly saved index (and, where it matters, fixes the manifest's
recorded sizes so the deeper check is reached). Add a case: a name, an edit, the words expected.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from cir.cli import cli
from cir.errors import DataError
from cir.index import GalleryIndex

from .conftest import one_line_error


def _saved(folder: Path) -> Path:
    idx = GalleryIndex.from_embeddings(["a.jpg", "b.jpg", "c.jpg"], torch.randn(3, 8))
    idx.set_sidecar("caps", torch.randn(3, 8), {"model": "m"}, {"text": ["x", "y", "z"]})
    idx.save(folder)
    return folder


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _file(folder: Path, role: str) -> Path:
    return folder / _manifest(folder)["files"][role]


def _resize(folder: Path) -> None:
    """Record the current sizes, as if the damaged files had been written by cir."""
    m = _manifest(folder)
    m["sizes"] = {name: (folder / name).stat().st_size for name in m["files"].values()}
    (folder / "manifest.json").write_text(json.dumps(m))


def _set_manifest(**changes) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        m = _manifest(folder)
        for key, value in changes.items():
            if value is ...:
                m.pop(key)
            else:
                m[key] = value
        (folder / "manifest.json").write_text(json.dumps(m))

    return edit


def _write(role: str, data: bytes | str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        path = _file(folder, role) if role != "skipped" else folder / "skipped.json"
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        _resize(folder)

    return edit


def _tensors(**tensors: torch.Tensor) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        save_file(tensors, str(_file(folder, "embeddings")))
        _resize(folder)

    return edit


def _unit_rows(bad: torch.Tensor) -> torch.Tensor:
    rows = torch.nn.functional.normalize(torch.randn(3, 8), dim=1).half()
    rows[1] = bad
    return rows


CASES = {
    "ids JSON garbage": (_write("ids", "{not json"), "not valid JSON"),
    "ids not UTF-8": (_write("ids", b'{"ids": ["\xff\xfe"]}'), "not valid JSON"),
    "ids deeply nested": (_write("ids", "[" * 50_000 + "]" * 50_000), "not valid JSON"),
    "ids a list": (_write("ids", '["a.jpg", "b.jpg", "c.jpg"]'), '"ids": [...]'),
    "ids numbers": (_write("ids", '{"ids": [1, 2, 3]}'), "not non-empty strings"),
    "ids duplicated": (_write("ids", '{"ids": ["a", "a", "b"]}'), "duplicate ids"),
    "ids too few": (_write("ids", '{"ids": ["a"]}'), "holds 1 ids"),
    "paths wrong length": (_write("ids", '{"ids": ["a","b","c"], "paths": ["x"]}'), "'paths'"),
    "manifest without files": (_set_manifest(files=...), "no 'files' field"),
    "manifest without dim": (_set_manifest(dim=...), "no 'dim' field"),
    "format_version a string": (_set_manifest(format_version="2"), "'format_version' is str"),
    "format_version newer": (_set_manifest(format_version=7), "newer than this cir"),
    "sizes null": (_set_manifest(sizes=None), "'sizes' is NoneType"),
    "count negative": (_set_manifest(count=-1), "says -1 rows"),
    "dtype int8": (_set_manifest(dtype="int8"), "dtype 'int8'"),
    "files outside the folder": (
        _set_manifest(files={"ids": "../../etc/passwd", "embeddings": "e"}),
        "only plain file names",
    ),
    "root relative": (_set_manifest(root="photos"), "relative gallery root"),
    "root a number": (_set_manifest(root=5), "'root' is int"),
    "manifest a list": (lambda f: (f / "manifest.json").write_text("[]"), "not a cir gallery"),
    "manifest not UTF-8": (lambda f: (f / "manifest.json").write_bytes(b"\xff{"), "not valid JSON"),
    "renamed tensor": (_tensors(vectors=torch.randn(3, 8).half()), "no tensor named 'embeddings'"),
    "int8 tensor": (_tensors(embeddings=torch.ones(3, 8, dtype=torch.int8)), "torch.int8"),
    "wrong shape": (_tensors(embeddings=torch.randn(3, 4).half()), "(3, 4) tensor"),
    "NaN row": (_tensors(embeddings=_unit_rows(torch.full((8,), float("nan")))), "NaN"),
    "zeroed row": (_tensors(embeddings=_unit_rows(torch.zeros(8))), "zeroed"),
    "unnormalised row": (_tensors(embeddings=_unit_rows(torch.full((8,), 3.0))), "unit vectors"),
    "tensor garbage": (_write("embeddings", b"\x00" * 64), "cannot read"),
    "truncated tensor": (
        lambda f: _file(f, "embeddings").write_bytes(_file(f, "embeddings").read_bytes()[:-9]),
        "damaged",
    ),
    "missing tensor file": (lambda f: _file(f, "embeddings").unlink(), "is missing"),
    "skipped not a list": (_write("skipped", '{"a": 1}'), '"path": ..., "reason"'),
    "skipped garbage": (_write("skipped", "\x00\x01"), "not valid JSON"),
    "sidecar meta mismatch": (_write("sidecar_meta", '{"other": {}}'), "describes sidecars"),
    "sidecar rows short": (
        _write("sidecar_meta", '{"caps": {"meta": {}, "rows": {"text": ["x"]}}}'),
        "wrong length",
    ),
}


@pytest.mark.parametrize(("damage", "message"), CASES.values(), ids=CASES.keys())
def test_a_damaged_index_is_a_clear_error(tmp_path, damage, message):
    folder = _saved(tmp_path / "i")
    damage(folder)
    with pytest.raises(DataError) as err:
        GalleryIndex.load(folder)
    assert message in str(err.value)
    result = CliRunner().invoke(cli, ["index", "info", str(folder), "--verify"])
    one_line_error(result)


def test_verify_checks_every_row_that_loading_samples(tmp_path):
    n = 2000
    rows = torch.nn.functional.normalize(torch.randn(n, 8), dim=1)
    idx = GalleryIndex.from_embeddings([f"{i}.jpg" for i in range(n)], rows)
    idx.save(tmp_path / "i")
    emb_path = _file(tmp_path / "i", "embeddings")
    stored = idx.embeddings.clone()
    stored[1001] = 0  # between the sampled rows
    save_file({"embeddings": stored}, str(emb_path))
    _resize(tmp_path / "i")
    assert len(GalleryIndex.load(tmp_path / "i")) == n  # the cheap check does not see it
    result = CliRunner().invoke(cli, ["index", "info", str(tmp_path / "i"), "--verify"])
    one_line_error(result, "failed verification", "1001.jpg")
    ok = CliRunner().invoke(cli, ["index", "info", str(_saved(tmp_path / "good")), "--verify"])
    assert ok.exit_code == 0 and "no problem found" in ok.output
