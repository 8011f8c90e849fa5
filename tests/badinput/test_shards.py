"""Hostile webdataset and parquet shards: every bad member or shard is reported, nothing extracted.

Each case puts one hostile shard beside a good image; the build must index the good image, leave
the bad part out with its reason in ``skipped.json``, and write nothing outside the index folder.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from cir.index import GalleryIndex

from .conftest import photo, snapshot

pytest.importorskip("pyarrow")


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), "red").save(buf, "JPEG")
    return buf.getvalue()


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")  # 400 megapixels, a few kB
    return buf.getvalue()


def _tar(path: Path, *members: tuple[str, bytes] | tarfile.TarInfo) -> None:
    with tarfile.open(path, "w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            info = tarfile.TarInfo(member[0])
            info.size = len(member[1])
            tar.addfile(info, io.BytesIO(member[1]))


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _parquet(path: Path, **columns) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


def _truncated(folder: Path) -> None:
    _tar(folder / "s.tar", ("big.jpg", _jpeg() * 20))
    (folder / "s.tar").write_bytes((folder / "s.tar").read_bytes()[:3000])


def _tar_of(*members):
    return lambda folder: _tar(folder / "s.tar", *members)


def _parquet_of(**columns):
    return lambda folder: _parquet(folder / "s.parquet", **columns)


def _bytes_as(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


J = _jpeg()
CASES = {
    "traversal member name": (_tar_of(("../../escape.jpg", J)), "not allowed"),
    "absolute member name": (_tar_of(("/tmp/abs.jpg", J)), "not allowed"),
    "backslash member name": (_tar_of(("a\\..\\b.jpg", J)), "not allowed"),
    "hidden member": (_tar_of((".cache/x.jpg", J)), "hidden"),
    "symbolic link member": (_tar_of(_link("l.jpg", tarfile.SYMTYPE, "/etc/passwd")), "link"),
    "hard link member": (_tar_of(_link("h.jpg", tarfile.LNKTYPE, "x.jpg")), "link"),
    "duplicate member": (_tar_of(("d.jpg", J), ("d.jpg", b"x")), "duplicate"),
    "truncated tar": (_truncated, "truncated"),
    "garbage .tar": (_bytes_as("s.tar", b"\x13garbage" * 200), "not a readable tar"),
    "empty .tar": (_bytes_as("s.tar", b""), "not a readable tar"),
    "text in an image member": (_tar_of(("t.jpg", b"hello")), "not an image"),
    "decompression bomb member": (_tar_of(("b.png", _bomb())), "oversized"),
    "garbage .parquet": (_bytes_as("s.parquet", b"PAR1" + b"\0" * 64), "not a readable parquet"),
    "parquet without images": (_parquet_of(key=["a"], txt=["x"]), "no image column"),
    "parquet text in a jpg column": (_parquet_of(jpg=["not bytes"]), "no image column"),
    "parquet empty cell": (_parquet_of(key=["e"], jpg=[b""]), "empty image cell"),
    "parquet duplicate keys": (_parquet_of(key=["k", "k"], jpg=[J, J]), "duplicate"),
    "parquet traversal key": (_parquet_of(key=["../../up"], jpg=[J]), "not allowed"),
}


@pytest.mark.user_data
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_hostile_shard_is_reported_and_nothing_is_extracted(case, encoder, tmp_path):
    make, reason = CASES[case]
    gallery = tmp_path / "work" / "gallery"
    photo(gallery / "good.jpg", seed=1)
    make(gallery)
    before = snapshot(tmp_path / "work")
    idx = GalleryIndex.build(gallery, encoder, out=tmp_path / "idx", num_workers=0, progress=False)
    assert "good.jpg" in idx.ids
    assert all(i == "good.jpg" or Path(i).parts[0] in ("s.tar", "s.parquet") for i in idx.ids)
    reasons = " | ".join(entry["reason"] for entry in idx.skipped)
    assert reason in reasons, reasons
    assert snapshot(tmp_path / "work") == before  # nothing written beside the shard
    assert not list(tmp_path.rglob("escape.jpg")) and not list(tmp_path.rglob("up*.jpg"))
