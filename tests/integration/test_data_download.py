"""``cir data download`` end to end against a local HTTP server that serves the same layout as
the public sources: a mirror of their URLs and a Hugging Face hub folder. Every shipped source
of every dataset is fetched; then a bad hash, an interrupted download and a missing image."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from cir.bench.datasets import get_dataset
from cir.bench.download import download, shipped_sources
from cir.bench.download.images import needed_images
from cir.bench.download.sources import Source
from cir.bench.placeholders import placeholder_image
from cir.cli import cli
from cir.errors import DataError
from cir.testing.file_server import file_server

SOURCES = [(d, n) for d, by_name in shipped_sources().items() for n in by_name]
IMAGE_HOST = "img.cir-test.invalid"


def _png(name: str) -> bytes:
    buffer = io.BytesIO()
    placeholder_image(name, 16).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Mirror:
    """The served folders for one source, built from the committed fixtures, and the source
    re-pinned to the served content (a source file of the shape users can write)."""

    def __init__(self, source: Source, fixtures: Path, root: Path, drop: int = 1) -> None:
        self.source, self.fixtures = source, fixtures / source.dataset
        self.mirror, self.hub = root / "mirror", root / "hub"
        self.images = needed_images(source.dataset, self.fixtures)
        self.dropped = sorted(self.images)[:drop]  # absent from every image source
        self.served: dict[str, Path] = {}
        items = tuple(self._serve(item) for item in source.items)
        self.pinned = replace(source, items=items)

    def served_path(self, item) -> Path:
        if item.path is not None:
            return self.hub / "datasets" / self.source.hub["repo"] / item.path
        parts = urlsplit(item.url)
        return self.mirror / parts.netloc / parts.path.lstrip("/")

    def url_path(self, item) -> str:
        if item.path is not None:
            rev = self.source.hub.get("revision", "main")
            return f"/datasets/{self.source.hub['repo']}/resolve/{rev}/{item.path}"
        parts = urlsplit(item.url)
        return f"/{parts.netloc}{parts.path}"

    def _serve(self, item):
        data = self._content(item)
        path = self.served_path(item)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.served[item.to or item.file_name] = path
        pin = hashlib.sha256(data).hexdigest()
        return replace(item, sha256=pin)  # every item pinned: a bad hash is always caught

    def _content(self, item) -> bytes:
        if item.kind == "file":
            return (self.fixtures / item.to).read_bytes()
        if item.kind == "archive":
            return _zip({m: (self.fixtures / to).read_bytes() for m, to in item.extract.items()})
        keep = {n: p for n, p in self.images.items() if n not in self.dropped}
        if item.kind == "image_archive":  # nested deeper than the official tree
            members = {f"deep/er/{p.name}": _png(n) for n, p in keep.items()}
            return _tar_gz(members) if item.file_name.endswith(".tar.gz") else _zip(members)
        category = item.file_name.split(".")[1]  # asin2url.<category>.txt
        names = get_dataset("fashioniq", self.fixtures, categories=[category])
        wanted = {p.stem for p in names.image_files("val")} | {
            p.stem for p in names.image_files("test")
        }
        lines = []
        for name in sorted(wanted):
            lines.append(f"{name}\thttp://{IMAGE_HOST}/I/{name}.jpg")
            if name not in self.dropped:  # a dropped image: its URL is dead (404)
                target = self.mirror / IMAGE_HOST / "I" / f"{name}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(_png(name))
        return ("\n".join(lines) + "\n").encode()


def _fetch(mirror: Mirror, server, to: Path, **options):
    return download(mirror.source.dataset, to, mirror.pinned, mirror=server.url,
                    hub_endpoint=server.url, progress=False, **options)  # fmt: skip


def _has_images(source: Source) -> bool:
    return any(i.kind in ("image_archive", "image_urls") for i in source.items)


@pytest.mark.parametrize(("dataset", "name"), SOURCES)
def test_download_lays_out_the_official_tree(dataset, name, fixtures_root, tmp_path) -> None:
    mirror = Mirror(shipped_sources()[dataset][name], fixtures_root, tmp_path / "served")
    to = tmp_path / dataset
    with file_server(mirror.mirror, mirror.hub) as server:
        report = _fetch(mirror, server, to)
        for key in [i.to for i in mirror.source.items if i.to] + [
            t for i in mirror.source.items for t in i.extract.values()
        ]:
            assert (to / key).read_bytes() == (mirror.fixtures / key).read_bytes(), key
        assert report.images_needed == len(mirror.images) > 0
        if not _has_images(mirror.source):  # CIRR: NLVR2 images are requested by hand
            assert report.images_missing == len(mirror.images) and "NLVR2" in report.manual
            folder = tmp_path / "nlvr2" / "dev" / "7"  # any layout, found by name
            folder.mkdir(parents=True)
            for n in (n for n in mirror.images if n not in mirror.dropped):
                (folder / f"{n}.png").write_bytes(_png(n))
            report = _fetch(mirror, server, to, images_from=tmp_path / "nlvr2")
        assert sorted(report.missing) == mirror.dropped
        assert report.images_placed == len(mirror.images) - 1
        if dataset != "genecis":  # the layout cir data check and cir bench run read
            ds = get_dataset(dataset, to)
            missing = {p.stem for s in ds.splits for p in ds.image_files(s) if not p.is_file()}
            assert missing == set(mirror.dropped)
        else:
            assert (to / "val2017" / f"{sorted(mirror.images)[-1]}.jpg").is_file()
        before = len(server.requests)
        again = _fetch(mirror, server, to)  # a second run fetches nothing it has
        fetched = [r for r in server.requests[before:] if r[0] == "GET"]
        assert again.files_fetched == [] and again.images_placed == 0
        assert all(not p.endswith(".json") for _, p, _ in fetched), fetched
    record = json.loads((to / ".cir-download.json").read_text())
    assert record["last"]["images_missing"] == 1 and record["files"]
    assert not list((to / ".cir-download").rglob("*.part"))
    assert not any(p.suffix in (".zip", ".gz") for p in (to / ".cir-download").rglob("*"))


@pytest.mark.parametrize(("dataset", "name"), SOURCES)
def test_a_bad_hash_is_refused_and_nothing_is_kept(dataset, name, fixtures_root, tmp_path):
    mirror = Mirror(shipped_sources()[dataset][name], fixtures_root, tmp_path / "served")
    first = mirror.pinned.items[0]
    served = mirror.served_path(first)
    served.write_bytes(served.read_bytes().replace(b"]", b", 1]", 1))  # tampered on the way
    to = tmp_path / dataset
    with file_server(mirror.mirror, mirror.hub) as server, pytest.raises(DataError) as err:
        _fetch(mirror, server, to)
    assert "sha256 mismatch" in str(err.value) and first.sha256 in str(err.value)
    assert not (to / first.to).exists()
    assert not [p for p in (to / ".cir-download").rglob("*") if p.is_file() and
                p.read_bytes() == served.read_bytes()]  # fmt: skip


@pytest.mark.parametrize(("dataset", "name"), SOURCES)
def test_an_interrupted_download_resumes(dataset, name, fixtures_root, tmp_path) -> None:
    mirror = Mirror(shipped_sources()[dataset][name], fixtures_root, tmp_path / "served")
    first = mirror.pinned.items[0]
    path = mirror.url_path(first)
    size = mirror.served_path(first).stat().st_size
    to = tmp_path / dataset
    with file_server(mirror.mirror, mirror.hub) as server:
        server.cut_once.add(path)
        if first.url is not None:  # plain HTTP: give up at once, then resume on the next run
            with pytest.raises(DataError, match="run the same command again to resume"):
                _fetch(mirror, server, to, retries=0)
            [part] = (to / ".cir-download").rglob("*.part")
            assert 0 < part.stat().st_size < size
        report = _fetch(mirror, server, to)
        gets = [r for r in server.requests if r[:2] == ("GET", path)]
        if first.url is not None:  # the next run asked only for the rest
            assert [r[2] for r in gets] == [None, f"bytes={size // 2}-"]
        else:  # huggingface_hub retries in the same call (by range past its 10 MB chunks)
            assert len(gets) == 2
    assert (to / first.to).read_bytes() == (mirror.fixtures / first.to).read_bytes()
    assert first.to in report.files_fetched


def test_cli_download_with_a_source_file(fixtures_root, tmp_path) -> None:
    mirror = Mirror(shipped_sources()["fashioniq"]["official"], fixtures_root, tmp_path / "s")
    src = mirror.pinned.to_yaml(tmp_path / "my-mirror.yaml")
    to = tmp_path / "fiq"
    # a URL that answers with something that is not an image is refused, not kept
    junk = sorted(mirror.images)[1]
    (mirror.mirror / IMAGE_HOST / "I" / f"{junk}.jpg").write_text("<html>gone</html>")
    with file_server(mirror.mirror, mirror.hub) as server:
        args = ["data", "download", "fashioniq", "--to", str(to), "--source", str(src),
                "--mirror", server.url, "--workers", "2"]  # fmt: skip
        res = CliRunner().invoke(cli, [*args, "--json"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert out["images_missing"] == 2 and "not a readable image" in out["missing"][junk]
        assert "404" in out["missing"][mirror.dropped[0]]
        assert not list((to / "images").glob(f"{junk}.*"))
        text = CliRunner().invoke(cli, args)
        assert text.exit_code == 0 and "missing images: 2" in text.output
        assert "--allow-missing" in text.output and "CDLA" in text.output
    check = CliRunner().invoke(cli, ["data", "check", "fashioniq", "--data-root", str(to)])
    assert check.exit_code == 1 and "first missing file" in check.output


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["data", "download", "cirr", "--to", str(tmp_path / "x"),
                              "--source", "kaggle"])  # fmt: skip
    assert res.exit_code == 1 and "valid: official, hub" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("items: [{kind: file, url: 'file:///etc/passwd', to: x.json}]")
    res = runner.invoke(cli, ["data", "download", "cirr", "--to", str(tmp_path / "y"),
                              "--source", str(bad)])  # fmt: skip
    assert res.exit_code == 1 and "only http(s) URLs" in res.output
    assert "Traceback" not in res.output
    escape = tmp_path / "escape.yaml"
    escape.write_text("items: [{kind: file, url: 'https://x.invalid/a', to: ../../a.json}]")
    res = runner.invoke(cli, ["data", "download", "cirr", "--to", str(tmp_path / "z"),
                              "--source", str(escape)])  # fmt: skip
    assert res.exit_code == 1 and "stay inside --to" in res.output


def test_a_foreign_file_is_never_overwritten(fixtures_root, tmp_path) -> None:
    mirror = Mirror(shipped_sources()["circo"]["official"], fixtures_root, tmp_path / "s")
    to = tmp_path / "circo"
    mine = to / "annotations" / "val.json"
    mine.parent.mkdir(parents=True)
    mine.write_text("[]  my own notes")
    with file_server(mirror.mirror, mirror.hub) as server, pytest.raises(DataError) as err:
        _fetch(mirror, server, to)
    assert "does not overwrite" in str(err.value)
    assert mine.read_text() == "[]  my own notes"


def test_a_malformed_genecis_file_is_a_clear_error(tmp_path: Path) -> None:
    from cir.bench.download.images import needed_images

    (tmp_path / "change_object.json").write_text('[{"reference": {"image_id": 3}}]')
    with pytest.raises(DataError, match="not a GeneCIS object-task file"):
        needed_images("genecis", tmp_path)
