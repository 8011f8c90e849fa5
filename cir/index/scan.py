"""Finding the images of a gallery: a folder walked recursively, or a list of paths.

Webdataset ``.tar`` and parquet shards, in the folder or the list, count for the images inside
them (ids ``<shard>/<member>``, see :mod:`cir.index.shards`).

Ids are image paths relative to the gallery folder, in posix form (``shoes/red.jpg``); for a list
of paths the folder is their deepest common parent. Any name the operating system gives is kept
as Python gives it (undecodable bytes become surrogate escapes), so every file can be indexed and
found again. Hidden files and folders are left out on purpose; everything else that cannot be
indexed — folders that cannot be read, dangling links, link loops, links to folders (not
followed), special files — is reported, never silently left out.

Example:
    >>> root, items, problems = find_images("photos")
    >>> items[0].id, problems[:1]
    ('dress.jpg', [{'path': '/photos/old', 'reason': 'folder cannot be read (Permission denied)'}])
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cir.errors import DataError
from cir.images import IMAGE_EXTENSIONS
from cir.index.shards import is_shard, list_shard


@dataclass(frozen=True)
class Item:
    """One image of a gallery: its id, file path, and size and time when it was found.

    An image inside a webdataset or parquet shard has ``path``, ``size`` and ``mtime_ns`` of
    the shard and its ``member`` name (see :mod:`cir.index.shards`).
    """

    id: str
    path: str
    size: int
    mtime_ns: int
    member: str | None = None

    @property
    def location(self) -> str:
        """Where the image is read from: its file, or ``<shard>/<member>``."""
        return self.path if self.member is None else f"{self.path}/{self.member}"


def scan(source: str | Path | Sequence[str | Path]) -> tuple[Path, list[Item]]:
    """The gallery root and its images (sorted by id), from a folder or a list of paths."""
    root, items, _ = find_images(source)
    return root, items


def find_images(
    source: str | Path | Sequence[str | Path],
) -> tuple[Path, list[Item], list[dict[str, str]]]:
    """The gallery root, its images sorted by id, and what could not be looked at (and why).

    Raises:
        DataError: the folder is missing, holds no image file, or the list is empty or has
            duplicates.
    """
    if isinstance(source, str | Path) and is_shard(Path(source)) and Path(source).is_file():
        source = [source]  # one shard file
    if isinstance(source, str | Path):
        root = Path(source).expanduser().resolve()
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise DataError(f"gallery folder {root} {what}; give a folder of images")
        files, problems = _walk(root)
        if not files:
            raise DataError(
                f"no image files under {root} (looked recursively for "
                f"{', '.join(IMAGE_EXTENSIONS)}, and .tar/.parquet shards)"
                f"{_problem_hint(problems)}; "
                "point to the folder that holds the images"
            )
    else:
        files, problems = _listed(source), []
        root = Path(os.path.commonpath([p.parent for p in files]))
    items = _expand(root, files, problems)
    return root, sorted(items, key=lambda it: it.id), problems


def _expand(root: Path, files: list[Path], problems: list[dict[str, str]]) -> list[Item]:
    """Items of image files, and of the image members of shard files."""
    items = []
    for path in files:
        if not is_shard(path):
            items.append(_item(root, path))
            continue
        members, trouble = list_shard(root, path)
        items += members
        problems += trouble
    if not items:
        raise DataError(
            f"no image in the shards under {root}{_problem_hint(problems)}; "
            "give webdataset .tar or parquet shards holding images"
        )
    return items


def _listed(source: Sequence[str | Path]) -> list[Path]:
    files = [Path(p).expanduser().resolve() for p in source]
    if not files:
        raise DataError("the list of image paths is empty; give at least one image")
    dups = sorted(str(p) for p, n in Counter(files).items() if n > 1)
    if dups:
        raise DataError(f"image paths listed twice: {dups[:5]}; give each image once")
    return files


def _walk(root: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """Image files under ``root`` (links to files followed) and the problems met on the way."""
    files: list[Path] = []
    problems: list[dict[str, str]] = []
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            problems.append(_problem(folder, f"folder cannot be read ({exc.strerror})"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            kind, reason = _classify(entry)
            if kind == "folder":
                folders.append(Path(entry.path))
            elif kind == "image":
                files.append(Path(entry.path))
            elif reason:
                problems.append(_problem(Path(entry.path), reason))
    return files, problems


def _classify(entry: os.DirEntry) -> tuple[str, str | None]:
    """("folder" | "image" | "other", why it cannot be indexed, if it is worth saying)."""
    indexable = Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS or is_shard(Path(entry.name))
    try:
        if entry.is_dir(follow_symlinks=False):
            return "folder", None
        info = os.stat(entry.path)  # follows links: a broken or looping one raises
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "other", "symbolic link loop (the link leads back to itself)"
        if exc.errno == errno.ENOENT:
            return "other", "dangling symbolic link (its target does not exist)"
        return "other", f"cannot be looked at ({exc.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return "other", "symbolic link to a folder (not followed; index its target on its own)"
    if not stat.S_ISREG(info.st_mode):
        return "other", "not a regular file" if indexable else None
    return ("image", None) if indexable else ("other", None)


def _problem(path: Path, reason: str) -> dict[str, str]:
    return {"path": str(path), "reason": reason}


def _problem_hint(problems: list[dict[str, str]]) -> str:
    if not problems:
        return ""
    first = problems[0]
    return (
        f"; {len(problems)} path(s) could not be looked at, e.g. {first['path']}: "
        + first["reason"]
    )


def _item(root: Path, path: Path) -> Item:
    try:
        st = path.stat()
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size, mtime = -1, -1
    return Item(path.relative_to(root).as_posix(), str(path), size, mtime)
