"""The OpenAI-compatible backend against vLLM's real OpenAI-compatible server on 127.0.0.1.

The server serves the tiny Qwen2-VL (it answers text-only requests too), so images travel as
base64 data URLs and are decoded by the server for real.
"""

import socket
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from cir.llm import ChatRequest, load_backend
from cir.resources import Resources
from cir.testing.lm import VLLM_CPU_ENGINE

pytestmark = pytest.mark.vllm

STARTUP_SECONDS = 600  # engine start is 15-40 s on an idle 2-core machine, minutes under load
RED = Image.new("RGB", (80, 60), (220, 30, 30))
STRIPES = Image.new("RGB", (60, 90), (20, 20, 200))
STRIPES.paste((250, 250, 0), (0, 0, 60, 30))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_args(model: str, port: int) -> list[str]:
    engine = VLLM_CPU_ENGINE
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model, "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", engine["dtype"], "--enforce-eager",
        "--max-model-len", str(engine["max_model_len"]),
        "--kv-cache-memory-bytes", str(engine["kv_cache_memory_bytes"]),
        "--limit-mm-per-prompt", '{"image": 2}',
    ]  # fmt: skip


@pytest.fixture(scope="module")
def server_url(tiny_models, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            _server_args(tiny_models["vlm"], port), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}/health", log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _wait_healthy(proc: subprocess.Popen, url: str, log) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"vLLM server not healthy after {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def llm(server_url):
    spec = {"backend": "openai", "model": "tiny", "base_url": server_url, "api_key_env": None}
    options = {"max_concurrency": 4, "timeout": 120.0, "image_format": "png"}  # png: lossless
    return load_backend({**spec, **options}, Resources())


def test_text_batch_in_order_and_repeatable(llm):
    prompts = ["a red dress", "two dogs running on the beach", "yes", "a black cat"]
    reqs = [ChatRequest.from_prompt(p, max_tokens=6) for p in prompts]
    first = llm.generate(reqs)
    assert [g.texts for g in first] == [llm.generate([r])[0].texts for r in reqs]
    assert len({g.text for g in first}) == len(prompts)
    assert all(g.prompt_tokens > 10 and 0 < g.completion_tokens <= 6 for g in first)


def test_same_answers_as_the_offline_engine(llm, tiny_models, texts_of):
    offline = load_backend({"backend": "transformers", "model": tiny_models["vlm"]}, Resources())
    reqs = [ChatRequest.from_prompt(p, max_tokens=5) for p in ("a red dress", "yes")]
    reqs.append(ChatRequest.from_prompt("what is it?", images=[RED], max_tokens=5))
    assert texts_of(llm.generate(reqs)) == texts_of(offline.generate(reqs))


def test_n_samples_with_a_seed(llm):
    def sample(seed):
        req = ChatRequest.from_prompt(
            "x", n=3, temperature=1.0, top_p=0.95, seed=seed, max_tokens=6
        )
        return llm.generate([req])[0].texts

    first = sample(9)
    assert len(first) == 3 and len(set(first)) > 1
    assert sample(9) == first


def test_images_as_data_urls_and_logprobs(llm):
    red, stripes, without = llm.generate(
        [
            ChatRequest.from_prompt("what is it?", images=[RED], max_tokens=4, logprobs=3),
            ChatRequest.from_prompt("what is it?", images=[STRIPES], max_tokens=4, logprobs=3),
            ChatRequest.from_prompt("what is it?", max_tokens=4, logprobs=3),
        ]
    )
    assert red.prompt_tokens > without.prompt_tokens  # the server turned the image into tokens
    assert red.first_token_logprobs != stripes.first_token_logprobs
    [row] = red.first_token_logprobs
    assert 1 <= len(row) <= 3 and all(v <= 0 for v in row.values())


def test_json_mode_reaches_the_server(llm):
    [gen] = llm.generate([ChatRequest.from_prompt("JSON please", max_tokens=24, json_mode=True)])
    assert gen.text.startswith("{")
