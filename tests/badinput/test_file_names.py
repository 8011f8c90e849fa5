"""Any file name the operating system gives can be indexed and found again; what cannot be
indexed (unreadable folders, dangling links, link loops, links to folders) is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from cir.cli import cli
from cir.index import GalleryIndex
from cir.index.ids import printable
from cir.index.scan import find_images

from .conftest import photo, photos

ODD_NAMES = {
    "latin-1 byte": b"caf\xe9.jpg",
    "invalid start bytes": b"\xff\xfe-photo.png",
    "cut multibyte": b"half-\xe2\x82.jpg",
    "newline and quotes": b'line\nbreak "quoted".jpg',
    "emoji": "cat-\N{CAT FACE}.png".encode(),
}


def _odd_gallery(folder: Path) -> Path:
    photos(folder, n=2)
    for n, raw in enumerate(ODD_NAMES.values()):
        photo(Path(os.fsdecode(os.path.join(os.fsencode(folder), raw))), seed=10 + n)
    return folder


@pytest.fixture(scope="module")
def odd_index(tmp_path_factory, encoder):
    folder = tmp_path_factory.mktemp("odd_names")
    gallery = _odd_gallery(folder / "g")
    built = GalleryIndex.build(gallery, encoder, out=folder / "i", num_workers=0, progress=False)
    assert len(built) == 2 + len(ODD_NAMES) and not built.skipped
    return GalleryIndex.load(folder / "i")


@pytest.mark.parametrize("raw", ODD_NAMES.values(), ids=ODD_NAMES.keys())
def test_every_file_name_is_indexed_and_round_trips(odd_index, raw):
    image_id = os.fsdecode(raw)
    assert odd_index.has(image_id) and odd_index.path(image_id).is_file()
    assert odd_index.search(odd_index.embedding(image_id), k=1)[0].ids[0] == image_id


def test_the_cli_builds_and_searches_such_a_folder(tmp_path, tiny_clip):
    gallery = _odd_gallery(tmp_path / "g")
    runner = CliRunner()
    base = ["--workers", "0", "--no-progress"]
    built = runner.invoke(cli, ["index", "build", str(gallery), "--model", tiny_clip,
                                "--out", str(tmp_path / "i"), *base])  # fmt: skip
    assert built.exit_code == 0 and "indexed 7 images" in built.output, built.output
    odd = os.fsdecode(ODD_NAMES["latin-1 byte"])
    args = ["search", "--index", str(tmp_path / "i"), "--reference-id", odd, "--text", "x",
            "--pipeline", "image_only", "--no-cache", "-k", "3"]  # fmt: skip
    found = runner.invoke(cli, args)
    assert found.exit_code == 0, found.output
    assert "caf\\xe9.jpg" in found.output  # shown escaped, never a UnicodeEncodeError
    as_json = json.loads(runner.invoke(cli, [*args, "--json"]).output)
    assert as_json["ranking"]["ids"][0] == odd


def test_printable_escapes_only_what_is_not_text():
    assert printable("café.jpg") == "café.jpg"
    assert printable(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert printable("\ud800x").encode("utf-8")


def test_the_demo_serves_a_gallery_with_undecodable_names(odd_index):
    import httpx

    from demos.app import build_app, launch_app
    from demos.callbacks import DemoCallbacks

    app = build_app(odd_index, pipelines=["image_only"])
    launch_app(app, port=_port(), block=False, quiet=True)
    try:
        assert httpx.get(app.local_url, timeout=10).status_code == 200
        assert httpx.get(app.local_url.rstrip("/") + "/config", timeout=10).status_code == 200
        odd = os.fsdecode(ODD_NAMES["latin-1 byte"])
        tiles = DemoCallbacks(app.cir_engine).search("image_only", None, odd, "")[0]
        assert tiles[0][1].endswith("caf\\xe9.jpg")
    finally:
        app.close()


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reasons(problems) -> dict[str, str]:
    return {Path(p["path"]).name: p["reason"] for p in problems}


def test_links_that_lead_nowhere_are_reported(tmp_path):
    gallery = photos(tmp_path / "g", n=2)
    (gallery / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (gallery / "loop.jpg").symlink_to(gallery / "loop.jpg")
    (gallery / "a.png").symlink_to(gallery / "b.png")
    (gallery / "b.png").symlink_to(gallery / "a.png")
    photos(tmp_path / "elsewhere", n=1)
    (gallery / "more").symlink_to(tmp_path / "elsewhere")
    (gallery / "fine.jpg").symlink_to(gallery / "img000.jpg")
    _, items, problems = find_images(gallery)
    reasons = _reasons(problems)
    assert "dangling" in reasons["gone.jpg"]
    assert "loop" in reasons["loop.jpg"] and "loop" in reasons["a.png"]
    assert "link to a folder" in reasons["more"]
    assert {it.id for it in items} == {"img000.jpg", "img001.png", "fine.jpg"}


def test_links_are_in_the_build_report(tmp_path, encoder):
    gallery = photos(tmp_path / "g", n=2)
    (gallery / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    idx = GalleryIndex.build(gallery, encoder, out=tmp_path / "i", num_workers=0, progress=False)
    assert any("dangling" in s["reason"] for s in idx.skipped)
    on_disk = json.loads((tmp_path / "i" / "skipped.json").read_text())
    assert on_disk == idx.skipped


_SCAN_AS_NOBODY = """
import json, os, sys
from cir.index.scan import find_images
os.setgid(65534)
os.setuid(65534)
print(json.dumps(find_images(sys.argv[1])[2]))
"""


def test_an_unreadable_folder_is_reported(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="cir-unreadable-"))  # not under a private tmp folder
    try:
        os.chmod(base, 0o755)
        gallery = photos(base / "g", n=2)
        photo(gallery / "locked" / "inside.jpg")
        for folder in (gallery, gallery / "locked"):
            os.chmod(folder, 0o755)
        os.chmod(gallery / "locked", 0o000)
        if os.geteuid() == 0:  # root reads everything: scan as an ordinary user
            out = subprocess.run([sys.executable, "-c", _SCAN_AS_NOBODY, str(gallery)],
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
            assert out.returncode == 0, out.stderr
            problems = json.loads(out.stdout)
        else:
            problems = find_images(gallery)[2]
        assert "cannot be read" in _reasons(problems)["locked"]
    finally:
        os.chmod(base / "g" / "locked", 0o755)
        import shutil

        shutil.rmtree(base)
