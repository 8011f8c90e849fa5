"""The OpenAI-compatible backend against hostile servers on 127.0.0.1: slow drips, huge bodies,
echoed keys, garbage and deeply nested JSON, credentials in the base URL.

Every case must end in a :class:`BackendError` (or a correct answer), within a bounded time,
and no credential may appear in any message.
"""

from __future__ import annotations

import json
import time

import pytest

from cir.errors import BackendError
from cir.llm import ChatRequest, load_backend
from cir.redaction import redact
from cir.resources import Resources

from .servers import answer, echo_headers, hostile_server, huge_body, slow_drip

KEY = "zq-not-a-known-shape-7f3a9c21"  # a key no pattern knows: only registration masks it


def _backend(url: str, **options):
    spec = {"backend": "openai", "model": "m", "base_url": url, "backoff": 0.01,
            "max_retries": 0, "api_key_env": None, **options}  # fmt: skip
    return load_backend(spec, resources=Resources())


def _ask(llm, **sampling):
    return llm.generate([ChatRequest.from_prompt("hi", max_tokens=4, **sampling)])


def test_a_slow_drip_cannot_hold_a_request_past_its_timeout():
    with hostile_server(slow_drip(seconds=8, every=0.2)) as server:
        started = time.monotonic()
        with pytest.raises(BackendError, match=r"no answer within 1.0 s"):
            _ask(_backend(server.url, timeout=1.0, max_retries=1))
        assert time.monotonic() - started < 4  # two attempts of 1 s, not 8 s of drip


@pytest.mark.parametrize("declare", [True, False], ids=["declared length", "chunked"])
def test_a_huge_body_is_refused_unread(declare):
    with (
        hostile_server(huge_body(megabytes=40, declare=declare)) as server,
        pytest.raises(BackendError, match="more than 1048576 bytes"),
    ):
        _ask(_backend(server.url, max_response_bytes=2**20, timeout=30))


def _choice(content="ok", **extra):
    return {"index": 0, "message": {"role": "assistant", "content": content}, **extra}


GARBAGE = {
    "not json": (b"{not json", "malformed JSON body"),
    "binary": (b"\x00\xff\xfe\x80", "malformed JSON body"),
    "a list": (b"[1, 2, 3]", "without 'choices'"),
    "choices not a list": ({"choices": "many"}, "without 'choices'"),
    "a number among choices": ({"choices": [_choice(), 5]}, "choice 1 is not an object"),
    "message not an object": ({"choices": [{"message": "hi"}]}, "choice 0 is not an object"),
    "content a number": ({"choices": [_choice(content=5)]}, "non-text content"),
    "index a string": ({"choices": [_choice(index="first")]}, "non-integer index"),
    "usage a string": ({"choices": [_choice()], "usage": "lots"}, "'usage' is not an object"),
    "usage tokens text": (
        {"choices": [_choice()], "usage": {"prompt_tokens": "ten"}},
        "usage.prompt_tokens",
    ),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "deep inside choices": (
        b'{"choices": [' + b"{" * 50_000 + b"}" * 50_000 + b"]}",
        "malformed",
    ),
}


@pytest.mark.parametrize(("body", "message"), GARBAGE.values(), ids=GARBAGE.keys())
def test_malformed_answers_are_clear_errors(body, message):
    with (
        hostile_server(answer(body)) as server,
        pytest.raises(BackendError, match="failed after 1 attempts") as err,
    ):
        _ask(_backend(server.url))
    assert message in str(err.value)


def test_malformed_logprobs_are_a_clear_error():
    bad = {"choices": [_choice(logprobs={"content": [{"top_logprobs": [{"tok": 1}]}]})]}
    with (
        hostile_server(answer(bad)) as server,
        pytest.raises(BackendError, match="logprobs in an unknown shape"),
    ):
        _ask(_backend(server.url), logprobs=2)


@pytest.mark.parametrize("status", [401, 404, 500])
def test_a_server_echoing_the_key_never_shows_it(status, monkeypatch):
    monkeypatch.setenv("SOME_NAME", KEY)
    with hostile_server(echo_headers(status)) as server, pytest.raises(BackendError) as err:
        _ask(_backend(server.url, api_key_env="SOME_NAME"))
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"  # it was sent
    assert KEY not in str(err.value) and "Bearer ***" in str(err.value)


def test_credentials_in_the_base_url_are_used_but_never_shown():
    with hostile_server(echo_headers(500)) as server:
        port_url = server.url.replace("http://", "http://alice:pw-0123456789@")
        url = port_url + "?api-key=q-0123456789secret"
        with pytest.raises(BackendError) as err:
            _ask(_backend(url))
    request = server.requests[0]
    assert request.line.split()[1] == "/v1/chat/completions?api-key=q-0123456789secret"
    assert request.headers["authorization"].startswith("Basic ")
    message = str(err.value)
    assert "pw-0123456789" not in message and "q-0123456789secret" not in message
    assert "/v1/chat/completions" in message and "alice" not in message


def test_the_demo_redacts_a_key_whatever_its_variable_is_called(monkeypatch):
    from demos.safety import redact_secrets

    monkeypatch.setenv("PLAIN_NAME", KEY)
    with hostile_server(answer({"choices": [_choice()]})) as server:
        _ask(_backend(server.url, api_key_env="PLAIN_NAME"))
    assert KEY not in redact_secrets(f"the backend said: {KEY}")


REDACTED = {
    "bearer header": "Authorization: Bearer abcdef0123456789",
    "openai key": "invalid key sk-proj-AbCdEf0123456789xyz",
    "json field": '{"api_key": "abcdef0123456789"}',
    "query string": "GET https://h.example/v1?key=abcdef0123456789",
    "user info": "https://bob:abcdef0123456789@h.example/v1",
    "hugging face": "token hf_AbCdEfGhIjKlMnOp",
    "github": "ghp_AbCdEfGhIjKlMnOpQrStUvWx",
}


@pytest.mark.parametrize("text", REDACTED.values(), ids=REDACTED.keys())
def test_known_credential_shapes_are_redacted(text):
    assert "0123456789" not in redact(text) and "AbCdEf" not in redact(text)


def test_a_run_manifest_carries_no_credential(tmp_path):
    from cir.bench.manifest import StageTotals, build_manifest, write_manifest
    from cir.pipeline import load_pipeline

    llm = {"backend": "openai", "model": "m", "api_key_env": None,
           "base_url": "http://u:pw-0123456789@127.0.0.1:9/v1?token=t-0123456789"}  # fmt: skip
    spec = tmp_path / "p.yaml"
    spec.write_text(json.dumps({
        "name": "p",
        "stages": [{"stage": "caption", "params": {"captioner": {"backend": "scripted"}}},
                   {"stage": "recompose", "params": {"llm": llm}},
                   {"stage": "encode_text", "params": {"source": "targets"}},
                   {"stage": "retrieve", "params": {"query": "text"}}],
    }))  # fmt: skip
    manifest = build_manifest({"index": {}}, load_pipeline(str(spec)), StageTotals(), [])
    text = write_manifest(tmp_path / "m.json", manifest).read_text()
    assert "0123456789" not in text and "127.0.0.1:9/v1" in text
