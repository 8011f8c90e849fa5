"""Building gallery indexes with the tiny open_clip model: bad files, resume, encoders."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cir.errors import DataError, EncoderMismatchError
from cir.index import GalleryIndex
from cir.index.build import BuildInterrupted

GOOD = 14


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    from cir.models import load_encoder

    return load_encoder(tiny_clip)


class Counting:
    """Delegates to a real encoder and counts the images it encodes."""

    def __init__(self, enc):
        self.enc, self.encoded = enc, 0

    def __getattr__(self, name):
        return getattr(self.enc, name)

    def encode_pixels(self, batch, normalize=True):
        self.encoded += len(batch)
        return self.enc.encode_pixels(batch, normalize)


def _photo(path: Path, seed: int, size=(48, 40), fmt=None) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt)


def _gallery(root: Path, bad: bool = True) -> Path:
    for i in range(GOOD):
        sub = "shoes" if i % 3 == 0 else "bags/red" if i % 3 == 1 else ""
        _photo(root / sub / f"im{i:02d}.{'png' if i % 2 else 'jpg'}", i)
    (root / ".thumbs").mkdir()
    _photo(root / ".thumbs" / "hidden.jpg", 99)
    (root / "notes.txt").write_text("not an image and not an image extension")
    if bad:
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), "red").save(buf, "JPEG")
        (root / "bad_truncated.jpg").write_bytes(buf.getvalue()[:300])
        (root / "bad_zero.jpg").write_bytes(b"")
        (root / "bad_text.png").write_text("hello")
        _photo(root / "bad_huge.png", 7, size=(400, 300))
    return root


def test_folder_build_skips_bad_files_and_matches_the_encoder(tmp_path, encoder):
    root = _gallery(tmp_path / "g")
    idx = GalleryIndex.build(
        root,
        encoder,
        out=tmp_path / "idx",
        batch_size=4,
        num_workers=2,
        max_pixels=100_000,
        progress=False,
    )
    assert len(idx) == GOOD and idx.ids == sorted(idx.ids)
    assert "shoes/im00.jpg" in idx.ids and "bags/red/im01.png" in idx.ids
    assert not any("hidden" in i or i.startswith("bad") for i in idx.ids)
    reasons = {Path(s["path"]).name: s["reason"] for s in idx.skipped}
    assert set(reasons) == {"bad_truncated.jpg", "bad_zero.jpg", "bad_text.png", "bad_huge.png"}
    assert "truncated" in reasons["bad_truncated.jpg"] and "empty" in reasons["bad_zero.jpg"]
    assert "not an image" in reasons["bad_text.png"] and "oversized" in reasons["bad_huge.png"]
    assert idx.encoder == encoder.identity and idx.root == root.resolve()
    assert idx.path("shoes/im00.jpg") == root.resolve() / "shoes" / "im00.jpg"
    expected = encoder.encode_images([Image.open(idx.path(i)).convert("RGB") for i in idx.ids])
    assert torch.allclose(idx.embeddings.float(), expected, atol=2e-3)
    assert not (tmp_path / "idx" / "build").exists()
    again = GalleryIndex.load(tmp_path / "idx")
    assert again.ids == idx.ids and len(again.skipped) == 4
    top = again.search(expected[3:4], k=1, encoder=encoder.identity)[0]
    assert top.ids == (idx.ids[3],)


def test_list_of_paths_uses_ids_relative_to_their_common_folder(tmp_path, encoder):
    root = _gallery(tmp_path / "g", bad=False)
    paths = [root / "shoes" / "im00.jpg", root / "bags" / "red" / "im01.png"]
    idx = GalleryIndex.build(paths, encoder, out=tmp_path / "i", num_workers=0, progress=False)
    assert idx.ids == ["bags/red/im01.png", "shoes/im00.jpg"]
    with pytest.raises(DataError, match="twice"):
        GalleryIndex.build(paths * 2, encoder, out=tmp_path / "j", num_workers=0)


def test_empty_or_unreadable_galleries_are_data_errors(tmp_path, encoder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        GalleryIndex.build(tmp_path / "empty", encoder, out=tmp_path / "o", num_workers=0)
    with pytest.raises(DataError, match="does not exist"):
        GalleryIndex.build(tmp_path / "nope", encoder, out=tmp_path / "o", num_workers=0)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("x")
    with pytest.raises(DataError, match=r"no readable image among the 2 files.*a\.jpg: empty"):
        GalleryIndex.build(bad, encoder, out=tmp_path / "o", num_workers=0, progress=False)


def test_interrupted_build_resumes_without_encoding_twice(tmp_path, encoder):
    root = _gallery(tmp_path / "g")
    clean = GalleryIndex.build(root, encoder, out=tmp_path / "clean", num_workers=0, progress=False)
    first = Counting(encoder)
    opts = dict(batch_size=2, shard_size=2, num_workers=0, progress=False)
    with pytest.raises(BuildInterrupted):
        GalleryIndex.build(root, first, out=tmp_path / "idx", interrupt_after_shards=3, **opts)
    assert 0 < first.encoded < len(clean)  # 3 shards of 2 files, some of them unreadable
    with pytest.raises(DataError, match="interrupted"):
        GalleryIndex.load(tmp_path / "idx")
    second = Counting(encoder)
    idx = GalleryIndex.build(root, second, out=tmp_path / "idx", **opts)
    assert first.encoded + second.encoded == len(clean)
    assert idx.ids == clean.ids
    assert torch.allclose(idx.embeddings.float(), clean.embeddings.float(), atol=2e-3)
    assert sorted(s["path"] for s in idx.skipped) == sorted(s["path"] for s in clean.skipped)


def test_no_resume_starts_over(tmp_path, encoder):
    root = _gallery(tmp_path / "g", bad=False)
    opts = dict(batch_size=2, shard_size=2, num_workers=0, progress=False)
    with pytest.raises(BuildInterrupted):
        GalleryIndex.build(root, encoder, out=tmp_path / "idx", interrupt_after_shards=2, **opts)
    counting = Counting(encoder)
    GalleryIndex.build(root, counting, out=tmp_path / "idx", resume=False, **opts)
    assert counting.encoded == GOOD


def test_resume_with_another_model_is_refused(tmp_path, encoder):
    from cir.models import load_encoder
    from cir.testing.clip import tiny_open_clip

    other = load_encoder(tiny_open_clip(tmp_path / "other", seed=1))
    root = _gallery(tmp_path / "g", bad=False)
    opts = dict(batch_size=2, shard_size=2, num_workers=0, progress=False)
    with pytest.raises(BuildInterrupted):
        GalleryIndex.build(root, encoder, out=tmp_path / "idx", interrupt_after_shards=1, **opts)
    with pytest.raises(DataError, match="unfinished build made with"):
        GalleryIndex.build(root, other, out=tmp_path / "idx", **opts)


def test_queries_from_another_model_are_refused(tmp_path, encoder):
    from cir.models import load_encoder
    from cir.testing.clip import tiny_open_clip

    other = load_encoder(tiny_open_clip(tmp_path / "other", seed=1))
    root = _gallery(tmp_path / "g", bad=False)
    idx = GalleryIndex.build(root, encoder, out=tmp_path / "i", num_workers=0, progress=False)
    q = other.encode_texts(["a red bag"])
    with pytest.raises(EncoderMismatchError, match="built with"):
        idx.search(q, encoder=other.identity)
    assert len(idx.search(q, k=3, encoder=other.identity, allow_mismatch=True)[0]) == 3


_SLOW_BUILD = """
import sys, time
from cir.index import GalleryIndex
from cir.models import load_encoder

