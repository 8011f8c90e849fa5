"""Hostile OpenAI-compatible servers on 127.0.0.1 for the bad-input suite.

Each server reads one HTTP request (headers and body) per connection, records it, and hands the
raw socket to a *behaviour*: a function that writes whatever bytes it likes, as slowly as it
likes. Every behaviour is bounded in time and size, and the server stops with its context.

Example:
    >>> with hostile_server(slow_drip(seconds=5)) as server:
    ...     backend = load_backend({"backend": "openai", "base_url": server.url, ...})
"""

from __future__ import annotations

import contextlib
import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

Behaviour = Callable[["Request", "socketserver.StreamRequestHandler"], None]


@dataclass
class Request:
    line: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    url: str
    requests: list[Request] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


@contextmanager
def hostile_server(behaviour: Behaviour, base: str = "/v1") -> Iterator[Server]:
    """A threaded TCP server answering every request with ``behaviour``; yields the Server."""
    state = Server(url="")

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline(65536).decode("latin-1").strip()
            headers = {}
            while (raw := self.rfile.readline(65536)) not in (b"\r\n", b"\n", b""):
                name, _, value = raw.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = self.rfile.read(int(headers.get("content-length", 0) or 0))
            request = Request(line, headers, body)
            state.requests.append(request)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                behaviour(request, self)  # the client may give up, as it should

    class Threaded(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Threaded(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}{base}"
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()


def _head(handler, status: int = 200, length: int | None = None, extra: str = "") -> None:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    handler.wfile.write(
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{size}{extra}"
        "Connection: close\r\n\r\n".encode()
    )
    handler.wfile.flush()


# ---------------------------------------------------------------------- behaviours
def answer(body: bytes | str | dict, status: int = 200) -> Behaviour:
    """A complete answer with this body (a dict is sent as JSON)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    data = data.encode() if isinstance(data, str) else data

    def behave(request: Request, handler) -> None:
        _head(handler, status, len(data))
        handler.wfile.write(data)

    return behave


def slow_drip(seconds: float = 10.0, every: float = 0.2) -> Behaviour:
    """Headers at once, then one byte of a never-ending body every ``every`` seconds."""

    def behave(request: Request, handler) -> None:
        _head(handler, 200, 10_000_000)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(every)

    return behave


def huge_body(megabytes: int, declare: bool) -> Behaviour:
    """A body of ``megabytes`` MB of JSON-looking bytes, its length declared or not."""

    def behave(request: Request, handler) -> None:
        _head(handler, 200, megabytes * 2**20 if declare else None)
        chunk = b'{"choices": [' + b" " * (2**20 - 13)
        for _ in range(megabytes):
            handler.wfile.write(chunk)

    return behave


def echo_headers(status: int) -> Behaviour:
    """An error answer quoting the request's headers and line (a server that leaks the key)."""

    def behave(request: Request, handler) -> None:
        auth = request.headers.get("authorization")
        body = json.dumps({"error": f"bad credentials {auth} for {request.line}"}).encode()
        _head(handler, status, len(body))
        handler.wfile.write(body)

    return behave
