"""``--out`` and index folders: cir never deletes or overwrites what it did not write, refuses
foreign folders, and keeps concurrent writers and readers apart."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from click.testing import CliRunner

from cir.cli import cli
from cir.errors import DataError
from cir.index import GalleryIndex
from cir.index.folder import MARKER, FolderLock

from .conftest import one_line_error, photo, photos, snapshot

pytestmark = pytest.mark.user_data


def build(*args: str):
    base = ["index", "build", "--workers", "0", "--no-progress"]
    return CliRunner().invoke(cli, [*base, *args])


def test_out_equal_to_the_gallery_is_refused_and_nothing_is_deleted(tmp_path, tiny_clip):
    folder = photos(tmp_path / "photos")
    photo(folder / "build" / "img003.jpg", 3)
    photo(folder / "build" / "img004.jpg", 4)
    (folder / "build" / "notes.txt").write_text("my notes")
    before = snapshot(folder)
    result = build(str(folder), "--model", tiny_clip, "--out", str(folder))
    one_line_error(result, "refusing to write an index into", "not empty")
    assert snapshot(folder) == before


def test_out_in_a_project_folder_is_refused_and_nothing_is_deleted(tmp_path, tiny_clip):
    gallery = photos(tmp_path / "g")
    project = tmp_path / "project"
    (project / "build" / "lib").mkdir(parents=True)
    (project / "build" / "lib" / "module.so").write_bytes(b"\x7fELF")
    for name in ("ids.csv", "embeddings.npy", "sidecars.md", "manifest.txt"):
        (project / name).write_text(f"the user's {name}")
    before = snapshot(project)
    one_line_error(build(str(gallery), "--model", tiny_clip, "--out", str(project)), "not empty")
    assert snapshot(project) == before
    assert not (project / ".cir-lock").exists() and not (project / MARKER).exists()


def test_files_added_to_an_index_folder_survive_rebuilds_and_saves(tmp_path, tiny_clip):
    gallery = photos(tmp_path / "g")
    out = tmp_path / "idx"
    assert build(str(gallery), "--model", tiny_clip, "--out", str(out)).exit_code == 0
    mine = {
        "ids.csv": "user ids",
        "embeddings.npy": "user array",
        "sidecars.notes.txt": "user sidecars",
        "build/notes.txt": "user notes in build/",
    }
    for name, text in mine.items():
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text(text)
    assert (
        build(str(gallery), "--model", tiny_clip, "--out", str(out), "--no-resume").exit_code == 0
    )
    idx = GalleryIndex.load(out)
    idx.remove([idx.ids[0]])
    idx.save(out)
    for name, text in mine.items():
        assert (out / name).read_text() == text
    assert len(list(out.glob("embeddings.*.safetensors"))) == 1  # cir's old generations are gone


def test_an_empty_folder_is_claimed_with_a_marker(tmp_path):
    (tmp_path / "idx").mkdir()
    GalleryIndex.from_embeddings(["a", "b"], torch.randn(2, 8)).save(tmp_path / "idx")
    marker = json.loads((tmp_path / "idx" / MARKER).read_text())
    assert marker["format"] == "cir-index-folder" and len(marker["files"]) == 2


def test_an_index_saved_before_markers_is_adopted(tmp_path):
    old = tmp_path / "old"
    GalleryIndex.from_embeddings(["a", "b"], torch.randn(2, 8)).save(old)
    (old / MARKER).unlink()
    (old / "ids.mine.csv").write_text("user file")
    idx = GalleryIndex.load(old)
    idx.save(old)
    assert (old / MARKER).is_file() and (old / "ids.mine.csv").read_text() == "user file"
    assert len(list(old.glob("ids.*.json"))) == 1 and GalleryIndex.load(old).ids == ["a", "b"]


def test_python_save_into_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "report.docx").write_text("the user's report")
    before = snapshot(tmp_path)
    with pytest.raises(DataError, match="not empty"):
        GalleryIndex.from_embeddings(["a"], torch.randn(1, 8)).save(tmp_path)
    assert snapshot(tmp_path) == before


def test_a_damaged_marker_is_an_error(tmp_path):
    GalleryIndex.from_embeddings(["a"], torch.randn(1, 8)).save(tmp_path / "i")
    (tmp_path / "i" / MARKER).write_text("{not json")
    with pytest.raises(DataError, match="damaged"):
        GalleryIndex.from_embeddings(["b"], torch.randn(1, 8)).save(tmp_path / "i")


_SLOW_BUILD = """
import sys, time
from cir.index import GalleryIndex
from cir.models import load_encoder
enc = load_encoder(sys.argv[1])
real = enc.encode_pixels
def slow(batch, normalize=True):
    time.sleep(0.3)
    return real(batch, normalize)
enc.encode_pixels = slow
GalleryIndex.build(sys.argv[2], enc, out=sys.argv[3], batch_size=2, shard_size=2,
                   num_workers=0, progress=False)
print("first build done")
"""


def test_two_builds_into_one_folder_cannot_both_run(tmp_path, tiny_clip):
    gallery = photos(tmp_path / "g", n=10)
    out = tmp_path / "idx"
    first = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_SLOW_BUILD), tiny_clip, str(gallery), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (out / "build" / "shard-00000.json").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = build(str(gallery), "--model", tiny_clip, "--out", str(out))
    one_line_error(second, "another cir process is writing the index")
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0 and "first build done" in stdout, stderr
    assert len(GalleryIndex.load(out)) == 10


def test_a_second_thread_cannot_take_a_held_lock(tmp_path):
    import threading

    errors = []
    with FolderLock(tmp_path / "i"):

        def other():
            try:
                with FolderLock(tmp_path / "i"):
                    pass
            except DataError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert errors and "another cir process" in errors[0]
    with FolderLock(tmp_path / "i"):  # released: free again
        pass


_SAVER = """
import sys, torch
from cir.index import GalleryIndex
small = GalleryIndex.from_embeddings([f"a{i}" for i in range(10)], torch.ones(10, 8))
large = GalleryIndex.from_embeddings([f"b{i}" for i in range(25)], -torch.ones(25, 8))
for n in range(int(sys.argv[2])):
    (small if n % 2 else large).save(sys.argv[1])
"""


def test_loading_while_another_process_saves_never_reports_damage(tmp_path):
    folder = tmp_path / "i"
    GalleryIndex.from_embeddings(["a0"], torch.ones(1, 8)).save(folder)
    saver = subprocess.Popen([sys.executable, "-c", _SAVER, str(folder), "60"])
    loads, sizes = 0, set()
    try:
        while saver.poll() is None:
            idx = GalleryIndex.load(folder)
            sizes.add(len(idx))
            first = idx.embeddings[0].float()
            assert torch.allclose(
                first,
                first.new_full((8,), 8**-0.5 * (1 if idx.ids[0][0] == "a" else -1)),
                atol=1e-3,
            )
            loads += 1
    finally:
        saver.wait(timeout=120)
    assert saver.returncode == 0 and loads > 10 and {10, 25} & sizes
