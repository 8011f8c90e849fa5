"""Which images a benchmark needs, and putting them at their official paths: from an archive
(found by file name wherever they sit in it), from per-image URLs, or from a local folder.

Names come from the annotation files (treated as untrusted: a name that is not a plain file
name is refused) and every write goes to the official path cir computed, never to a path
taken from an archive or a list.

Example:
    >>> needed = needed_images("cirr", Path("data/cirr"))   # name → official path
    >>> todo = absent(needed, "cirr")
    >>> placed = place_from_archive(Path("images.tar.gz"), todo, "cirr")
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from PIL import Image
from tqdm.auto import tqdm

from cir.bench.datasets.base import images_by_stem
from cir.bench.datasets.fashioniq import IMAGE_EXTENSIONS
from cir.errors import DataError

#: The largest image file accepted from an archive, a URL or a folder.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
#: The largest annotation file taken out of an archive.
MAX_MEMBER_BYTES = 1024 * 1024 * 1024
GENECIS_TASKS = ("change_object", "focus_object")


def needed_images(dataset: str, root: Path) -> dict[str, Path]:
    """Image name (file stem) → official path, for every split whose annotations are present."""
    if dataset == "genecis":
        return _genecis_images(root)
    from cir.bench.datasets import get_dataset

    ds = get_dataset(dataset, root)
    found: dict[str, Path] = {}
    for split in ds.splits:
        if all(p.is_file() for p in ds.annotation_files(split)):
            found.update({p.stem: p for p in ds.image_files(split)})
    return {name: path for name, path in found.items() if _plain(name)}


def _genecis_images(root: Path) -> dict[str, Path]:
    found = {}
    for task in GENECIS_TASKS:
        path = root / f"{task}.json"
        if not path.is_file():
            continue
        try:
            for template in json.loads(path.read_text(encoding="utf-8")):
                for entry in [template["reference"], template["target"], *template["gallery"]]:
                    name = f"{int(entry['val_image_id']):012d}"
                    found[name] = root / "val2017" / f"{name}.jpg"
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{path} is not a GeneCIS object-task file: every template needs reference, "
                f"target and gallery entries with an integer val_image_id ({exc!r})"
            ) from None
    return found


def _plain(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def absent(needed: dict[str, Path], dataset: str) -> dict[str, Path]:
    """The needed images that are not on disk (FashionIQ accepts any image extension)."""
    if dataset == "fashioniq" and needed:
        folder = next(iter(needed.values())).parent
        present = images_by_stem(folder, IMAGE_EXTENSIONS)
        return {n: p for n, p in needed.items() if n not in present}
    return {n: p for n, p in needed.items() if not p.is_file()}


def destination(path: Path, source_name: str, dataset: str) -> Path:
    """Where an image found as ``source_name`` goes: its official path (FashionIQ keeps the
    source's extension, since its reader accepts several)."""
    suffix = Path(source_name).suffix.lower().lstrip(".")
    if dataset == "fashioniq" and suffix in IMAGE_EXTENSIONS:
        return path.with_suffix(f".{suffix}")
    return path


def write_image(stream: IO[bytes], dest: Path, limit: int = MAX_IMAGE_BYTES) -> None:
    """Copy at most ``limit`` bytes from ``stream`` to ``dest`` atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with tmp.open("wb") as out:
        copied = 0
        while chunk := stream.read(1 << 16):
            copied += len(chunk)
            if copied > limit:
                out.close()
                tmp.unlink()
                raise DataError(f"{dest.name}: larger than {limit >> 20} MB")
            out.write(chunk)
    os.replace(tmp, dest)


def place_from_archive(archive: Path, todo: dict[str, Path], dataset: str,
                       progress: bool = True, label: str = "") -> set[str]:  # fmt: skip
    """Extract the ``todo`` images found (by file stem) in a zip or tar archive; returns the
    names placed. Members are streamed, so a tar.gz is read once from start to end."""
    placed: set[str] = set()
    desc = label or archive.name
    with tqdm(total=len(todo), unit="img", desc=desc, disable=not progress) as bar:
        for name, open_member in _members(archive):
            stem = Path(name).stem
            if stem in todo and stem not in placed:
                with open_member() as stream:
                    write_image(stream, destination(todo[stem], name, dataset))
                placed.add(stem)
                bar.update(1)
    return placed


def _members(
    archive: Path, limit: int = MAX_IMAGE_BYTES
) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """(member name, opener) for every regular file of at most ``limit`` bytes of a zip or
    tar archive."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and info.file_size <= limit:
                        yield info.filename, lambda info=info: zf.open(info)
            return
        with tarfile.open(archive, mode="r|*") as tf:
            for member in tf:
                if member.isfile() and member.size <= limit:
                    yield member.name, lambda member=member: tf.extractfile(member)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive} is not a readable zip or tar archive ({exc})") from None


