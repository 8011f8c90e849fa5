"""Stop sequences and labelled images reach the real backends: the OpenAI-compatible client
against a real HTTP server on 127.0.0.1, and transformers with a tiny LM and chat VLM."""

from __future__ import annotations

import pytest
from PIL import Image

from cir.llm import ChatMessage, ChatRequest, Sampling, load_backend
from cir.resources import Resources
from tests.integration.test_llm_openai_faults import FakeServer, completion

RED, BLUE = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (30, 40), "blue")


@pytest.fixture
def server():
    srv = FakeServer()
    yield srv
    srv.close()


def _openai(server):
    spec = {"backend": "openai", "model": "tiny", "base_url": server.url, "backoff": 0.01,
            "api_key_env": None}  # fmt: skip
    return load_backend(spec, resources=Resources())


def test_openai_payload_carries_the_stop_sequences(server):
    llm = _openai(server)
    stop = ["\n\n", "<|endoftext|>"]
    llm.generate([ChatRequest.from_prompt("q", max_tokens=5, stop=stop)])
    llm.generate([ChatRequest.from_prompt("q", max_tokens=5)])
    (_, with_stop), (_, without) = server.requests
    assert with_stop["stop"] == stop and "stop" not in without


def test_openai_message_interleaves_labels_and_images(server):
    server.script = lambda payload, i: (200, {}, completion(payload, text="ok"), 0.0)
    message = ChatMessage("user", "", (RED, BLUE), labels=("Pick one.\n\nReference:", "Image 1:"))
    [gen] = _openai(server).generate([ChatRequest((message,))])
    [(_, payload)] = server.requests
    parts = payload["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url"]
    assert [parts[0]["text"], parts[2]["text"]] == ["Pick one.\n\nReference:", "Image 1:"]
    assert gen.text == "ok"


def test_transformers_answer_ends_where_the_stop_sequence_starts(tiny_models):
    llm = load_backend({"backend": "transformers", "model": tiny_models["lm"]}, Resources())
    prompt = "two dogs running on the beach at sunset"
    [free] = llm.generate([ChatRequest.from_prompt(prompt, max_tokens=16)])
    assert len(free.text) > 6
    stop = free.text[3:6]  # a piece of the greedy answer
    [cut] = llm.generate([ChatRequest.from_prompt(prompt, max_tokens=16, stop=[stop])])
    assert cut.text == free.text[: free.text.find(stop)].strip()
    assert stop not in cut.text


def test_transformers_vlm_reads_labelled_images(tiny_models):
    vlm = load_backend({"backend": "transformers", "model": tiny_models["vlm"]}, Resources())
    labelled = ChatMessage("user", "", (RED, BLUE), labels=("Reference:", "Image 1:"))
    request = ChatRequest((labelled,), Sampling(max_tokens=4))
    [gen] = vlm.generate([request])
    assert isinstance(gen.text, str)
    template = vlm._template(request, with_images=True)
    first, second = template.split("Reference:")[1].split("Image 1:")
    assert first.count("<|image_pad|>") == 1 and second.count("<|image_pad|>") == 1
