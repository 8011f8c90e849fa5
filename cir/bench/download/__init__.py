"""``cir data download``: fetch a benchmark's annotations and images into its official layout.

Each benchmark has named sources (``sources.yaml``): the official repositories and servers, and
public mirrors (Hugging Face dataset repositories are fetched through ``huggingface_hub``).
Files are checked against their pinned sha256, partial downloads resume, images are placed at
the paths ``cir data check`` and ``cir bench run`` read, and images that cannot be had are
listed (``cir bench run --allow-missing`` runs without them). Nothing cir did not write is
overwritten; what cir fetched is recorded in ``<to>/.cir-download.json``.

Example:
    >>> report = download("fashioniq", "data/fashioniq")
    >>> report.images_missing            # dead URLs
    3303
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cir._paths import file_sha256
from cir.bench.download.fetch import Fetcher, NotFound, check_sha256
from cir.bench.download.images import (
    absent,
    extract_members,
    fetch_from_urls,
    needed_images,
    place_from_archive,
    place_from_folder,
    read_url_list,
)
from cir.bench.download.sources import DATASETS, Item, Source, get_source, shipped_sources
from cir.errors import DataError

RECORD = ".cir-download.json"
STAGING = ".cir-download"


@dataclass
class DownloadReport:
    """What a download did and what is still missing."""

    dataset: str
    source: str
    root: Path
    files_fetched: list[str] = field(default_factory=list)
    files_kept: list[str] = field(default_factory=list)
    unpinned: list[str] = field(default_factory=list)
    images_needed: int = 0
    images_placed: int = 0
    missing: dict[str, str] = field(default_factory=dict)
    manual: str = ""
    licence: str = ""

    @property
    def images_missing(self) -> int:
        return len(self.missing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "source": self.source, "root": str(self.root),
            "files_fetched": self.files_fetched, "files_kept": self.files_kept,
            "unpinned": self.unpinned, "images_needed": self.images_needed,
            "images_placed": self.images_placed, "images_missing": self.images_missing,
            "missing": dict(sorted(self.missing.items())), "manual": self.manual,
            "licence": self.licence,
        }  # fmt: skip


class _Record:
    """``<to>/.cir-download.json``: the files cir wrote (with their sha256) and what is missing."""

    def __init__(self, root: Path) -> None:
        self.path = root / RECORD
        data = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                data = {}
        self.files: dict[str, dict[str, Any]] = dict(data.get("files") or {})
        self.data = data

    def save(self, report: DownloadReport) -> None:
        data = {"files": self.files, "last": report.to_dict()}
        tmp = self.path.with_name(RECORD + ".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)


def download(
    dataset: str,
    to: str | Path,
    source: str | Source | None = None,
    *,
    mirror: str | None = None,
    hub_endpoint: str | None = None,
    images_from: str | Path | None = None,
    images: bool = True,
    keep_archives: bool = False,
    retries: int = 3,
    workers: int = 8,
    progress: bool = True,
) -> DownloadReport:
    """Fetch ``dataset`` from ``source`` into ``to`` in the official layout.

    Args:
        source: a shipped source name (default ``official``), a source file, or a ``Source``.
        mirror: fetch every http(s) URL as ``<mirror>/<host>/<path>`` (a local copy of the
            public files, e.g. on an offline cluster).
        hub_endpoint: the Hugging Face hub address for hub sources.
        images_from: a folder holding the images in any layout (e.g. NLVR2's download):
            needed images are linked or copied from it, found by file name.
        images: False fetches the annotation files only.
        keep_archives: keep downloaded image archives after extraction.
    """
    src = source if isinstance(source, Source) else get_source(dataset, source)
    root = Path(to)
    root.mkdir(parents=True, exist_ok=True)
    fetcher = Fetcher(root / STAGING, mirror, src.hub, hub_endpoint, retries, progress=progress)
    report = DownloadReport(dataset, src.name, root, manual=src.manual, licence=src.licence)
    record = _Record(root)
    try:
        for item in src.items:
            if item.kind == "file":
                _place_file(item, root, fetcher, record, report)
            elif item.kind == "archive":
                _place_members(item, root, fetcher, record, report, keep_archives)
        if images:
            _place_images(src, root, fetcher, report, images_from, keep_archives, workers)
    finally:
        record.save(report)
    return report


def _place_file(item: Item, root: Path, fetcher: Fetcher, record: _Record, report) -> None:
    dest = root / item.to
    if _usable(dest, item.sha256, record):
        report.files_kept.append(item.to)
        return
    staged = fetcher.fetch(item)
    _install(staged, dest, item, record, report, move=item.url is not None)


def _usable(dest: Path, pinned: str | None, record: _Record) -> bool:
    """True when ``dest`` already holds the right file (its pinned hash, else the hash
    recorded when cir wrote it); raises when it holds another file (never overwritten)."""
    if not dest.is_file():
        return False
    actual = file_sha256(dest)
    known = pinned or (record.files.get(_key(dest, record)) or {}).get("sha256")
    if known is None or actual == known:
        return True
    raise DataError(
        f"{dest} exists and differs from the file cir would fetch (sha256 {actual}, expected "
        f"{known}); cir does not overwrite it: move it away, or choose another --to"
    )


def _key(dest: Path, record: _Record) -> str:
    return str(dest.relative_to(record.path.parent))


def _install(staged: Path, dest: Path, item: Item, record, report, move: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    if move:
        os.replace(staged, tmp)
    else:  # a hub file stays in huggingface_hub's local folder (its resume state)
        shutil.copyfile(staged, tmp)
    os.replace(tmp, dest)
    _remember(dest, item, record, report)


def _remember(dest: Path, item: Item, record: _Record, report: DownloadReport) -> None:
    """Record a file cir wrote; a file from an archive is pinned when the archive is."""
    key = _key(dest, record)
    entry = {"sha256": file_sha256(dest), "from": item.label, "pinned": bool(item.sha256)}
    record.files[key] = entry
    report.files_fetched.append(key)
    if not item.sha256:
        report.unpinned.append(key)


def _place_members(item: Item, root: Path, fetcher, record, report, keep: bool) -> None:
    wanted = {member: root / to for member, to in item.extract.items()}
    if all(_usable(dest, None, record) for dest in wanted.values()):
        report.files_kept += list(item.extract.values())
        return
    archive = fetcher.fetch(item)
    found = extract_members(archive, wanted)
    lost = sorted(set(wanted) - found)
    if lost:
        raise DataError(f"{item.label} does not contain {lost}; choose another --source")
    for dest in wanted.values():
        _remember(dest, item, record, report)
    _drop_archive(archive, keep)


def _drop_archive(archive: Path, keep: bool) -> None:
    """Delete a downloaded archive after use (cir fetched it into its staging folder) unless
    asked to keep it."""
    if not keep:
        archive.unlink(missing_ok=True)


def _place_images(src: Source, root, fetcher: Fetcher, report, images_from, keep, workers):
    needed = needed_images(src.dataset, root)
    todo = absent(needed, src.dataset)
    report.images_needed = len(needed)
    reasons: dict[str, str] = {}
    if images_from is not None and todo:
        placed = place_from_folder(Path(images_from), todo, src.dataset, fetcher.progress)
        todo = _without(todo, placed, report)
    for item in src.items:
        if not todo:
            break
        if item.kind == "image_archive":
            archive = fetcher.fetch(item)
            placed = place_from_archive(archive, todo, src.dataset, fetcher.progress,
                                        item.file_name)  # fmt: skip
            todo = _without(todo, placed, report)
            reasons |= {n: f"not in {item.file_name}" for n in todo}
            _drop_archive(archive, keep)
        elif item.kind == "image_urls":
            urls = read_url_list(fetcher.fetch(item))
            get = _image_getter(fetcher)
            placed, failed = fetch_from_urls(urls, todo, src.dataset, get, workers,
                                             fetcher.progress)  # fmt: skip
            todo = _without(todo, placed, report)
            reasons |= failed
    manual = "needs the manual step of this source" if src.manual else "no source lists it"
    report.missing = {n: reasons.get(n, manual) for n in todo}


def _image_getter(fetcher: Fetcher):
    def get(url: str, dest: Path) -> Path:
        try:
            return fetcher.http(url, dest, retries=1, bar=False)
        except NotFound as exc:
            raise DataError(str(exc)) from None

    return get


def _without(todo: dict[str, Path], placed: set[str], report: DownloadReport) -> dict[str, Path]:
    report.images_placed += len(placed)
    return {n: p for n, p in todo.items() if n not in placed}


__all__ = [
    "DATASETS",
    "DownloadReport",
    "Source",
    "check_sha256",
    "download",
    "get_source",
    "shipped_sources",
]