def extract_members(archive: Path, wanted: dict[str, Path]) -> set[str]:
    """Extract the named members (archive path → destination); returns the names found."""
    found = set()
    for name, open_member in _members(archive, MAX_MEMBER_BYTES):
        if name in wanted:
            with open_member() as stream:
                write_image(stream, wanted[name], MAX_MEMBER_BYTES)
            found.add(name)
    return found


def read_url_list(path: Path) -> dict[str, str]:
    """``<name><TAB><url>`` lines (FashionIQ's asin2url files) as name → url."""
    urls = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        name, _, url = line.strip().partition("\t")
        if url.strip().startswith(("http://", "https://")) and _plain(name.strip()):
            urls[name.strip()] = url.strip()
    return urls


def fetch_from_urls(urls: dict[str, str], todo: dict[str, Path], dataset: str,
                    get: Callable[[str, Path], Path], workers: int = 8,
                    progress: bool = True) -> tuple[set[str], dict[str, str]]:  # fmt: skip
    """Fetch each ``todo`` image that has a URL with ``get(url, dest)``; an answer that is not
    a readable image is deleted. Returns (names placed, name → why it is missing)."""
    jobs = {n: u for n, u in urls.items() if n in todo}
    placed, failed = set(), {}

    def one(name: str) -> tuple[str, str | None]:
        dest = destination(todo[name], urls[name], dataset)
        try:
            get(urls[name], dest)
            _check_image(dest)
        except DataError as exc:
            dest.unlink(missing_ok=True)
            return name, str(exc).splitlines()[0]
        return name, None

    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(jobs), unit="img", desc="images", disable=not progress) as bar,
    ):
        for name, error in pool.map(one, jobs):
            if error is None:
                placed.add(name)
            else:
                failed[name] = error
            bar.update(1)
    return placed, failed


def _check_image(path: Path) -> None:
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for a file that is not an image
        raise DataError(f"{path.name}: not a readable image ({type(exc).__name__})") from None


def place_from_folder(folder: Path, todo: dict[str, Path], dataset: str,
                      progress: bool = True) -> set[str]:  # fmt: skip
    """Link (or copy, across file systems) the ``todo`` images found by file stem anywhere
    under ``folder``; returns the names placed."""
    if not folder.is_dir():
        raise DataError(f"--images-from {folder}: not a folder")
    placed = set()
    with tqdm(total=len(todo), unit="img", desc=folder.name, disable=not progress) as bar:
        for dirpath, _dirs, files in os.walk(folder):
            for file in files:
                stem = Path(file).stem
                source = Path(dirpath) / file
                if stem not in todo or stem in placed or not source.is_file():
                    continue
                if source.stat().st_size > MAX_IMAGE_BYTES:
                    continue
                _link_or_copy(source, destination(todo[stem], file, dataset))
                placed.add(stem)
                bar.update(1)
    return placed


def _link_or_copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
