"""Saving and loading an index: round trip, memory mapping, atomicity, damaged folders."""

from __future__ import annotations

import json

import pytest
import torch

from cir.errors import DataError
from cir.index import GalleryIndex, store


def _index(n: int = 40, d: int = 16, dtype: str = "fp16") -> GalleryIndex:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    return GalleryIndex.from_embeddings([f"id{i}" for i in range(n)], x, dtype=dtype)


def _encoder():
    from cir.models import EncoderIdentity

    return EncoderIdentity("open_clip", "ViT-B-32", "openai", "ViT-B-32/openai", "targetpad", 16)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_round_trip_keeps_everything(tmp_path, dtype):
    idx = GalleryIndex.from_embeddings(
        ["a/x.jpg", "b.jpg", "c.png"],
        torch.randn(3, 16),
        encoder=_encoder(),
        paths=["/g/a/x.jpg", "/g/b.jpg", "/g/c.png"],
        dtype=dtype,
    )
    idx.set_sidecar("caps", torch.randn(3, 2, 16), {"model": "blip"}, {"text": [["p", "q"]] * 3})
    idx.skipped = [{"path": "/g/bad.jpg", "reason": "truncated"}]
    idx.save(tmp_path / "i")
    back = GalleryIndex.load(tmp_path / "i")
    assert back.ids == idx.ids and back.dtype == dtype and back.dim == 16
    assert torch.equal(back.embeddings, idx.embeddings)
    assert back.encoder == _encoder() and back.encoder.preprocessing == "targetpad"
    assert back.path("a/x.jpg") == idx.path("a/x.jpg")
    t, meta = back.sidecar("caps")
    assert torch.equal(t, idx.sidecar("caps")[0]) and meta == {
        "model": "blip",
        "text": [["p", "q"]] * 3,
    }
    assert back.skipped == idx.skipped
    q = torch.randn(2, 16)
    assert back.search(q, k=3) == idx.search(q, k=3)


def test_manifest_describes_the_index(tmp_path):
    idx = GalleryIndex.from_embeddings(["a", "b"], torch.randn(2, 8), encoder=_encoder())
    idx.save(tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["format"] == "cir-gallery-index" and m["format_version"] == 1
    assert (m["count"], m["dim"], m["dtype"]) == (2, 8, "fp16")
    assert m["encoder"]["model"] == "ViT-B-32" and m["preprocessing"] == "targetpad"
    assert m["created"]["cir_version"] and m["created"]["time"].endswith("Z")
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob(".*tmp*"))


def test_load_is_memory_mapped_and_can_be_copied(tmp_path):
    _index().save(tmp_path)
    mapped = GalleryIndex.load(tmp_path)
    copied = GalleryIndex.load(tmp_path, mmap=False)
    assert torch.equal(mapped.embeddings, copied.embeddings)
    path = next(tmp_path.glob("embeddings.*.safetensors"))
    # a mapped tensor's storage is backed by the file: its size covers the whole file
    assert mapped.embeddings.untyped_storage().nbytes() >= path.stat().st_size - 4096
    assert copied.embeddings.untyped_storage().nbytes() == 40 * 16 * 2


def test_folder_without_manifest_refuses_to_load(tmp_path):
    _index().save(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"not a complete gallery index.*resume"):
        GalleryIndex.load(tmp_path)


def test_crash_before_manifest_keeps_the_previous_index(tmp_path, monkeypatch):
    first = _index(n=10)
    first.save(tmp_path)
    real = store.write_json

    def crash_on_manifest(path, value):
        if path.name == "manifest.json":
            raise KeyboardInterrupt("killed")
        real(path, value)

    monkeypatch.setattr(store, "write_json", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        _index(n=25).save(tmp_path)
    monkeypatch.undo()
    back = GalleryIndex.load(tmp_path)
    assert len(back) == 10 and torch.equal(back.embeddings, first.embeddings)
    _index(n=25).save(tmp_path)  # the next save cleans the orphaned generation
    assert len(list(tmp_path.glob("embeddings.*"))) == 1
    assert len(GalleryIndex.load(tmp_path)) == 25


def test_truncated_embeddings_file_is_reported(tmp_path):
    _index().save(tmp_path)
    path = next(tmp_path.glob("embeddings.*.safetensors"))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="damaged"):
        GalleryIndex.load(tmp_path)


def test_missing_or_foreign_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        GalleryIndex.load(tmp_path / "nothing")
    with pytest.raises(DataError, match="empty"):
        GalleryIndex.load(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="not a cir gallery index"):
        GalleryIndex.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(DataError, match="not valid JSON"):
        GalleryIndex.load(tmp_path)


def test_newer_format_is_refused(tmp_path):
    _index().save(tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="newer"):
        GalleryIndex.load(tmp_path)


def test_saving_a_loaded_index_back_into_its_folder(tmp_path):
    _index().save(tmp_path)
    idx = GalleryIndex.load(tmp_path)
    idx.add(["new"], torch.randn(1, 16))
    idx.save(tmp_path)
    assert GalleryIndex.load(tmp_path).ids[-1] == "new"
