"""A local HTTP server for download tests: a mirror of public URLs and a Hugging Face hub.

``mirror`` is a folder laid out as ``<host>/<path>`` (what ``Fetcher(mirror=...)`` requests);
``hub`` is a folder laid out as ``datasets/<owner>/<name>/<path in the repository>``, served at
the hub's ``/datasets/<owner>/<name>/resolve/<revision>/<path>`` address with the headers
``huggingface_hub`` reads (commit, ETag = the file's sha256, size). Both answer byte ranges,
so resumed downloads are real. A file named in ``cut_once`` is cut off half way the first time
it is sent, as a dropped connection would.

Example:
    >>> with file_server(mirror=tmp / "mirror", hub=tmp / "hub") as server:
    ...     download("cirr", tmp / "cirr", mirror=server.url)
    >>> server.requests[-1]
    ('GET', '/raw.githubusercontent.com/...', None)
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_HUB = re.compile(r"^/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass
class FileServer:
    """The running server: its base URL, the requests it saw, the files to cut once."""

    url: str
    mirror: Path | None
    hub: Path | None
    cut_once: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)

    def locate(self, url_path: str) -> tuple[Path | None, bool]:
        """The file a request path names (or None) and whether it is a hub request."""
        match = _HUB.match(url_path)
        if match and self.hub is not None:
            return _inside(self.hub / "datasets" / match["repo"], match["path"]), True
        if self.mirror is not None:
            return _inside(self.mirror, url_path.lstrip("/")), False
        return None, False


def _inside(root: Path, relative: str) -> Path | None:
    path = (root / relative).resolve()
    return path if path.is_file() and path.is_relative_to(root.resolve()) else None


@contextmanager
def file_server(mirror: Path | None = None, hub: Path | None = None) -> Iterator[FileServer]:
    """Serve ``mirror`` and ``hub`` folders on 127.0.0.1 until the block ends."""
    state = FileServer("", mirror, hub)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            url_path = unquote(urlsplit(self.path).path)
            with lock:
                state.requests.append((self.command, url_path, self.headers.get("Range")))
            path, is_hub = state.locate(url_path)
            if path is None:
                self._not_found(is_hub or bool(_HUB.match(url_path)))
                return
            data = path.read_bytes()
            start = _range_start(self.headers.get("Range"))
            if start is not None and start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            if is_hub:
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - (start or 0)))
            self.end_headers()
            if body:
                self._send(url_path, data[start or 0 :])

        def _send(self, url_path: str, payload: bytes) -> None:
            with lock:
                cut = url_path in state.cut_once
                state.cut_once.discard(url_path)
            if cut:
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the rest never arrives
                return
            self.wfile.write(payload)

        def _not_found(self, is_hub: bool) -> None:
            self.send_response(404)
            if is_hub:
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _range_start(header: str | None) -> int | None:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(match[1]) if match else None
