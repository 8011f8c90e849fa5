"""The demo over real HTTP: a launched Gradio app, hostile paths, host names and API uploads.

Only indexed images ever leave the server, as copies the demo makes; no file of the gallery
folder (hidden or not) is readable by path, other host names are refused, and the public
``/search`` API ranks against the image it is sent.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import quote

import httpx
import pytest
import torch
from click.testing import CliRunner

from cir.cli import cli
from cir.errors import DataError
from cir.index import GalleryIndex

from .conftest import one_line_error, photo, photos

SECRET = "sk-demo-0123456789abcdefSECRET"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = photos(tmp_path_factory.mktemp("demo_gallery") / "photos", n=5)
    (root / ".env").write_text(f"OPENAI_API_KEY={SECRET}\n")
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    photo(root / ".hidden" / "private.jpg", 42)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def served(gallery, encoder, tmp_path_factory):
    """(base URL, index, app) of a demo launched on 127.0.0.1."""
    from demos.app import build_app, launch_app

    index = GalleryIndex.build(
        gallery, encoder, out=tmp_path_factory.mktemp("demo_index") / "i", num_workers=0,
        progress=False,
    )  # fmt: skip
    app = build_app(index, pipelines=["image_only", "clip_fusion"])
    port = _free_port()
    launch_app(app, port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}", index, app
    finally:
        app.close()


def _file_route(base: str, path: str) -> httpx.Response:
    return httpx.get(f"{base}/gradio_api/file={path}", timeout=10)


ROUTES = {
    "hidden .env in the gallery": "{root}/.env",
    "hidden .ssh key": "{root}/.ssh/id_rsa",
    "image in a hidden folder": "{root}/.hidden/private.jpg",
    "non-image in the gallery": "{root}/notes.txt",
    "an indexed image by its path": "{root}/img000.jpg",
    "the gallery folder itself": "{root}",
    "traversal out of the gallery": "{root}/../../../../etc/passwd",
    "encoded traversal": "{root}/%2e%2e/%2e%2e/etc/passwd",
    "system file": "/etc/passwd",
    "home folder file": "~/.bashrc",
}


@pytest.mark.parametrize("path", ROUTES.values(), ids=ROUTES.keys())
def test_no_file_of_the_disk_is_served_by_path(served, gallery, path):
    base, _, _ = served
    response = _file_route(base, path.format(root=gallery))
    assert response.status_code in (403, 404), response.text[:200]
    assert SECRET not in response.text and "PRIVATE KEY" not in response.text


HOSTS = {
    "rebinding name": "evil.example",
    "rebinding name with port": "attacker.test:7860",
    "empty host": "",
    "look-alike": "127.0.0.1.evil.example",
}


@pytest.mark.parametrize("host", HOSTS.values(), ids=HOSTS.keys())
def test_requests_for_other_host_names_are_refused(served, host):
    base, _, _ = served
    response = httpx.get(f"{base}/", headers={"Host": host}, timeout=10)
    assert response.status_code == 400 and "Invalid host" in response.text


def test_this_machines_names_are_answered(served):
    base, _, _ = served
    port = base.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert httpx.get(f"{base}/", headers={"Host": host}, timeout=10).status_code == 200


def _api_search(base, *, image=None, reference_id="", pipeline="image_only"):
    from gradio_client import Client, handle_file

    client = Client(base, verbose=False, download_files=False)
    upload = handle_file(str(image)) if image else None
    return client.predict(
        pipeline, upload, "", 0.5, 0.0, 3, None, False, reference_id, api_name="/search"
    )


def test_the_public_search_api_ranks_against_the_uploaded_image(served, gallery, tmp_path):
    base, _, _ = served
    firsts = []
    for name in ("img001.png", "img002.jpg", "img003.png"):
        upload = tmp_path / f"upload-{name}.png"
        photo(upload, seed=int(name[3:6]))  # the same pixels as the gallery image
        tiles = _api_search(base, image=upload)[0]
        firsts.append(tiles[0]["caption"].split(" · ")[-1])
    assert firsts == ["img001.png", "img002.jpg", "img003.png"]


def test_the_public_search_api_takes_a_gallery_id_or_an_image_not_both(served, tmp_path):
    base, _, _ = served
    tiles, _, *_ = _api_search(base, reference_id="img004.jpg")
    assert tiles[0]["caption"].endswith("img004.jpg")
    both = _api_search(base, image=photo(tmp_path / "u.png", 1), reference_id="img004.jpg")
    assert both[0] == [] and "not both" in both[1]
    unknown = _api_search(base, reference_id="../../etc/passwd")
    assert unknown[0] == [] and "not an image of this gallery" in unknown[1]


def test_result_images_are_served_only_as_the_demos_copies(served, gallery):
    base, _, _ = served
    tiles = _api_search(base, reference_id="img000.jpg")[0]
    url = tiles[0]["image"]["url"]
    assert str(gallery) not in url
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200 and response.content[:4] in (b"\x89PNG", b"RIFF")


def _rooted_index(tmp_path, root: str, ids: list[str]) -> GalleryIndex:
    folder = tmp_path / "foreign"
    GalleryIndex.from_embeddings(ids, torch.randn(len(ids), 8), paths=ids).save(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["root"] = root
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


FOREIGN_ROOTS = {
    "filesystem root": "/",
    "system folder": "/etc",
    "proc": "/proc/self",
    "hidden folder": "/tmp/.x",
}


@pytest.mark.parametrize("root", FOREIGN_ROOTS.values(), ids=FOREIGN_ROOTS.keys())
def test_an_index_claiming_a_system_folder_as_its_root_is_refused(tmp_path, root):
    from demos.app import build_app

    folder = _rooted_index(tmp_path, root, ["etc/passwd.jpg", "etc/shadow.png"])
    with pytest.raises(DataError, match="not a gallery folder"):
        build_app(GalleryIndex.load(folder), pipelines=["image_only"])
    result = CliRunner().invoke(cli, ["demo", "--index", str(folder), "--no-cache"])
    one_line_error(result, "not a gallery folder")


def test_hidden_or_non_image_ids_never_become_tiles(tmp_path, gallery):
    from demos.safety import gallery_tile

    ids = [".hidden/private.jpg", ".env", "notes.txt", "img000.jpg"]
    folder = _rooted_index(tmp_path, str(gallery), ids)
    index = GalleryIndex.load(folder)
    assert [gallery_tile(index, i) is not None for i in ids] == [False, False, False, True]
    assert gallery_tile(index, quote("../img000.jpg")) is None
