"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1 that misbehaves on cue.

The server (stdlib, one thread per connection) answers chat completions by echoing the last user
text, records every request and counts how many are in flight; each test scripts its faults.
All waits are a fraction of a second and every request loop is bounded by ``max_retries``.
"""

import asyncio
import base64
import io
import json
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from cir.errors import BackendError, ConfigError
from cir.llm import ChatRequest, load_backend
from cir.llm.openai_backend import _retry_after
from cir.resources import Resources

SECRET = "sk-test-0123456789abcdef"


def completion(payload, text=None, choices=None):
    """A well-formed chat completion answering ``payload``."""
    user = [m for m in payload["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(user, list):
        user = " ".join(p.get("text", "<image>") for p in user)
    n = payload.get("n", 1) if choices is None else choices
    out = []
    for i in range(n):
        choice = {"index": i, "message": {"role": "assistant", "content": text or f"echo: {user}"}}
        if payload.get("logprobs"):
            top = [{"token": t, "logprob": lp} for t, lp in (("yes", -0.1), ("no", -2.4))]
            choice["logprobs"] = {
                "content": [{"token": "yes", "logprob": -0.1, "top_logprobs": top}]
            }
        out.append(choice)
    return {"choices": out, "usage": {"prompt_tokens": 7, "completion_tokens": 3 * n}}


class FakeServer:
    def __init__(self):
        self.requests = []  # (headers, payload) in arrival order
        self.script = lambda payload, i: (200, {}, completion(payload), 0.0)
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                payload = json.loads(body)
                with server.lock:
                    i = len(server.requests)
                    server.requests.append((dict(self.headers), payload))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, headers, answer, delay = server.script(payload, i)
                    time.sleep(delay)
                    data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = FakeServer()
    yield srv
    srv.close()


def backend(server, **options):
    spec = {"backend": "openai", "model": "tiny", "base_url": server.url, "backoff": 0.01}
    spec.setdefault("api_key_env", None)
    return load_backend({**spec, **options}, resources=Resources())


def ask(llm, *prompts, **sampling):
    return llm.generate([ChatRequest.from_prompt(p, max_tokens=8, **sampling) for p in prompts])


def test_answers_in_request_order_with_usage(server):
    server.script = lambda p, i: (200, {}, completion(p), 0.05 * (i % 3))
    gens = ask(backend(server), *[f"prompt {i}" for i in range(6)])
    assert [g.text for g in gens] == [f"echo: prompt {i}" for i in range(6)]
    assert (gens[0].prompt_tokens, gens[0].completion_tokens) == (7, 3)


def test_payload_carries_sampling_json_mode_and_logprobs(server):
    llm = backend(server)
    req = ChatRequest.from_prompt(
        "q",
        system="be brief",
        max_tokens=5,
        temperature=0.7,
        top_p=0.9,
        seed=11,
        n=2,
        json_mode=True,
        logprobs=2,
    )
    [gen] = llm.generate([req])
    _, payload = server.requests[0]
    assert payload["model"] == "tiny"
    assert payload["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q"},
    ]
    assert (payload["max_tokens"], payload["temperature"], payload["top_p"]) == (5, 0.7, 0.9)
    assert (payload["seed"], payload["n"]) == (11, 2)
    assert payload["response_format"] == {"type": "json_object"}
    assert (payload["logprobs"], payload["top_logprobs"]) == (True, 2)
    assert len(gen.texts) == 2
    assert gen.first_token_logprobs == [{"yes": -0.1, "no": -2.4}] * 2
    [plain] = ask(llm, "q")
    assert "response_format" not in server.requests[1][1]
    assert "logprobs" not in server.requests[1][1] and plain.first_token_logprobs is None


def test_images_go_as_bounded_data_urls(server):
    llm = backend(server, max_image_side=64)
    big = Image.new("RGB", (400, 200), (200, 10, 10))
    ask(llm, "what is it?", images=[big, Image.new("RGB", (30, 20))])
    parts = server.requests[0][1]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[2]["text"] == "what is it?"
    sizes = []
    for part in parts[:2]:
        url = part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        sizes.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size)
    assert sizes == [(64, 32), (30, 20)]


def test_429_then_success_honours_retry_after(server):
    def script(payload, i):
        if i == 0:
            return 429, {"Retry-After": "0.3"}, {"error": "slow down"}, 0.0
        return 200, {}, completion(payload), 0.0

    server.script = script
    llm = backend(server)
    start = time.monotonic()
    [gen] = ask(llm, "hello")
    assert time.monotonic() - start >= 0.3  # backoff alone would wait ~0.01 s
    assert gen.text == "echo: hello"
    assert len(server.requests) == 2
    assert llm.stats == {"attempts": 2, "retries": 1}


def test_repeated_500s_end_in_a_clear_error_after_n_retries(server):
    server.script = lambda p, i: (500, {}, {"error": "engine crashed"}, 0.0)
    llm = backend(server, max_retries=3)
    with pytest.raises(BackendError) as err:
        ask(llm, "hello")
    message = str(err.value)
    assert "failed after 4 attempts" in message
    assert server.url + "/chat/completions" in message
    assert "HTTP 500" in message and "engine crashed" in message
    assert len(server.requests) == 4


def test_timeout_is_retried_then_reported(server):
    server.script = lambda p, i: (200, {}, completion(p), 1.0 if i < 3 else 0.0)
    [gen] = ask(backend(server, timeout=0.2, max_retries=3), "slow")
    assert gen.text == "echo: slow" and len(server.requests) == 4
    server.requests.clear()
    server.script = lambda p, i: (200, {}, completion(p), 1.0)
    with pytest.raises(BackendError, match=r"failed after 2 attempts: no answer within 0.2 s"):
        ask(backend(server, timeout=0.2, max_retries=1), "slow")
    assert len(server.requests) == 2


def test_malformed_json_is_retried_then_reported(server):
    server.script = lambda p, i: (200, {}, b"{not json" if i == 0 else completion(p), 0.0)
    assert ask(backend(server), "x")[0].text == "echo: x"
    server.script = lambda p, i: (200, {}, b"<html>proxy error</html>", 0.0)
    with pytest.raises(BackendError, match=r"malformed JSON body '<html>proxy error</html>'"):
        ask(backend(server, max_retries=2), "x")
    server.script = lambda p, i: (200, {}, {"object": "error"}, 0.0)
    with pytest.raises(BackendError, match="answer without 'choices'"):
        ask(backend(server, max_retries=0), "x")


def test_server_down_is_a_clear_error():
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = {"backend": "openai", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1"}
    llm = load_backend({**spec, "max_retries": 2, "backoff": 0.01}, resources=Resources())
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"cannot connect .*is the server running"):
        ask(llm, "x")
    assert time.monotonic() - start < 5
    assert llm.stats["attempts"] == 3


def test_concurrency_bound_is_respected(server):
    server.script = lambda p, i: (200, {}, completion(p), 0.15)
    gens = ask(backend(server, max_concurrency=3), *[f"p{i}" for i in range(10)])
    assert len(gens) == 10 and len(server.requests) == 10
    assert server.max_in_flight == 3


def test_client_errors_are_not_retried_and_name_the_key_variable(server, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    server.script = lambda p, i: (401, {}, {"error": "bad key"}, 0.0)
    llm = backend(server, api_key_env="MY_LLM_KEY")
    with pytest.raises(BackendError) as err:
        ask(llm, "x")
    assert "HTTP 401" in str(err.value) and "$MY_LLM_KEY" in str(err.value)
    assert SECRET not in str(err.value)
    assert len(server.requests) == 1
    server.script = lambda p, i: (404, {}, {"error": "no such model"}, 0.0)
    with pytest.raises(BackendError, match="model 'tiny' exists"):
        ask(llm, "x")


def test_key_comes_from_the_named_variable_and_stays_secret(server, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    llm = backend(server, api_key_env="MY_LLM_KEY")
    ask(llm, "x")
    assert server.requests[0][0]["Authorization"] == f"Bearer {SECRET}"
    for shown in (llm.identity, repr(llm), repr(llm.options), str(vars(llm))):
        assert SECRET not in shown
    assert llm.identity == f"openai:{server.url}:tiny"
    unauth = backend(server)
    ask(unauth, "x")
    assert "Authorization" not in server.requests[1][0]


def test_missing_key_for_a_remote_url_is_an_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="environment variable OPENAI_API_KEY is not set"):
        load_backend({"backend": "openai", "model": "gpt-4o-mini"}, resources=Resources())
    local = {"backend": "openai", "model": "m", "base_url": "http://localhost:8000/v1"}
    assert (
        load_backend(local, resources=Resources()).identity == "openai:http://localhost:8000/v1:m"
    )


def test_identity_drops_credentials_in_the_url(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    spec = {"backend": "openai", "model": "m", "base_url": "https://user:pw@example.org/v1?key=abc"}
    llm = load_backend(spec, resources=Resources())
    assert llm.identity == "openai:https://example.org/v1:m"


def test_servers_that_ignore_n(server):
    server.script = lambda p, i: (200, {}, completion(p, text=f"s{p['seed']}", choices=1), 0.0)
    with pytest.raises(BackendError, match=r"returned 1 of the n=3 samples.*split_n: true"):
        ask(backend(server), "x", n=3, temperature=1.0)
    server.requests.clear()
    [gen] = ask(backend(server, split_n=True), "x", n=3, temperature=1.0, seed=5)
    assert gen.texts == ["s5", "s6", "s7"]
    assert sorted(p["seed"] for _, p in server.requests) == [5, 6, 7]
    assert all(p["n"] == 1 for _, p in server.requests)


def test_generate_works_inside_a_running_event_loop(server):
    llm = backend(server)

    async def main():
        return ask(llm, "from async code")

    assert asyncio.run(main())[0].text == "echo: from async code"


def test_retry_after_parsing():
    assert _retry_after("2") == 2.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    later = _retry_after(formatdate(time.time() + 30, usegmt=True))
    assert 25 < later <= 31
    assert _retry_after(formatdate(time.time() - 30, usegmt=True)) == 0.0


def test_spec_options_are_checked():
    with pytest.raises(ConfigError, match="base_url must start with http"):
        load_backend({"backend": "openai", "model": "m", "base_url": "localhost:8000"})
    with pytest.raises(ConfigError, match="max_concurrency must be > 0"):
        load_backend({"backend": "openai", "model": "m", "max_concurrency": 0})
