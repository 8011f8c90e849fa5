"""The vLLM backend for real: vLLM's CPU build with a tiny Qwen2 LM and a tiny Qwen2-VL."""

import json

import pytest
from PIL import Image

from cir.llm import ChatRequest, load_backend
from cir.resources import Resources
from cir.testing.lm import VLLM_CPU_ENGINE as ENGINE

pytestmark = pytest.mark.vllm

RED = Image.new("RGB", (80, 60), (220, 30, 30))
STRIPES = Image.new("RGB", (60, 90), (20, 20, 200))
STRIPES.paste((250, 250, 0), (0, 0, 60, 30))
PROMPTS = ["a red dress", "two dogs running on the beach at sunset near the water", "yes"]


@pytest.fixture(scope="module")
def resources():
    return Resources()


@pytest.fixture(scope="module")
def lm(tiny_models, resources):
    backend = load_backend({"backend": "vllm", "model": tiny_models["lm"], **ENGINE}, resources)
    yield backend
    backend.shutdown()  # now, while the engine's log output is still captured


@pytest.fixture(scope="module")
def vlm(tiny_models, resources):
    spec = {"backend": "vllm", "model": tiny_models["vlm"], "limit_mm_per_prompt": {"image": 2}}
    backend = load_backend({**spec, **ENGINE}, resources)
    yield backend
    backend.shutdown()


def test_text_batch_equals_one_by_one_and_transformers(lm, tiny_models, texts_of):
    reqs = [ChatRequest.from_prompt(p, max_tokens=6) for p in PROMPTS]
    batched = lm.generate(reqs)
    assert [g.texts for g in batched] == [lm.generate([r])[0].texts for r in reqs]
    assert len({g.text for g in batched}) == 3
    assert all(g.prompt_tokens > 10 and 0 < g.completion_tokens <= 6 for g in batched)
    local = load_backend({"backend": "transformers", "model": tiny_models["lm"]}, Resources())
    assert texts_of(local.generate(reqs)) == texts_of(batched)


def test_n_samples_repeat_for_a_seed(lm):
    def sample(seed):
        req = ChatRequest.from_prompt(
            "describe", n=4, temperature=1.0, top_p=0.95, seed=seed, max_tokens=8
        )
        return lm.generate([req])[0].texts

    first = sample(3)
    assert len(first) == 4 and len(set(first)) > 1
    assert sample(3) == first
    assert sample(4) != first
    [greedy] = lm.generate([ChatRequest.from_prompt("describe", n=3, max_tokens=8)])
    [one] = lm.generate([ChatRequest.from_prompt("describe", max_tokens=8)])
    assert greedy.texts == one.texts * 3


def test_first_token_logprobs(lm):
    [gen] = lm.generate([ChatRequest.from_prompt("a red dress", max_tokens=6, logprobs=3)])
    [row] = gen.first_token_logprobs
    assert 1 <= len(row) <= 3 and all(v <= 0 for v in row.values())
    best = max(row, key=row.get).strip()
    assert gen.text.startswith(best)
    [plain] = lm.generate([ChatRequest.from_prompt("a red dress", max_tokens=6)])
    assert plain.first_token_logprobs is None and plain.texts == gen.texts


def test_json_mode_constrains_the_answer(lm):
    req = ChatRequest.from_prompt("Answer in JSON.", max_tokens=48, json_mode=True)
    [gen] = lm.generate([req])
    assert gen.text.startswith("{")
    [free] = lm.generate([ChatRequest.from_prompt("Answer in JSON.", max_tokens=48)])
    assert not free.text.startswith("{")
    if gen.completion_tokens < 48:  # finished inside the token budget: a complete object
        assert isinstance(json.loads(gen.text), dict)


def test_chat_vlm_reads_images(vlm):
    red, stripes, without = vlm.generate(
        [
            ChatRequest.from_prompt("what is this?", images=[RED], max_tokens=6, logprobs=3),
            ChatRequest.from_prompt("what is this?", images=[STRIPES], max_tokens=6, logprobs=3),
            ChatRequest.from_prompt("what is this?", max_tokens=6),
        ]
    )
    assert red.first_token_logprobs != stripes.first_token_logprobs
    assert red.prompt_tokens > without.prompt_tokens
    two = ChatRequest.from_prompt("compare", images=[RED, STRIPES], max_tokens=4)
    assert vlm.generate([two])[0].prompt_tokens > red.prompt_tokens


def test_specs_naming_the_same_model_share_one_engine(lm, tiny_models, resources):
    raw = load_backend(
        {"backend": "vllm", "model": tiny_models["lm"], "use_chat_template": False, **ENGINE},
        resources,
    )
    assert raw is not lm and raw.engine is lm.engine
    assert raw.identity == lm.identity + ":raw"
    engines = [k for k in resources.keys() if k[0] == "vllm-engine"]  # noqa: SIM118
    assert len(engines) <= 2  # the LM's and (when loaded) the VLM's
    [templated] = lm.generate([ChatRequest.from_prompt("a red dress", max_tokens=4)])
    [plain] = raw.generate([ChatRequest.from_prompt("a red dress", max_tokens=4)])
    assert plain.prompt_tokens < templated.prompt_tokens  # LLM.generate on the raw text


def test_stop_sequences_end_the_answer_where_the_model_writes_them(lm):
    [free] = lm.generate([ChatRequest.from_prompt(PROMPTS[1], max_tokens=24)])
    text = free.text
    assert len(text) > 6
    stop = text[3:6]  # a piece of the greedy answer: with it as a stop, the answer ends before
    [cut] = lm.generate([ChatRequest.from_prompt(PROMPTS[1], max_tokens=24, stop=(stop,))])
    assert cut.text.strip() == text[: text.find(stop)].strip()


def test_labels_are_interleaved_with_the_images(vlm):
    from cir.llm import ChatMessage
    from cir.llm.vllm_backend import _message

    message = ChatMessage("user", "", (RED, STRIPES), labels=("First image:", "Second image:"))
    [gen] = vlm.generate([ChatRequest((message,), n=1)])
    assert isinstance(gen.text, str)
    parts = _message(message)["content"]
    assert [p["type"] for p in parts] == ["text", "image_pil", "text", "image_pil"]
    assert parts[0]["text"] == "First image:" and parts[2]["text"] == "Second image:"