enc = load_encoder(sys.argv[1])
real = enc.encode_pixels
def slow(batch, normalize=True):
    time.sleep(0.25)
    return real(batch, normalize)
enc.encode_pixels = slow
GalleryIndex.build(sys.argv[2], enc, out=sys.argv[3], batch_size=2, shard_size=2,
                   num_workers=1, progress=False)
"""


@pytest.mark.slow
def test_killed_build_process_resumes(tmp_path, encoder, tiny_clip):
    root = _gallery(tmp_path / "g", bad=False)
    out = tmp_path / "idx"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_SLOW_BUILD), tiny_clip, str(root), str(out)],
        start_new_session=True,
    )
    deadline = time.time() + 60
    while not (out / "build" / "shard-00001.json").exists():
        assert proc.poll() is None and time.time() < deadline, "build ended before two shards"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    done = len(list((out / "build").glob("shard-*.json"))) * 2
    assert 2 <= done < GOOD
    counting = Counting(encoder)
    idx = GalleryIndex.build(root, counting, out=out, num_workers=0, progress=False)
    assert counting.encoded == GOOD - done
    clean = GalleryIndex.build(root, encoder, out=tmp_path / "clean", num_workers=0, progress=False)
    assert idx.ids == clean.ids
    assert torch.allclose(idx.embeddings.float(), clean.embeddings.float(), atol=2e-3)


def test_changed_file_is_encoded_again_on_resume(tmp_path, encoder):
    root = _gallery(tmp_path / "g", bad=False)
    opts = dict(batch_size=2, shard_size=2, num_workers=0, progress=False)
    with pytest.raises(BuildInterrupted):
        GalleryIndex.build(root, encoder, out=tmp_path / "idx", interrupt_after_shards=1, **opts)
    _photo(root / "bags/red/im01.png", 1234)  # rewrite one image of the first shard
    os.utime(root / "bags/red/im01.png", ns=(1, 1))
    counting = Counting(encoder)
    idx = GalleryIndex.build(root, counting, out=tmp_path / "idx", **opts)
    assert "bags/red/im01.png" in idx.ids[:2]  # it was in the first, complete shard
    assert counting.encoded == GOOD - 1
    fresh = encoder.encode_images([Image.open(root / "bags/red/im01.png")])[0]
    assert torch.allclose(idx.embedding("bags/red/im01.png"), fresh, atol=2e-3)
