"""Image paths written in annotation files, checked before they are joined to a data folder.

Annotation files are treated as untrusted: a path may only lead down from the folder it is
resolved in (no absolute paths, no ``..``), so a reader never points at a file elsewhere.

Example:
    >>> relative_path("icir/query/tintin/tintin_image_query1.jpg")
    PurePosixPath('icir/query/tintin/tintin_image_query1.jpg')
    >>> relative_path("../../etc/passwd")
    Traceback (most recent call last):
    ValueError: ...
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath


def relative_path(text: object) -> PurePosixPath:
    """``text`` as a relative POSIX path (backslashes read as separators, ``./`` dropped).

    Raises:
        ValueError: not text, empty, absolute, or with a ``..`` component.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"an image path must be non-empty text, got {text!r}")
    path = PurePosixPath(text.strip().replace("\\", "/"))
    if path.is_absolute() or PureWindowsPath(text.strip()).drive:
        raise ValueError(f"image paths must be relative, got {text!r}")
    if ".." in path.parts:
        raise ValueError(f"image paths may not contain '..', got {text!r}")
    return PurePosixPath(*[p for p in path.parts if p != "."])


def from_folder(path: PurePosixPath, names: tuple[str, ...]) -> PurePosixPath | None:
    """The tail of ``path`` from its first component named one of ``names`` (None if none is)."""
    for i, part in enumerate(path.parts):
        if part in names:
            return PurePosixPath(*path.parts[i:])
    return None
