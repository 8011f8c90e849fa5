"""The demo's guards: uploads decoded defensively, only indexed images shown (as copies the demo
makes, never as files of the disk), requests for other host names refused, secrets kept out of
the page and the logs."""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from cir.errors import DataError
from cir.images import IMAGE_EXTENSIONS, load_image
from cir.index.shards import shard_stat, split_member_path
from cir.redaction import redact, redact_value

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
MAX_REFERENCE_SIDE = 1024
TILE_SIDE = 384
_SYSTEM_FOLDERS = tuple(Path(p) for p in ("/etc", "/proc", "/sys", "/dev", "/boot", "/run"))
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


def decode_upload(
    path: str | Path,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_UPLOAD_PIXELS,
    max_side: int = MAX_REFERENCE_SIDE,
) -> Image.Image:
    """Decode an uploaded reference image, refusing anything that is not a plain, sane image.

    The file size is checked before reading, the format and pixel count from the header before
    decoding (so a decompression bomb is never expanded), and the decoded image is shrunk so
    its longer side is at most ``max_side`` (models never need more).

    Raises:
        DataError: too large, not an image, an unsupported format, or corrupt.
    """
    path = Path(path)
    size = path.stat().st_size if path.is_file() else 0
    if size > max_bytes:
        raise DataError(
            f"the uploaded file is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB"
        )
    kind = _format_of(path)
    if kind not in UPLOAD_FORMATS:
        raise DataError(
            f"the upload is {'not an image' if kind is None else f'a {kind} file'}; "
            f"upload one of: {', '.join(UPLOAD_FORMATS)}"
        )
    try:
        image = load_image(path, max_pixels=max_pixels)
    except DataError as exc:
        raise DataError(
            f"the uploaded image cannot be used: {_strip_path(str(exc), path)}"
        ) from None
    image.thumbnail((max_side, max_side))
    return image


def _format_of(path: Path) -> str | None:
    try:
        with Image.open(path) as opened:
            return opened.format
    except Exception:  # any decoder complaint means "not an image we accept"
        return None


def _strip_path(message: str, path: Path) -> str:
    """Server-side temporary paths mean nothing to the person who uploaded the file."""
    return message.replace(f"{path}: ", "").replace(str(path), "the upload")


def gallery_image(index: Any, image_id: str) -> Path | None:
    """The file of gallery image ``image_id`` if it is an image file inside the index's folder.

    The path is resolved (symlinks and ``..`` included) and must stay under ``index.root``; ids
    naming hidden files or folders, or files without an image extension, are never served.
    """
    root = index.root
    if root is None or not isinstance(image_id, str) or not index.has(image_id):
        return None
    path = index.path(image_id)
    if path is None or not _looks_like_an_image(image_id, path):
        return None
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return _shard_image(path, root)
    return resolved if _visible_file(resolved, root) else None


def _shard_image(path: Path, root: Path) -> Path | None:
    """An indexed image inside a shard file under the index's folder (``<shard>/<member>``)."""
    found = split_member_path(path)
    if found is None:
        return None
    shard, member = found
    try:
        resolved = shard.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return resolved / member if _visible_file(resolved, root) else None


def _visible_file(resolved: Path, root: Path) -> bool:
    """A regular file under ``root`` with no hidden part on the way."""
    if not resolved.is_file() or not resolved.is_relative_to(root.resolve()):
        return False
    return not any(part.startswith(".") for part in resolved.relative_to(root.resolve()).parts)


def _looks_like_an_image(image_id: str, path: Path) -> bool:
    hidden = any(part.startswith(".") for part in Path(image_id).parts)
    return not hidden and path.suffix.lower() in IMAGE_EXTENSIONS


def gallery_tile(index: Any, image_id: str, side: int = TILE_SIDE) -> Image.Image | None:
    """A picture of gallery image ``image_id`` made by the demo itself, or None.

    The page never receives a path: only these decoded, shrunk copies of indexed images, so no
    other file (hidden, foreign, not an image) can be read through the demo.
    """
    path = gallery_image(index, image_id)
    if path is None:
        return None
    try:
        stat = path.stat() if path.exists() else shard_stat(path)
        return _tile(str(path), stat.st_mtime_ns, side).copy()
    except (DataError, OSError):
        return None


@functools.lru_cache(maxsize=256)
def _tile(path: str, mtime_ns: int, side: int) -> Image.Image:
    image = load_image(path, min_side=side)
    image.thumbnail((side, side))
    return image


def check_gallery_root(root: Path | None) -> None:
    """Refuse an index whose gallery folder is a system-wide folder (``/``, ``/home``, hidden).

    Raises:
        DataError: the manifest's ``root`` cannot be a gallery folder the demo serves from.
    """
    if root is None:
        return
    resolved = Path(root).resolve()
    home = Path.home().resolve()
    hidden = any(part.startswith(".") for part in resolved.parts)
    system = any(resolved.is_relative_to(folder) for folder in _SYSTEM_FOLDERS)
    if resolved == Path(resolved.anchor) or resolved in home.parents or hidden or system:
        raise DataError(
            f"the index says its images are under {root}, which is not a gallery folder "
            "(a filesystem root, a parent of the home folder, a system or a hidden folder); "
            "the demo serves images only from the folder an index was built from: rebuild "
            "the index from the folder that holds the images"
        )


# ---------------------------------------------------------------------- Host header check
class HostCheck:
    """ASGI middleware answering 400 to requests whose ``Host`` header is not an allowed name.

    A page on another site can make a browser send requests to 127.0.0.1 under its own name
    (DNS rebinding); checking the name keeps such requests out.

    Args:
        app: the ASGI app to protect.
        allowed: host names or addresses; ``*.example.org`` allows every subdomain, ``*`` all.
    """

    def __init__(self, app: Any, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = {a.lower().strip("[]") for a in allowed}

    def allows(self, host: str) -> bool:
        if "*" in self.allowed or host in self.allowed:
            return True
        return any(a.startswith("*.") and host.endswith(a[1:]) for a in self.allowed)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and not self.allows(request_host(scope)):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": b"Invalid host header"})
            return  # fmt: skip
        await self.app(scope, receive, send)


def request_host(scope: dict[str, Any]) -> str:
    """The host name of an ASGI request, without port or IPv6 brackets, lower-cased."""
    raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").strip().lower()
    if raw.startswith("["):
        return raw[1 : raw.find("]")] if "]" in raw else ""
    return raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw


def allowed_hosts(host: str, share: bool = False, extra: Iterable[str] = ()) -> set[str]:
    """The host names a demo bound to ``host`` answers to (this machine's names when public)."""
    names = {"localhost", "127.0.0.1", "::1", *extra}
    if host not in names:
        names.add(host)
    if not (host in ("localhost", "::1") or host.startswith("127.")):
        names.update(_machine_names())
    if share:
        names.add("*.gradio.live")
    return {n for n in names if n and n not in ("0.0.0.0", "::")}


def _machine_names() -> set[str]:
    names = {socket.gethostname(), socket.getfqdn()}
    with contextlib.suppress(OSError):
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return names


# ---------------------------------------------------------------------- secrets
def redact_secrets(text: str) -> str:
    """``text`` with every credential masked (see :func:`cir.redaction.redact`): keys read at
    run time whatever their variable is called, bearer tokens, URL user info and queries, and
    well-known key shapes."""
    return redact(text)


def redact_config(value: Any) -> Any:
    """A copy of a pipeline dict with secret-named parameters masked and every string redacted.

    Parameters naming an environment variable (``api_key_env``) are kept: they hold a name,
    not the secret itself.
    """
    return redact_value(value)
