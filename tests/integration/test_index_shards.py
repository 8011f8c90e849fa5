"""Galleries given as webdataset tar or parquet shards: read in place, equal to a folder build."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cir.errors import DataError
from cir.images import load_image
from cir.index import GalleryIndex
from cir.index.build import BuildInterrupted
from cir.index.scan import find_images
from cir.models import load_encoder
from cir.testing.shards import write_shards

pytest.importorskip("pyarrow")
OPTS = {"batch_size": 2, "shard_size": 4, "num_workers": 0, "progress": False}


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    return load_encoder(tiny_clip)


@pytest.fixture(scope="module")
def folder_index(sample_photos, encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("folder") / "idx"
    return GalleryIndex.build(sample_photos, encoder, out=out, **OPTS)


def _by_name(idx: GalleryIndex) -> dict[str, torch.Tensor]:
    return {Path(i).stem: idx.embedding(i) for i in idx.ids}


@pytest.mark.parametrize("kind", ["tar", "parquet"])
def test_shard_build_equals_the_folder_build(kind, sample_photos, encoder, folder_index, tmp_path):
    shards = write_shards(sample_photos, tmp_path / "shards", kind=kind, per_shard=5)
    assert len(shards) >= 2
    idx = GalleryIndex.build(tmp_path / "shards", encoder, out=tmp_path / "idx", **OPTS)
    assert len(idx) == len(folder_index)
    assert all(i.startswith("part-0") and f".{kind}/" in i for i in idx.ids)
    mine, theirs = _by_name(idx), _by_name(folder_index)
    assert mine.keys() == theirs.keys()
    for name, row in mine.items():  # same bytes, same decoding: the same rows, bit for bit
        assert torch.equal(row, theirs[name])
    first = idx.ids[0]
    assert load_image(idx.path(first)).size == load_image(idx.path(first)).size
    assert idx.search(idx.embedding(first), k=1)[0].ids == (first,)


def test_a_list_of_shards_and_a_killed_build_resume(sample_photos, encoder, tmp_path):
    shards = write_shards(sample_photos, tmp_path / "s", kind="tar", per_shard=4)
    clean = GalleryIndex.build(shards, encoder, out=tmp_path / "clean", **OPTS)
    with pytest.raises(BuildInterrupted):
        GalleryIndex.build(shards, encoder, out=tmp_path / "idx", interrupt_after_shards=1, **OPTS)
    resumed = GalleryIndex.build(shards, encoder, out=tmp_path / "idx", **OPTS)
    assert resumed.ids == clean.ids
    assert torch.equal(resumed.embeddings, clean.embeddings)


def _jpeg(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, "JPEG")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_hostile_shards_are_reported_and_never_extracted(tmp_path, encoder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "g"
    root.mkdir()
    good = _jpeg("red")
    _tar(
        root / "a.tar",
        [
            ("ok.jpg", good),
            ("../escape.jpg", good),
            ("/abs.jpg", good),
            (".hidden/x.jpg", good),
            ("ok.jpg", _jpeg("blue")),  # the same name twice
            ("broken.jpg", b"not an image"),
        ],
    )
    with tarfile.open(root / "links.tar", "w") as tar:
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    whole = _tar(tmp_path / "whole.tar", [("y.jpg", good)]).read_bytes()
    (root / "b.tar").write_bytes(whole[:700])  # truncated inside the member's data
    (root / "c.tar").write_bytes(b"\x00garbage" * 10)
    pq.write_table(pa.table({"key": ["k"], "caption": ["no image column"]}), root / "d.parquet")
    (root / "e.parquet").write_bytes(b"PAR1 not really")
    idx = GalleryIndex.build(root, encoder, out=tmp_path / "idx", **OPTS)
    assert list(idx.ids) == ["a.tar/ok.jpg"]
    reasons = {Path(s["path"]).name: s["reason"] for s in idx.skipped}
    assert "not allowed" in reasons["escape.jpg"] and "not allowed" in reasons["abs.jpg"]
    assert "hidden" in reasons["x.jpg"]
    assert "duplicate" in next(r for n, r in reasons.items() if n.startswith("ok.jpg#"))
    assert "not an image" in reasons["broken.jpg"] and "link" in reasons["link.jpg"]
    assert "truncated" in reasons["y.jpg"]
    assert "tar" in reasons["c.tar"] and "no image column" in reasons["d.parquet"]
    assert "parquet" in reasons["e.parquet"]
    assert not (tmp_path / "escape.jpg").exists() and not list(root.glob("*.jpg"))
    assert load_image(idx.path("a.tar/ok.jpg")).getpixel((5, 5))[0] > 200  # the first, red


def test_hugging_face_image_structs_and_row_numbers(tmp_path, encoder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cells = [{"bytes": _jpeg("red"), "path": "a.jpg"}, {"bytes": b"", "path": "b.jpg"}]
    pq.write_table(pa.table({"image": cells, "label": [1, 2]}), tmp_path / "train.parquet")
    idx = GalleryIndex.build(tmp_path / "train.parquet", encoder, out=tmp_path / "i", **OPTS)
    assert list(idx.ids) == ["train.parquet/row-00000000.jpg"]
    assert "empty image cell" in idx.skipped[0]["reason"]


def test_member_paths_outside_a_shard_are_plain_missing_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_image(tmp_path / "nothing.tar" / "x.jpg")
    _tar(tmp_path / "a.tar", [("x.jpg", _jpeg("red"))])
    with pytest.raises(DataError, match="no such image in the shard"):
        load_image(tmp_path / "a.tar" / "other.jpg")
    empty = tmp_path / "empty"
    empty.mkdir()
    _tar(empty / "captions.tar", [("x.txt", b"a caption")])
    with pytest.raises(DataError, match="no image in the shards"):
        find_images(empty)


def test_cli_builds_from_shards_and_search_names_the_member(sample_photos, tiny_clip, tmp_path):
    from cir.cli import cli

    write_shards(sample_photos, tmp_path / "shards", kind="parquet", per_shard=6)
    runner = CliRunner()
    built = runner.invoke(
        cli,
        ["index", "build", str(tmp_path / "shards"), "--out", str(tmp_path / "idx"),
         "--model", tiny_clip, "--workers", "0", "--no-progress"],
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    reference = GalleryIndex.load(tmp_path / "idx").ids[3]  # read back from its shard
    found = runner.invoke(
        cli,
        ["search", "--index", str(tmp_path / "idx"), "--reference-id", reference,
         "--text", "in colour", "-k", "2"],
    )  # fmt: skip
    assert found.exit_code == 0, found.output
    assert ".parquet/" in found.output and str(tmp_path / "shards" / "part-0") in found.output


def test_gallery_captions_read_images_from_shards(sample_photos, encoder, tmp_path):
    """The captioner, the content cache and the sidecar work on images inside shards."""
    from cir.gallery_captions import caption_gallery
    from cir.stages.caption import Caption
    from cir.testing.lm import tiny_blip_captioner

    write_shards(sample_photos, tmp_path / "shards", kind="tar", per_shard=8)
    idx = GalleryIndex.build(tmp_path / "shards", encoder, out=tmp_path / "idx", **OPTS)
    captioner = {"backend": "transformers", "model": tiny_blip_captioner(tmp_path / "blip")}
    stage = Caption(captioner=captioner, max_tokens=5)
    summary = caption_gallery(idx, stage, encoder, batch_size=4)
    assert summary["images"] == len(idx)
    captions = idx.sidecar("captions")[1]["captions"]
    assert len(captions) == len(idx) and all(isinstance(c[0], str) for c in captions)
