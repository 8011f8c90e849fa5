"""A minimal OpenAI-compatible chat endpoint on 127.0.0.1 that always gives the same answer.

For tests, benchmarks and docs that need a real HTTP server behind the ``openai`` backend.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def fixed_answer_server(content: str, delay: float = 0.0) -> Iterator[str]:
    """Serve ``content`` to every chat request after ``delay`` seconds; yields the base URL.

    Example:
        >>> with fixed_answer_server("Target Description: a red car") as url:
        ...     llm = load_backend({"backend": "openai", "model": "m", "base_url": url,
        ...                         "api_key_env": None})
    """
    answer = {
        "choices": [{"index": 0, "message": {"content": content}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }
    body = json.dumps(answer).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
